"""On-policy rollouts: the student samples one answer per prompt with HF ``generate``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Rollout", "sample_rollout"]

VISION_TOKEN_ATTRS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


@dataclass
class Rollout:
    """prompt + answer token ids and masks, ready for the scoring forward passes.

    ``sequences`` [B, P + A]: left-padded prompt ids then the sampled answer (right-padded);
    ``attention_mask`` [B, P + A]; ``answer_mask`` [B, P + A], True on answer tokens
    (through the first EOS, none after); ``prompt_length`` P; ``answers`` decoded text.
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor
    prompt_length: int
    answers: list[str]

    @property
    def num_answer_tokens(self) -> int:
        return int(self.answer_mask.sum())


def answer_mask_from(answer_ids: torch.Tensor, eos_ids: set[int], pad_id: int | None) -> torch.Tensor:
    """True on answer tokens up to and including the first EOS of each row."""
    is_eos = torch.zeros_like(answer_ids, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= answer_ids == eos
    # tokens strictly after the first eos are padding
    after_eos = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0
    return ~after_eos


@torch.no_grad()
def sample_rollout(model: Any, processor: Any, inputs: dict[str, Any], *, temperature: float = 1.0,
                   top_p: float = 1.0, max_new_tokens: int = 64, do_sample: bool = True) -> Rollout:
    """Sample one answer per prompt from ``model`` (eval mode, KV cache) and return a Rollout.

    ``inputs``: the processor's left-padded batch (``input_ids``, ``attention_mask`` and the
    video tensors), already on the model's device.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    was_training = model.training
    model.eval()
    try:
        gen_kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "use_cache": True, "do_sample": do_sample}
        # Never sample vision placeholders: the scoring pass would read them as video slots.
        suppress = [getattr(model.config, name, None) for name in VISION_TOKEN_ATTRS]
        suppress = [i for i in suppress if isinstance(i, int)]
        if suppress:
            gen_kwargs["suppress_tokens"] = suppress
        if do_sample:
            gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
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
    answer_mask = answer_mask_from(answer_ids, eos_ids, tokenizer.pad_token_id)
    attention_mask = torch.cat([inputs["attention_mask"].to(torch.bool), answer_mask], dim=1)
    full_answer_mask = torch.cat([torch.zeros_like(inputs["attention_mask"], dtype=torch.bool), answer_mask], dim=1)
    answers = tokenizer.batch_decode(torch.where(answer_mask, answer_ids, tokenizer.pad_token_id),
                                     skip_special_tokens=True)
    return Rollout(sequences=sequences, attention_mask=attention_mask.long(), answer_mask=full_answer_mask,
                   prompt_length=prompt_length, answers=[a.strip() for a in answers])
