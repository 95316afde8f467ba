"""The sampled-token on-policy distillation loss (Video-OPD eq. 5-6, Tinker's OPD, verl's PG OPD)."""

from __future__ import annotations

import torch

from . import _validation as v

LOSS_REDUCTIONS = ("token_mean", "sequence_sum", "sum")


def sampled_reverse_kl_loss(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    old_logprobs: torch.Tensor | None = None,
    reduction: str = "token_mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Policy-gradient loss whose expected gradient is that of KL(student || teacher).

    For each sampled token y_t with student log-prob lp_s and teacher log-prob lp_t, the
    per-token advantage is ``A = -(lp_s - lp_t)`` (detached) and the loss is
    ``-A * ratio * lp_s``, where ``ratio = exp(lp_s - old_logprobs)`` is the (detached)
    importance weight of tokens sampled by an older policy, 1 when old_logprobs is None.
    Its gradient is ``-A * ratio * grad lp_s``: the REINFORCE estimator of the reverse KL.

    Args:
        student_logprobs: [B, T] (any shape), fp32, with grad (from token_logprobs).
        teacher_logprobs: same shape; treated as constant.
        mask: bool, same shape; True on completion tokens. False tokens contribute exactly 0.
        old_logprobs: optional, same shape: log-probs of the policy that sampled the tokens.
        reduction: "token_mean" (mean over selected tokens; 0 when none), "sequence_sum"
            (sum over each sequence's completion tokens, mean over sequences, the paper's;
            the last dim is the sequence), "sum".

    Returns:
        (loss, metrics) with detached 0-dim tensors in metrics (no host sync):
        "reverse_kl" (mean of lp_s - lp_t over selected tokens, the sampled reverse-KL
        estimate), "tokens" (selected token count), and "importance_ratio" (mean) when
        old_logprobs is given.
    """
    v.check_tensor("student_logprobs", student_logprobs)
    v.check_tensor("teacher_logprobs", teacher_logprobs)
    if old_logprobs is not None:
        v.check_tensor("old_logprobs", old_logprobs)
    for name, t in (("student_logprobs", student_logprobs), ("teacher_logprobs", teacher_logprobs),
                    ("old_logprobs", old_logprobs)):
        if t is None:
            continue
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got dtype {t.dtype}")
        if t.shape != student_logprobs.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected the shape of student_logprobs, "
                             f"{tuple(student_logprobs.shape)}")
    v.check_tensor("mask", mask)
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if mask.shape != student_logprobs.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected the shape of student_logprobs, "
                         f"{tuple(student_logprobs.shape)}")
    v.check_choice("reduction", reduction, LOSS_REDUCTIONS)
    if reduction == "sequence_sum" and student_logprobs.dim() < 1:
        raise ValueError("reduction='sequence_sum' needs a sequence dim (the last one)")

    # Masked positions may hold -inf or NaN (padding): select them away before any arithmetic,
    # so that they contribute exactly 0 to the loss and to the gradient.
    def selected(t):
        return torch.where(mask, t, torch.zeros_like(t))

    student = selected(student_logprobs)
    log_ratio = (student - selected(teacher_logprobs)).detach()
    advantage = -log_ratio
    per_token = -advantage * student
    metrics = {}
    if old_logprobs is not None:
        ratio = selected(torch.exp(student.detach() - selected(old_logprobs)))
        per_token = per_token * ratio

    tokens = mask.sum()
    denom = tokens.clamp_min(1).to(per_token.dtype)
    if reduction == "token_mean":
        loss = per_token.sum() / denom
    elif reduction == "sum":
        loss = per_token.sum()
    else:
        loss = per_token.sum(dim=-1).mean() if per_token.numel() else per_token.sum()
    metrics["reverse_kl"] = log_ratio.sum() / denom
    metrics["tokens"] = tokens
    if old_logprobs is not None:
        metrics["importance_ratio"] = ratio.sum() / denom
    return loss, {k: t.detach() for k, t in metrics.items()}
