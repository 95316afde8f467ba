"""OPD objectives on a rollout, from base-model hidden states (no [tokens, vocab] logits).

Position t's hidden state predicts token t + 1; only answer tokens count. Only the answer
slice of the hidden states (positions P-1 .. L-2) enters the loss kernels.
"""
from __future__ import annotations

from typing import Any

import torch

from opd_kernels import fused_reverse_kl, sampled_reverse_kl_loss, token_logprobs
from videoopd.models import base_hidden_states, lm_head_weight
from videoopd.rollout import Rollout

__all__ = ["OBJECTIVES", "answer_hidden", "opd_loss", "scoring_inputs"]

OBJECTIVES = ("sampled", "full")
VISION_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts", "pixel_values", "image_grid_thw")


def scoring_inputs(inputs: dict[str, Any], rollout: Rollout, device: torch.device | str) -> dict[str, Any]:
    """Inputs of the scoring forward pass: prompt + answer ids, the vision tensors, on ``device``."""
    out = {"input_ids": rollout.sequences.to(device), "attention_mask": rollout.attention_mask.to(device)}
    for key in VISION_KEYS:
        if key in inputs and inputs[key] is not None:
            out[key] = inputs[key].to(device)
    if inputs.get("mm_token_type_ids") is not None:  # answer tokens are text (type 0)
        types = inputs["mm_token_type_ids"]
        pad = types.new_zeros(types.shape[0], rollout.sequences.shape[1] - types.shape[1])
        out["mm_token_type_ids"] = torch.cat([types, pad], dim=1).to(device)
    return out


def answer_hidden(model: Any, inputs: dict[str, Any], rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden [B, A, D] at positions P-1..L-2, target tokens [B, A], mask [B, A])."""
    hidden = base_hidden_states(model, **inputs)
    p = rollout.prompt_length
    h = hidden[:, p - 1 : -1]
    tokens = inputs["input_ids"][:, p:]
    mask = rollout.answer_mask[:, p:].to(h.device)
    return h, tokens, mask


def opd_loss(student: Any, teacher: Any, inputs: dict[str, Any], rollout: Rollout, *,
             objective: str = "sampled", reduction: str = "sequence_sum", temperature: float = 1.0,
             teacher_device: torch.device | str | None = None,
             backend: str = "auto") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The OPD loss of ``student`` against frozen ``teacher`` on one rollout.

    objective "sampled": teacher log-probs of the sampled tokens (no grad), student log-probs
    with grad, then ``sampled_reverse_kl_loss(reduction=...)`` ("sequence_sum": summed over
    each completion, averaged over sequences, the paper's). "full": exact reverse KL over the
    vocabulary via ``fused_reverse_kl`` ("sequence_sum" is a sum over answer tokens divided by
    the number of sequences; "token_mean"/"sum" as named).
    Returns (loss, metrics) with detached 0-dim tensors: reverse_kl (per token), tokens.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    s_weight = lm_head_weight(student)
    vocab = s_weight.shape[0]
    s_device = s_weight.device
    t_weight = lm_head_weight(teacher)
    t_device = torch.device(teacher_device) if teacher_device is not None else t_weight.device

    s_inputs = scoring_inputs(inputs, rollout, s_device)
    with torch.no_grad():
        t_inputs = scoring_inputs(inputs, rollout, t_device)
        h_t, _, _ = answer_hidden(teacher, t_inputs, rollout)
        if objective == "sampled":
            t_tokens = t_inputs["input_ids"][:, rollout.prompt_length:]
            t_lp = token_logprobs(h_t, t_weight, t_tokens, temperature=temperature, backend=backend,
                                  vocab_size=vocab).to(s_device)
        del t_inputs
    h_s, tokens, mask = answer_hidden(student, s_inputs, rollout)
    if objective == "sampled":
        s_lp = token_logprobs(h_s, s_weight, tokens, temperature=temperature, backend=backend)
        return sampled_reverse_kl_loss(s_lp, t_lp, mask, reduction=reduction)
    h_t = h_t.to(device=s_device, dtype=h_s.dtype)
    t_w = t_weight.to(device=s_device, dtype=h_s.dtype)
    per_token_sum = fused_reverse_kl(h_s, s_weight, h_t, t_w, mask=mask, temperature=temperature,
                                     reduction="sum", backend=backend)
    count = mask.sum()
    rkl = per_token_sum / count.clamp_min(1).to(per_token_sum.dtype)
    if reduction == "token_mean":
        loss = rkl
    elif reduction == "sum":
        loss = per_token_sum
    elif reduction == "sequence_sum":
        loss = per_token_sum / max(1, mask.shape[0])
    else:
        raise ValueError(f"reduction must be token_mean, sequence_sum or sum, got {reduction!r}")
    return loss, {"reverse_kl": rkl.detach(), "tokens": count.detach()}
