"""Policy-gradient losses on sampled tokens' log-probs: the one clipped policy-gradient loss
(:func:`policy_gradient_loss`, GRPO / PPO style) and the sampled-token on-policy distillation
loss built on it (:func:`sampled_reverse_kl_loss`: Video-OPD eq. 5-6, Tinker's OPD, verl's PG OPD).
Both take log-probs from :func:`opd_kernels.token_logprobs` and reduce with the reduction
vocabulary of every op (:data:`opd_kernels.REDUCTIONS`)."""

from __future__ import annotations

import torch

from . import _validation as v


def policy_gradient_loss(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    old_logprobs: torch.Tensor | None = None,
    clip_eps: float | None = None,
    reference_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    reduction: v.Reduction = "mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-level clipped policy-gradient loss (PPO / GRPO) with an optional KL penalty.

    Per selected token with log-prob ``lp`` (with grad), advantage ``A`` (constant) and, when
    ``old_logprobs`` is given, importance ratio ``r = exp(lp - lp_old)``, the loss is
    ``-A * w * lp`` with the detached weight ``w = r``, or 0 where PPO's clipped surrogate
    ``min(r A, clip(r, 1 - eps, 1 + eps) A)`` is flat (``A > 0, r > 1 + eps`` or
    ``A < 0, r < 1 - eps``). Its gradient, ``-A * w * grad lp``, is exactly the gradient of the
    clipped surrogate; without ``old_logprobs`` it is REINFORCE's (``w = 1``). With
    ``reference_logprobs`` and ``beta > 0`` the loss adds ``beta * k3`` per token,
    ``k3 = exp(lp_ref - lp) - (lp_ref - lp) - 1`` (Schulman's unbiased, non-negative KL
    estimate, as GRPO uses), differentiated through ``lp``.

    Args:
        logprobs: [B, T] (any shape; the last dim is the sequence), floating, with grad.
        advantages: same shape, constant (per-token; broadcast a sequence's advantage over
            its tokens).
        mask: bool, same shape; True on completion tokens. False tokens contribute exactly 0,
            whatever the other tensors hold there (NaN / -inf included).
        old_logprobs: optional, same shape: log-probs of the policy that sampled the tokens.
        clip_eps: the PPO clip range (needs ``old_logprobs``); None: no clipping.
        reference_logprobs: optional, same shape: the reference policy's log-probs.
        beta: KL penalty coefficient (>= 0; needs ``reference_logprobs`` when > 0).
        reduction: one of :data:`opd_kernels.REDUCTIONS`: "mean" (over selected tokens; 0 when
            none), "sum", "sequence_sum" (sum over each sequence's selected tokens, mean over
            sequences), "none" (the per-token loss, the shape of logprobs, 0 where not selected).
            "token_mean", the old name of "mean", still works with a DeprecationWarning.

    Returns:
        (loss, metrics) with detached 0-dim tensors in metrics (no host sync): "tokens"
        (selected count), "advantage" (mean over selected tokens), "importance_ratio" and
        "clipped_fraction" (with ``old_logprobs``), "reference_kl" (mean k3, with
        ``reference_logprobs``).
    """
    v.check_like(
        "logprobs",
        logprobs,
        mask,
        advantages=advantages,
        old_logprobs=old_logprobs,
        reference_logprobs=reference_logprobs,
    )
    reduction = v.check_reduction(reduction)
    if reduction == "sequence_sum" and logprobs.dim() < 1:
        raise ValueError("reduction='sequence_sum' needs a sequence dim (the last one)")
    if v.check_clip_eps(clip_eps) is not None and old_logprobs is None:
        raise ValueError("clip_eps needs old_logprobs (the ratio it clips)")
    v.check_beta(beta)
    if beta > 0 and reference_logprobs is None:
        raise ValueError("beta > 0 needs reference_logprobs")

    # Masked positions may hold -inf or NaN (padding): select them away before any arithmetic,
    # so that they contribute exactly 0 to the loss and to the gradient.
    def selected(t: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, t, torch.zeros_like(t))

    lp = selected(logprobs)
    advantage = selected(advantages).detach().to(lp.dtype)
    weight = torch.ones_like(lp)
    metrics: dict[str, torch.Tensor] = {}
    tokens = mask.sum()
    denom = tokens.clamp_min(1).to(lp.dtype)
    if old_logprobs is not None:
        ratio = selected(torch.exp(lp.detach() - selected(old_logprobs).to(lp.dtype)))
        weight = ratio
        metrics["importance_ratio"] = ratio.sum() / denom
        if clip_eps is not None:
            flat = ((advantage > 0) & (ratio > 1 + clip_eps)) | ((advantage < 0) & (ratio < 1 - clip_eps))
            flat = flat & mask
            weight = torch.where(flat, torch.zeros_like(ratio), ratio)
            metrics["clipped_fraction"] = flat.sum().to(lp.dtype) / denom
    per_token = -advantage * weight * lp
    if reference_logprobs is not None:
        delta = selected(reference_logprobs).to(lp.dtype) - lp
        k3 = selected(torch.exp(delta) - delta - 1)
        metrics["reference_kl"] = k3.detach().sum() / denom
        if beta > 0:
            per_token = per_token + beta * k3

    if reduction == "mean":
        loss = per_token.sum() / denom
    elif reduction == "sum":
        loss = per_token.sum()
    elif reduction == "none":
        loss = per_token
    else:
        loss = per_token.sum(dim=-1).mean() if per_token.numel() else per_token.sum()
    metrics["tokens"] = tokens
    metrics["advantage"] = advantage.sum() / denom
    return loss, {k: t.detach() for k, t in metrics.items()}


def sampled_reverse_kl_loss(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    old_logprobs: torch.Tensor | None = None,
    baseline: torch.Tensor | None = None,
    advantage_clip: float | None = None,
    reduction: v.Reduction = "mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Policy-gradient loss whose expected gradient is that of KL(student || teacher).

    :func:`policy_gradient_loss` with the per-token advantage ``A = -(lp_s - lp_t)``
    (detached): the loss is ``-A * ratio * lp_s``, where ``ratio = exp(lp_s - old_logprobs)``
    is the (detached) importance weight of tokens sampled by an older policy, 1 when
    old_logprobs is None. Its gradient is ``-A * ratio * grad lp_s``: the REINFORCE estimator
    of the reverse KL. Two variance reductions, both off by default: ``baseline`` is subtracted
    from A (a constant per sequence, e.g. the mean of A over the other answers to the same
    prompt, leaves the expected gradient as it is), then ``advantage_clip`` clamps A to
    [-c, c] (biased: it bounds the push of rare tokens the teacher finds very unlikely).

    Args:
        student_logprobs: [B, T] (any shape), fp32, with grad (from token_logprobs).
        teacher_logprobs: same shape; treated as constant.
        mask: bool, same shape; True on completion tokens. False tokens contribute exactly 0.
        old_logprobs: optional, same shape: log-probs of the policy that sampled the tokens.
        baseline: optional floating tensor broadcastable to that shape ([B, 1]: one value per
            sequence), subtracted from the advantage; treated as constant.
        advantage_clip: optional c > 0: the advantage (after the baseline) is clamped to [-c, c].
        reduction: one of :data:`opd_kernels.REDUCTIONS`: "mean" (over selected tokens; 0 when
            none), "sum", "sequence_sum" (sum over each sequence's completion tokens, mean over
            sequences, the paper's; the last dim is the sequence), "none" (per-token losses).
            "token_mean", the old name of "mean", still works with a DeprecationWarning.

    Returns:
        (loss, metrics) with detached 0-dim tensors in metrics (no host sync):
        "reverse_kl" (mean of lp_s - lp_t over selected tokens, the sampled reverse-KL
        estimate, before baseline and clip), "tokens" (selected token count),
        "importance_ratio" (mean) when old_logprobs is given, and "advantage_clipped_fraction"
        (the share of selected tokens whose advantage was clamped) with advantage_clip.
    """
    v.check_like(
        "student_logprobs", student_logprobs, mask, teacher_logprobs=teacher_logprobs, old_logprobs=old_logprobs
    )
    reduction = v.check_reduction(reduction)  # here, so a deprecated name warns at the caller's line
    v.check_baseline(baseline, student_logprobs.shape, "student_logprobs")
    v.check_advantage_clip(advantage_clip)
    log_ratio = torch.where(mask, student_logprobs - teacher_logprobs, torch.zeros_like(student_logprobs)).detach()
    advantage = -log_ratio
    if baseline is not None:
        advantage = advantage - baseline.detach().to(advantage.dtype)
    clipped = None
    if advantage_clip is not None:
        clipped = (advantage.abs() > advantage_clip) & mask
        advantage = advantage.clamp(-advantage_clip, advantage_clip)
    loss, pg = policy_gradient_loss(student_logprobs, advantage, mask, old_logprobs=old_logprobs, reduction=reduction)
    denom = pg["tokens"].clamp_min(1).to(log_ratio.dtype)
    metrics = {"reverse_kl": log_ratio.sum() / denom, "tokens": pg["tokens"]}
    if old_logprobs is not None:
        metrics["importance_ratio"] = pg["importance_ratio"]
    if clipped is not None:
        metrics["advantage_clipped_fraction"] = clipped.sum().to(log_ratio.dtype) / denom
    return loss, metrics
