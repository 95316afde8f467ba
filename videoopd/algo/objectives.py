"""Per-batch objectives of the one training loop: on-policy distillation (sampled, full) and SFT.

An objective turns a collated batch into a :class:`MicroBatch` in two no-grad phases,
``rollout`` (the student generates: OPD; nothing: SFT) and ``score`` (the frozen teacher
scores the rollout: OPD; nothing: SFT), and says how the student's hidden states become a
loss (``MicroBatch.loss_fn``, run by the loop inside the student's forward, where the full
LM-head weight exists under every engine). Losses are *sums*, with ``units`` saying what
they are normalised by (sequences or tokens): the loop divides by the units of the whole
optimizer step over every process, so that 2 processes x batch b step exactly like
1 process x batch 2b. Everything comes from base-model hidden states; no [tokens, vocab]
logits are built. Position t's hidden state predicts token t + 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from opd_kernels import fused_policy_gradient_loss, fused_reverse_kl, token_logprobs
from videoopd.qwen.generation import Rollout, generate, group_rollout_seeds, rollout_seed
from videoopd.grounding.metrics import parse_span
from videoopd.qwen.models import (
    encode_vision,
    is_fsdp_sharded,
    lm_head_weight,
    policy_head_forward,
    with_encoded_vision,
)

__all__: list[str] = []  # nothing here is promised: docs/api.md

OBJECTIVES = ("sampled", "full")
REDUCTIONS = ("sequence_sum", "token_mean", "sum")
VISION_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts", "pixel_values", "image_grid_thw")

LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class GenerationContext:
    """What an objective's no-grad phases may use: the student as a full-parameter (or FSDP2
    root) model for ``generate``, this process's device, the optimizer step (rollout seeds),
    and whether generation must keep every process stepping (FSDP2 over several processes)."""

    model: Any
    device: torch.device
    step: int
    synced_gpus: bool = False


@dataclass
class MicroBatch:
    """One micro-batch ready for the student's forward + backward.

    ``student_inputs``: keyword inputs of the base model, on the device. ``loss_fn(hidden
    [B, L, D], head_weight [V, D])`` -> (loss summed over this micro-batch's units, metric
    sums). ``units``: 0-dim tensor, what the step's loss is divided by (summed over the step's
    micro-batches and processes); None: the loss is a plain sum. ``sums``: metric sums known
    before the student's forward (token counts, rewards). ``records``: the prompts' records.
    """

    student_inputs: dict[str, Any]
    loss_fn: LossFn
    units: torch.Tensor | None
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    records: list[Any] = field(default_factory=list)


class Objective(Protocol):
    """What the loop needs of an objective (see the module docstring)."""

    name: str

    def rollout(self, ctx: GenerationContext, batch: dict[str, Any]) -> Any: ...

    def score(self, ctx: GenerationContext, rolled: Any) -> MicroBatch: ...

    def summarize(self, sums: dict[str, float]) -> dict[str, float]: ...


def to_device(inputs: Any, device: torch.device | str) -> dict[str, Any]:
    """A processor batch (BatchFeature or dict) as a dict with its tensors on ``device``."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in dict(inputs).items()}


def scoring_inputs(inputs: dict[str, Any], rollout: Rollout, device: torch.device | str, *,
                   sampler: bool = False) -> dict[str, Any]:
    """Inputs of the scoring forward pass: prompt + answer ids, the vision tensors, on ``device``.
    ``sampler``: for the model that sampled the rollout (the student's training forward), whose
    vision tower output of the rollout (``rollout.student_vision``) stands in for the pixels."""
    out = {"input_ids": rollout.sequences.to(device), "attention_mask": rollout.attention_mask.to(device)}
    for key in VISION_KEYS:
        if key in inputs and inputs[key] is not None:
            out[key] = inputs[key].to(device)
    if inputs.get("mm_token_type_ids") is not None:  # answer tokens are text (type 0)
        types = inputs["mm_token_type_ids"]
        pad = types.new_zeros(types.shape[0], rollout.sequences.shape[1] - types.shape[1])
        out["mm_token_type_ids"] = torch.cat([types, pad], dim=1).to(device)
    return with_encoded_vision(out, rollout.student_vision) if sampler else out


def answer_slice(hidden: torch.Tensor, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden [B, A, D] at positions P-1..L-2, target tokens [B, A], mask [B, A]) of a rollout."""
    p = rollout.prompt_length
    return (hidden[:, p - 1:-1], rollout.sequences[:, p:].to(hidden.device),
            rollout.answer_mask[:, p:].to(hidden.device))


def score_rollout(teacher: Any, teacher_wrapper: Any, inputs: dict[str, Any], rollout: Rollout, *, objective: str,
                  temperature: float, vocab_size: int, device: torch.device | str,
                  backend: str = "auto") -> dict[str, torch.Tensor]:
    """The frozen teacher's view of a rollout, on ``device`` (the student's).

    "sampled": ``{"teacher_logprobs": [B, A]}``, the teacher's log-probs of the sampled
    tokens over the student's first ``vocab_size`` rows. "full": ``{"teacher_hidden": [B, A,
    D_t], "teacher_head": [V_t, D_t]}`` for the exact reverse KL (a copy of the head when the
    teacher is sharded: the gathered weight is freed after the teacher's forward).
    """
    t_device = lm_head_weight(teacher).device
    sharded = is_fsdp_sharded(teacher)

    def head_fn(hidden: torch.Tensor, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        h, tokens, _ = answer_slice(hidden, rollout)
        if objective == "sampled":
            lp = token_logprobs(h, weight, tokens, temperature=temperature, backend=backend, vocab_size=vocab_size)
            return {"teacher_logprobs": lp}
        return {"teacher_hidden": h, "teacher_head": weight.detach().clone() if sharded else weight.detach()}

    with torch.no_grad():
        out = policy_head_forward(teacher_wrapper, teacher, scoring_inputs(inputs, rollout, t_device), head_fn)
    return {k: v.to(device) for k, v in out.items()}


def sample_rollout(ctx: GenerationContext, batch: dict[str, Any], processor: Any, *, seed: int, num_generations: int,
                   temperature: float, top_p: float, max_new_tokens: int,
                   reuse_vision: bool = True) -> tuple[dict[str, Any], Rollout, list[Any]]:
    """(inputs on the device, the rollout, the records) of a collated batch, one answer per row.
    With ``num_generations`` > 1 the rows are groups of copies of a prompt
    (:class:`videoopd.algo.grpo.GroupedCollator`) and copy g samples with its own seed
    (``group_rollout_seeds``); else each row with its record's seed. ``reuse_vision``: the
    student's frozen vision tower encodes the video once, for the rollout and for the training
    forward (``rollout.student_vision``; :func:`videoopd.qwen.models.encode_vision` says when it
    cannot); False re-encodes it in the training forward (measurements)."""
    records = batch["records"]
    if num_generations > 1:
        if len(records) % num_generations:
            raise ValueError(f"with num_generations={num_generations} a batch holds groups of copies of a prompt "
                             f"(GroupedCollator), got {len(records)} rows")
        seeds = group_rollout_seeds(seed, ctx.step, records)
    else:
        seeds = [rollout_seed(seed, ctx.step, record.id) for record in records]
    inputs = to_device(batch["inputs"], ctx.device)
    encoded = encode_vision(ctx.model, inputs) if reuse_vision else None
    rollout = generate(ctx.model, processor, with_encoded_vision(inputs, encoded), seeds=seeds,
                       temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                       synced_gpus=ctx.synced_gpus)
    rollout.student_vision = encoded
    return inputs, rollout, records


def group_mean_baseline(values: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B, 1]: for each row of ``values`` [B, T], the mean of ``values`` over the masked tokens
    of its group (``group_size`` adjacent rows: the answers to one prompt); 0 for a group
    without tokens. Masked-out positions are never read (they may hold NaN)."""
    if values.dim() != 2 or values.shape[0] % group_size:
        raise ValueError(f"values must be [groups * {group_size}, T], got shape {tuple(values.shape)}")
    picked = torch.where(mask, values, torch.zeros_like(values)).reshape(-1, group_size * values.shape[1])
    counts = mask.reshape(-1, group_size * values.shape[1]).sum(dim=1, keepdim=True).clamp_min(1)
    means = picked.sum(dim=1, keepdim=True) / counts
    return means.repeat_interleave(group_size, dim=0)


class SampledObjective:
    """What the objectives that sample answers share (:class:`DistillationObjective`,
    :class:`videoopd.algo.grpo.GRPOObjective`): the sampling settings, ``rollout`` (the student
    answers each row of a batch, :func:`sample_rollout`) and the step's units of a rollout per
    ``reduction``. ``vocab_size``: the student's head rows a scoring model's log-probs are
    taken over (None: the student's head's)."""

    def __init__(self, processor: Any, *, reduction: str, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 64, seed: int = 0, vocab_size: int | None = None, backend: str = "auto",
                 num_generations: int = 1, reuse_vision: bool = True):
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {num_generations!r}")
        self.processor, self.reduction, self.vocab_size, self.backend = processor, reduction, vocab_size, backend
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.seed, self.num_generations, self.reuse_vision = seed, num_generations, reuse_vision

    def rollout(self, ctx: GenerationContext, batch: dict[str, Any]) -> tuple[dict[str, Any], Rollout, list[Any]]:
        return sample_rollout(ctx, batch, self.processor, seed=self.seed, num_generations=self.num_generations,
                              temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                              reuse_vision=self.reuse_vision)

    def vocab(self, ctx: GenerationContext) -> int:
        """The vocabulary a scoring model's log-probs are taken over."""
        return self.vocab_size if self.vocab_size is not None else lm_head_weight(ctx.model).shape[0]

    def units(self, ctx: GenerationContext, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(answer tokens, sequences, the units per ``reduction``) of a rollout, 0-dim float64
        tensors on the device (units None for "sum")."""
        answer_mask = rollout.answer_mask[:, rollout.prompt_length:].to(ctx.device)
        tokens = answer_mask.sum().double()
        sequences = torch.tensor(float(answer_mask.shape[0]), dtype=torch.float64, device=ctx.device)
        return tokens, sequences, {"sequence_sum": sequences, "token_mean": tokens, "sum": None}[self.reduction]


class DistillationObjective(SampledObjective):
    """On-policy distillation: the student samples ``num_generations`` answers per prompt (1:
    the paper's), the frozen teacher scores them, the student minimises the reverse KL on its
    own tokens.

    ``objective`` "sampled" (the paper's): ``sampled_reverse_kl_loss`` on the sampled tokens'
    log-probs (computed as ``fused_policy_gradient_loss``, one pass from the hidden states),
    optionally with two variance reductions: with ``num_generations`` G > 1 (batches from a
    :class:`videoopd.algo.grpo.GroupedCollator`) each answer's per-token advantage
    ``lp_t - lp_s`` is taken relative to its prompt's group (minus the group's mean over its
    answer tokens), and ``advantage_clip`` c clamps it to [-c, c]. "full": the exact reverse KL
    over the vocabulary (``fused_reverse_kl``; G > 1 only adds rollouts). ``reduction``
    "sequence_sum" (the paper's: summed over each answer, averaged over the step's sequences),
    "token_mean" (averaged over the step's answer tokens) or "sum".
    """

    name = "opd"

    def __init__(self, teacher: Any, processor: Any, *, teacher_wrapper: Any = None, objective: str = "sampled",
                 reduction: str = "sequence_sum", temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 64, seed: int = 0, vocab_size: int | None = None, backend: str = "auto",
                 num_generations: int = 1, advantage_clip: float | None = None, reuse_vision: bool = True):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        super().__init__(processor, reduction=reduction, temperature=temperature, top_p=top_p,
                         max_new_tokens=max_new_tokens, seed=seed, vocab_size=vocab_size, backend=backend,
                         num_generations=num_generations, reuse_vision=reuse_vision)
        self.teacher = teacher
        self.teacher_wrapper = teacher_wrapper if teacher_wrapper is not None else teacher
        self.objective = objective
        self.advantage_clip = advantage_clip

    def score(self, ctx: GenerationContext, rolled: tuple[dict[str, Any], Rollout, list[Any]]) -> MicroBatch:
        inputs, rollout, records = rolled
        teacher_view = score_rollout(self.teacher, self.teacher_wrapper, inputs, rollout, objective=self.objective,
                                     temperature=self.temperature, vocab_size=self.vocab(ctx), device=ctx.device,
                                     backend=self.backend)
        tokens, sequences, units = self.units(ctx, rollout)
        parsed = sum(parse_span(a) is not None for a in rollout.answers)
        return MicroBatch(
            student_inputs=scoring_inputs(inputs, rollout, ctx.device, sampler=True),
            loss_fn=lambda hidden, weight: self.loss(hidden, weight, rollout, teacher_view),
            units=units,
            sums={"answer_tokens": tokens, "sequences": sequences,
                  "context_tokens": rollout.attention_mask.sum().double().to(ctx.device),
                  "parsed_answers": torch.tensor(float(parsed), dtype=torch.float64, device=ctx.device)},
            records=list(records),
        )

    def loss(self, hidden: torch.Tensor, weight: torch.Tensor, rollout: Rollout,
             teacher_view: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss summed over this micro-batch's answer tokens, {"reverse_kl_sum": ...})."""
        h, tokens, mask = answer_slice(hidden, rollout)
        if self.objective == "sampled":
            # the sampler's own log-probs as the old policy's: the importance ratio corrects for
            # what the sampler did differently from the scored softmax (nucleus, suppressed tokens)
            old = rollout.sampler_logprobs.to(h.device) if rollout.sampler_logprobs is not None else None
            teacher_lp = teacher_view["teacher_logprobs"]
            baseline = None
            if self.num_generations > 1:
                # the group's mean advantage needs every answer's log-probs before any coefficient
                # of the fused pass: one forward-only pass (1 matmul a chunk; the fused one adds 3)
                with torch.no_grad():
                    lp = token_logprobs(h, weight, tokens, temperature=self.temperature, backend=self.backend)
                baseline = group_mean_baseline(teacher_lp - lp, mask, self.num_generations)
            # sampled_reverse_kl_loss on token_logprobs, in one pass: the ratio is not clipped
            loss, m = fused_policy_gradient_loss(h, weight, tokens, mask, teacher_logprobs=teacher_lp,
                                                 old_logprobs=old, baseline=baseline, clip_eps=None,
                                                 advantage_clip=self.advantage_clip, temperature=self.temperature,
                                                 reduction="sum", backend=self.backend)
            sums = {"reverse_kl_sum": (m["reverse_kl"] * m["tokens"]).double()}
            for name in ("importance_ratio", "advantage_clipped_fraction"):
                if name in m:
                    sums[f"{name}_sum"] = (m[name] * m["tokens"]).double()
            return loss, sums
        h_t = teacher_view["teacher_hidden"].to(dtype=h.dtype)
        w_t = teacher_view["teacher_head"].to(dtype=h.dtype)
        loss = fused_reverse_kl(h, weight, h_t, w_t, mask=mask, temperature=self.temperature, reduction="sum",
                                backend=self.backend)
        return loss, {"reverse_kl_sum": loss.detach().double()}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        tokens = sums.get("answer_tokens", 0.0)
        sequences = max(1.0, sums.get("sequences", 0.0))
        out = {"reverse_kl": sums.get("reverse_kl_sum", 0.0) / max(1.0, tokens), "answer_tokens": int(tokens),
               "mean_answer_len": tokens / sequences, "parsed_rate": sums.get("parsed_answers", 0.0) / sequences,
               "rollouts": int(sums.get("sequences", 0.0))}
        for name in ("importance_ratio", "advantage_clipped_fraction"):
            if f"{name}_sum" in sums:
                out[name] = sums[f"{name}_sum"] / max(1.0, tokens)
        return out


class SupervisedObjective:
    """SFT: the mean negative log-likelihood of the answer tokens (and the closing end-of-turn
    token) over the step's answer tokens, from base-model hidden states through
    ``token_logprobs``. Batches come from :class:`videoopd.data.datasets.SFTCollator`."""

    name = "sft"

    def __init__(self, backend: str = "auto"):
        self.backend = backend

    def rollout(self, ctx: GenerationContext, batch: dict[str, Any]) -> dict[str, Any]:
        return batch

    def score(self, ctx: GenerationContext, batch: dict[str, Any]) -> MicroBatch:
        inputs = to_device(batch["inputs"], ctx.device)
        answer_mask = batch["answer_mask"].to(ctx.device)
        tokens = answer_mask[:, 1:].sum().double()
        return MicroBatch(
            student_inputs=dict(inputs),
            loss_fn=lambda hidden, weight: self.loss(hidden, weight, inputs["input_ids"], answer_mask),
            units=tokens,
            sums={"answer_tokens": tokens, "sequences": torch.tensor(float(answer_mask.shape[0]), device=ctx.device,
                                                                     dtype=torch.float64),
                  "context_tokens": inputs["attention_mask"].sum().double()},
            records=list(batch["records"]),
        )

    def loss(self, hidden: torch.Tensor, weight: torch.Tensor, input_ids: torch.Tensor,
             answer_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(NLL summed over the answer tokens, {}). Only the hidden states that predict answer
        tokens enter ``token_logprobs``."""
        predicts = answer_mask[:, 1:]
        targets = input_ids[:, 1:][predicts]
        logprobs = token_logprobs(hidden[:, :-1][predicts], weight, targets, backend=self.backend)
        return -logprobs.sum(), {}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        return {"answer_tokens": int(sums.get("answer_tokens", 0.0))}
