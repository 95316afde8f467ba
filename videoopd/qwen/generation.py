"""Generation: on-policy rollouts (sampled) and evaluation answers (greedy), one wrapper of HF
``generate`` for both; the training algorithms (:mod:`videoopd.algo`) and the evaluation
(:mod:`videoopd.evaluation`) sit above it.

Sampling is the Gumbel-max trick with one random generator per prompt:
``argmax(z / T + g)`` with ``g ~ Gumbel(0, 1)`` draws from ``softmax(z / T)`` exactly (after
top-p, when set). Each prompt's generator is seeded from (run seed, step, record id)
(:func:`rollout_seed`), so a prompt's sample depends on neither the other prompts of its
batch nor the number of processes: a run on 2 processes with batch b samples what a run on
1 process with batch 2b does, and a resumed run samples what the uninterrupted one did.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from videoopd.qwen.collators import first_column
from videoopd.qwen.models import call_as_forward, full_weights_gathered, is_fsdp_sharded, tokenizer_of

__all__ = ["Rollout", "generate"]

VISION_TOKEN_ATTRS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


@dataclass
class Rollout:
    """Prompt + answer token ids and masks, ready for the scoring forward passes.

    ``sequences`` [B, P + A]: left-padded prompt ids then the generated answer (right-padded);
    ``attention_mask`` [B, P + A]; ``answer_mask`` [B, P + A], True on answer tokens
    (through the first EOS, none after); ``prompt_length`` P; ``answers`` decoded text.
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor
    prompt_length: int
    answers: list[str]
    # [B, A]: log-probs of the sampled answer tokens under the distribution they were drawn from
    # (tempered, nucleus-filtered); None for greedy decoding. Meaningful where answer_mask is.
    sampler_logprobs: torch.Tensor | None = None
    # The sampler's frozen vision tower output for this batch (``mm_encoder_outputs``,
    # :func:`videoopd.qwen.models.encode_vision`), for its training forward to reuse; None: that
    # forward encodes the pixels itself.
    student_vision: dict[str, Any] | None = None

    @property
    def num_answer_tokens(self) -> int:
        return int(self.answer_mask.sum())


def split_rollout(rollout: Rollout, prompt_lengths: Sequence[int], rows: Sequence[int]) -> list[Rollout]:
    """The rollouts of the batches whose rows one ``generate`` call concatenated
    (:func:`videoopd.qwen.collators.concat_model_inputs`): batch k has ``rows[k]`` rows and was
    left-padded to ``prompt_lengths[k]`` on its own. Each comes back as if generated alone: the
    extra left padding of the joint prompt and the answer columns after its longest answer
    (padding for its rows) are cut. ``student_vision`` is left unset (it is per batch)."""
    if sum(rows) != rollout.sequences.shape[0] or len(rows) != len(prompt_lengths):
        raise ValueError(f"rows {list(rows)} do not split a rollout of {rollout.sequences.shape[0]} rows")
    p = rollout.prompt_length
    answer_mask = rollout.answer_mask[:, p:]
    longest = answer_mask.sum(dim=1).tolist()  # the rollout phase syncs with the host anyway (decoding)
    out, start = [], 0
    for count, prompt_length in zip(rows, prompt_lengths):
        stop = start + count
        cut = p - prompt_length
        if cut < 0 or bool(rollout.attention_mask[start:stop, :cut].any()):
            raise ValueError(
                f"rows {start}:{stop} hold prompt tokens before column {cut}: not a batch of "
                f"prompt length {prompt_length}"
            )
        width = int(max(longest[start:stop], default=0))
        sampler = rollout.sampler_logprobs
        out.append(
            Rollout(
                sequences=rollout.sequences[start:stop, cut : p + width],
                attention_mask=rollout.attention_mask[start:stop, cut : p + width],
                answer_mask=rollout.answer_mask[start:stop, cut : p + width],
                prompt_length=prompt_length,
                answers=rollout.answers[start:stop],
                sampler_logprobs=sampler[start:stop, :width] if sampler is not None else None,
            )
        )
        start = stop
    return out


def select_rollout_rows(rollout: Rollout, rows: Sequence[int]) -> Rollout:
    """The rows ``rows`` of a rollout without the prompt's left padding columns all of them
    share (as if their prompts had been padded alone), at the answer columns of the rollout
    (``student_vision`` left unset: it is per batch)."""
    index = torch.tensor(list(rows), dtype=torch.long, device=rollout.sequences.device)
    attention_mask = rollout.attention_mask[index]
    cut = first_column(attention_mask[:, : rollout.prompt_length])
    sampler = rollout.sampler_logprobs
    return Rollout(
        sequences=rollout.sequences[index, cut:],
        attention_mask=attention_mask[:, cut:],
        answer_mask=rollout.answer_mask[index, cut:],
        prompt_length=rollout.prompt_length - cut,
        answers=[rollout.answers[i] for i in rows] if rollout.answers else [],
        sampler_logprobs=sampler[index.to(sampler.device)] if sampler is not None else None,
    )


def rollout_seed(seed: int, step: int, record_id: str) -> int:
    """A stable 63-bit seed for one prompt's sample at one step (same on every process and run)."""
    digest = hashlib.blake2b(f"{seed}/{step}/{record_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def group_rollout_seeds(seed: int, step: int, records: list[Any]) -> list[int]:
    """Seeds of a batch that repeats prompts (:class:`videoopd.algo.grpo.GroupedCollator`):
    the g-th copy of a prompt samples with the seed of ``"{record.id}#{g}"``."""
    seen: Counter[str] = Counter()
    seeds = []
    for record in records:
        seeds.append(rollout_seed(seed, step, f"{record.id}#{seen[record.id]}"))
        seen[record.id] += 1
    return seeds


class SeededSampler:
    """A ``transformers`` logits processor that turns greedy decoding into sampling at
    ``temperature`` (and ``top_p``) with one ``torch.Generator`` per row.

    Row i's noise at its k-th generated token is the k-th draw of generator i, whatever the
    other rows are. Scores: [B, V] float logits of the last position; returns
    ``z / T + Gumbel`` (-inf outside the nucleus and on suppressed tokens). It also records
    the log-prob of each drawn token under the distribution it was drawn from
    (:meth:`sampled_logprobs`), the "old" log-probs of a policy-gradient loss.
    """

    def __init__(
        self, seeds: Sequence[int], *, temperature: float = 1.0, top_p: float = 1.0, device: torch.device | str = "cpu"
    ):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        self.temperature = temperature
        self.top_p = top_p
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.previous: torch.Tensor | None = None  # [B, V] log-softmax of the last draw's distribution
        self.logprobs: list[torch.Tensor] = []  # [B] per drawn token, but the last

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"SeededSampler has {len(self.generators)} seeds for a batch of {scores.shape[0]} rows")
        if self.previous is not None and input_ids is not None:  # the token drawn last time is the last input id
            self.logprobs.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        z = scores.float() / self.temperature
        if self.top_p < 1:
            sorted_z, order = z.sort(dim=-1, descending=True)
            probs = sorted_z.softmax(dim=-1)
            # keep the smallest prefix whose mass reaches top_p (the top token always stays)
            drop_sorted = probs.cumsum(dim=-1) - probs >= self.top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            z = z.masked_fill(drop, float("-inf"))
        self.previous = torch.log_softmax(z, dim=-1)
        u = torch.stack([torch.rand(z.shape[-1], generator=g, device=z.device) for g in self.generators])
        tiny = torch.finfo(torch.float32).tiny
        return z - torch.log(-torch.log(u.clamp(min=tiny, max=1 - 1e-7)))

    def sampled_logprobs(self, answer_ids: torch.Tensor) -> torch.Tensor:
        """[B, A] log-probs of ``answer_ids`` (the generated tokens) under their sampling
        distributions (columns past the last draw: -inf; they are padding)."""
        drawn = list(self.logprobs)
        if self.previous is not None and len(drawn) < answer_ids.shape[1]:
            drawn.append(self.previous.gather(1, answer_ids[:, len(drawn) : len(drawn) + 1]).squeeze(1))
        out = torch.full(answer_ids.shape, float("-inf"), device=answer_ids.device)
        if drawn:
            out[:, : len(drawn)] = torch.stack(drawn, dim=1).to(out.device)
        return out


def answer_mask_from(answer_ids: torch.Tensor, eos_ids: set[int]) -> torch.Tensor:
    """True on answer tokens up to and including the first EOS of each row."""
    is_eos = torch.zeros_like(answer_ids, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= answer_ids == eos
    # tokens strictly after the first eos are padding
    after_eos = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0
    return ~after_eos


@torch.no_grad()
def generate(
    model: Any,
    processor: Any,
    inputs: dict[str, Any],
    *,
    seeds: Sequence[int] | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    synced_gpus: bool = False,
    gather_weights: bool = True,
) -> Rollout:
    """Generate one answer per prompt with HF ``generate`` (eval mode, KV cache).

    ``seeds`` (one per prompt) samples at ``temperature``/``top_p`` through
    :class:`SeededSampler`; ``seeds=None`` decodes greedily (evaluation).
    ``inputs``: the processor's left-padded batch (``input_ids``, ``attention_mask``, the
    video tensors), on the model's device. ``model``: the full-parameter model, or an FSDP2
    root, then with ``synced_gpus=True`` so that every process keeps stepping until all are
    done; ``gather_weights``: the FSDP2 root's units are gathered once for the whole call and
    kept (:func:`videoopd.qwen.models.full_weights_gathered`: the full model in memory), else
    each unit is gathered while it runs (memory stays sharded, communication per generated
    token). Vision placeholder tokens are never generated:
    the scoring pass would read them as video slots.
    """
    tokenizer = tokenizer_of(processor)
    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "use_cache": True,
        "do_sample": False,
        "pad_token_id": tokenizer.pad_token_id,
        "synced_gpus": synced_gpus,
        "temperature": None,
        "top_p": None,
        "top_k": None,
    }
    suppress = [getattr(model.config, name, None) for name in VISION_TOKEN_ATTRS]
    suppress = [i for i in suppress if isinstance(i, int)]
    if suppress:
        gen_kwargs["suppress_tokens"] = suppress
    if seeds is not None:
        if len(seeds) != inputs["input_ids"].shape[0]:
            raise ValueError(f"seeds must have one entry per prompt: {len(seeds)} for {inputs['input_ids'].shape[0]}")
        from transformers import LogitsProcessorList

        sampler = SeededSampler(seeds, temperature=temperature, top_p=top_p, device=inputs["input_ids"].device)
        gen_kwargs["logits_processor"] = LogitsProcessorList([sampler])
    was_training = model.training
    model.eval()
    try:
        if is_fsdp_sharded(model):
            # generate reads root-level weights (e.g. the vision patch embedding) outside the
            # root's forward: run it as the root's forward, so that FSDP2 gathers them (and
            # sets up its hooks from the root); every FSDP unit below gathers in its forward.
            with full_weights_gathered(model) if gather_weights else contextlib.nullcontext():
                out = call_as_forward(model, model, lambda: model.generate(**inputs, **gen_kwargs))
        else:
            out = model.generate(**inputs, **gen_kwargs)
    finally:
        if was_training:
            model.train()
    sequences = out.sequences if hasattr(out, "sequences") else out
    prompt_length = inputs["input_ids"].shape[1]
    answer_ids = sequences[:, prompt_length:]
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    answer_mask = answer_mask_from(answer_ids, eos_ids)
    attention_mask = torch.cat([inputs["attention_mask"].to(torch.bool), answer_mask], dim=1)
    full_answer_mask = torch.cat([torch.zeros_like(inputs["attention_mask"], dtype=torch.bool), answer_mask], dim=1)
    answers = tokenizer.batch_decode(
        torch.where(answer_mask, answer_ids, tokenizer.pad_token_id), skip_special_tokens=True
    )
    return Rollout(
        sequences=sequences,
        attention_mask=attention_mask.long(),
        answer_mask=full_answer_mask,
        prompt_length=prompt_length,
        answers=[a.strip() for a in answers],
        sampler_logprobs=sampler.sampled_logprobs(answer_ids) if seeds is not None else None,
    )
