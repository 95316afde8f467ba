"""fused_policy_gradient_loss: the sampled-token OPD loss and GRPO's in one pass from hidden states.

The loss of :func:`opd_kernels.policy_gradient_loss` / :func:`opd_kernels.sampled_reverse_kl_loss`
is terminal and its per-token coefficient c_i = dL/dlp_i is known as soon as lp_i is:

    A_i   = lp_t,i - lp_i - b_i (OPD, detached) or the given advantage; clamped with advantage_clip
    r_i   = exp(lp_i - lp_old,i) (detached), w_i = r_i, or 0 on PPO's flat side of the clip
    L     = (1 / n) sum_i [-A_i w_i lp_i + beta k3_i],   k3 = exp(lp_ref - lp) - (lp_ref - lp) - 1
    c_i   = (1 / n) [-A_i w_i + beta (1 - exp(lp_ref,i - lp_i))]
    dL/dz_i = c_i (onehot(y_i) - p_i) / tau

where n, the reduction's normaliser (1, the selected-token count, or the number of sequences),
is known before the pass (the token count as a tensor: no host sync). So one pass per token
chunk suffices: the chunk's logits give lse and lp, then c, then the logit gradient over the
same logits and the two gradient matmuls, the logits held for that chunk only
(``logprobs_torch.terminal_logprobs``). Against ``token_logprobs`` followed by the loss
(4 matmuls: the backward recomputes the logits) this is 3, the count of naive PyTorch which
keeps the [N, V] logits instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch

from . import _validation as v
from ._grads import keep_forward_grads, take_forward_grads
from ._matmul import accumulate_dtype
from ._params import PolicyGradientParams
from .logprobs import prepare_head, token_logprobs
from .logprobs_torch import TorchTerminalRows, terminal_logprobs


class TokenTerms(NamedTuple):
    """Per-token pieces of the loss (flat [N], 0 where not selected)."""

    loss: torch.Tensor  # differentiable through lp where lp is
    dloss_dlp: torch.Tensor  # constant
    advantage: torch.Tensor  # after baseline and clamp
    log_ratio: torch.Tensor | None  # lp - lp_t (OPD)
    ratio: torch.Tensor | None
    flat: torch.Tensor | None  # PPO's clip zeroed the token's weight
    advantage_clipped: torch.Tensor | None
    k3: torch.Tensor | None


@dataclass(frozen=True)
class PolicyGradientInputs:
    """What the loss needs besides the log-probs, flat [N] in the accumulation dtype; entries
    where ``live`` is False are never read (padding may hold NaN / -inf there)."""

    live: torch.Tensor
    signal: torch.Tensor  # the advantages, or the teacher's log-probs when from_teacher
    from_teacher: bool
    baseline: torch.Tensor | None = None
    old_logprobs: torch.Tensor | None = None
    reference_logprobs: torch.Tensor | None = None
    clip_eps: float | None = None
    advantage_clip: float | None = None
    beta: float = 0.0

    def rows(self, r0: int, r1: int) -> PolicyGradientInputs:
        """The inputs of rows [r0, r1) (a token chunk)."""
        cut: dict[str, Any] = {
            name: getattr(self, name)[r0:r1] if getattr(self, name) is not None else None
            for name in ("live", "signal", "baseline", "old_logprobs", "reference_logprobs")
        }
        return replace(self, **cut)

    def terms(self, lp: torch.Tensor) -> TokenTerms:
        """The per-token loss and its derivative at log-probs ``lp`` (differentiable or not)."""
        live = self.live

        def selected(t: torch.Tensor) -> torch.Tensor:
            return torch.where(live, t, torch.zeros_like(t))

        lp = selected(lp)
        lp_const = lp.detach()
        log_ratio = None
        if self.from_teacher:
            log_ratio = selected(lp_const - self.signal)
            advantage = -log_ratio
        else:
            advantage = selected(self.signal)
        if self.baseline is not None:
            advantage = advantage - selected(self.baseline)
        advantage_clipped = None
        if self.advantage_clip is not None:
            advantage_clipped = (advantage.abs() > self.advantage_clip) & live
            advantage = advantage.clamp(-self.advantage_clip, self.advantage_clip)
        weight, ratio, flat = torch.ones_like(lp_const), None, None
        if self.old_logprobs is not None:
            ratio = weight = selected(torch.exp(lp_const - selected(self.old_logprobs)))
            if self.clip_eps is not None:
                flat = (
                    ((advantage > 0) & (ratio > 1 + self.clip_eps)) | ((advantage < 0) & (ratio < 1 - self.clip_eps))
                ) & live
                weight = torch.where(flat, torch.zeros_like(ratio), ratio)
        loss = -advantage * weight * lp
        dloss_dlp = -advantage * weight
        k3 = None
        if self.reference_logprobs is not None:
            delta = selected(self.reference_logprobs) - lp
            k3 = selected(torch.exp(delta) - delta - 1)
            if self.beta > 0:
                loss = loss + self.beta * k3
                dloss_dlp = dloss_dlp + self.beta * selected(1 - torch.exp(delta.detach()))
        return TokenTerms(loss, dloss_dlp, advantage, log_ratio, ratio, flat, advantage_clipped, k3)


class _Grads(NamedTuple):
    """What _FusedPolicyGradient.backward returns: one slot per input of its forward, in order."""

    hidden: torch.Tensor | None
    weight: torch.Tensor | None
    tokens: None = None
    inputs: None = None
    params: None = None


def _rows_class(backend: str):
    if backend == "triton":
        from .policy_gradient_triton import TritonTerminalRows

        return TritonTerminalRows
    return TorchTerminalRows


class _FusedPolicyGradient(torch.autograd.Function):
    @staticmethod
    @v.autocast_off
    def forward(ctx, h, W, tokens, inputs: PolicyGradientInputs, params: PolicyGradientParams):
        dtype = accumulate_dtype(h.dtype)
        if params.reduction == "mean":
            scale = 1.0 / inputs.live.sum().clamp_min(1).to(dtype)
        else:
            scale = torch.tensor(
                1.0 / max(params.sequences, 1) if params.reduction == "sequence_sum" else 1.0,
                dtype=dtype,
                device=h.device,
            )

        coefficients = []

        def coefficient(r0: int, r1: int, lp: torch.Tensor) -> torch.Tensor:
            coefficients.append(inputs.rows(r0, r1).terms(lp).dloss_dlp * scale)
            return coefficients[-1]

        lp, dh, dW = terminal_logprobs(h, W, tokens, inputs.live, coefficient, params, _rows_class(params.backend))
        # The loss is terminal: its gradients were formed in the pass; backward only scales them.
        keep_forward_grads(ctx, dh.to(h.dtype) if dh is not None else None, dW.to(W.dtype) if dW is not None else None)
        # for a second backward through a retained graph only: the inputs (references) and the
        # per-token coefficients dL/dlp ([N] floats), from which the pass recomputes the gradients
        c = torch.cat(coefficients) if coefficients else lp.new_zeros(0)
        ctx.save_for_backward(h, W, tokens, inputs.live, c)
        ctx.params = params
        ctx.mark_non_differentiable(lp)
        return inputs.terms(lp).loss.sum() * scale, lp

    @staticmethod
    @v.autocast_off
    def backward(ctx, grad_loss, _grad_lp):
        grads = take_forward_grads(ctx, grad_loss)
        if grads is None:
            h, W, tokens, live, c = ctx.saved_tensors
            g = grad_loss.to(c.dtype)
            _, dh, dW = terminal_logprobs(
                h, W, tokens, live, lambda r0, r1, lp: c[r0:r1] * g, ctx.params, _rows_class(ctx.params.backend)
            )
            grads = (dh.to(h.dtype) if dh is not None else None, dW.to(W.dtype) if dW is not None else None)
        dh, dW = grads
        return _Grads(hidden=dh, weight=dW)


def _metrics(terms: TokenTerms, tokens: torch.Tensor, from_teacher: bool) -> dict[str, torch.Tensor]:
    """The metrics of sampled_reverse_kl_loss (from_teacher) / policy_gradient_loss, and of what this op adds."""
    denom = tokens.clamp_min(1).to(terms.loss.dtype)
    metrics = {"tokens": tokens}
    if from_teacher:
        assert terms.log_ratio is not None  # computed whenever the signal is the teacher's
        metrics["reverse_kl"] = terms.log_ratio.sum() / denom
    else:
        metrics["advantage"] = terms.advantage.sum() / denom
    for name, values in (
        ("importance_ratio", terms.ratio),
        ("clipped_fraction", terms.flat),
        ("advantage_clipped_fraction", terms.advantage_clipped),
        ("reference_kl", terms.k3),
    ):
        if values is not None:
            metrics[name] = values.sum().to(denom.dtype) / denom
    return {k: t.detach() for k, t in metrics.items()}


def fused_policy_gradient_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    *,
    advantages: torch.Tensor | None = None,
    teacher_logprobs: torch.Tensor | None = None,
    old_logprobs: torch.Tensor | None = None,
    baseline: torch.Tensor | None = None,
    clip_eps: float | None = 0.2,
    advantage_clip: float | None = None,
    reference_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    temperature: float = 1.0,
    reduction: v.Reduction = "sequence_sum",
    vocab_size: int | None = None,
    backend: str = "auto",
    chunk_size: int | None = None,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped policy-gradient loss on the sampled tokens, from hidden states, forward and backward in one pass.

    Equals ``token_logprobs`` followed by :func:`opd_kernels.sampled_reverse_kl_loss` (with
    ``teacher_logprobs``: Video-OPD's sampled objective, advantage ``lp_t - lp_s`` detached) or
    :func:`opd_kernels.policy_gradient_loss` (with ``advantages``: GRPO, PPO), values, metrics
    and gradients, without a [tokens, vocab] tensor and without the log-probs' backward
    recompute: per token chunk one matmul gives the logits, then lse, lp, the coefficient
    dL/dlp (advantage, importance ratio, its clip, the reduction's normaliser), and the
    gradients w.r.t. ``hidden`` and ``weight`` are formed from the same logits in the forward
    call (3 matmuls; the module docstring has the derivation).

    Args:
        hidden: [..., T, D] bf16 / fp16 / fp32 (fp64 too): the hidden state before each sampled token.
        weight: [V, D] LM head, same dtype (any mix under ``torch.autocast``, as every op; first
            ``vocab_size`` rows if given).
        tokens: int64 [..., T], the sampled ids, in [0, V) or ``ignore_index``.
        mask: bool [..., T]; False tokens contribute exactly 0 and get zero gradient, whatever
            ``hidden`` and the other tensors hold there (NaN included).
        advantages: [..., T] floating, constant: GRPO's group advantage broadcast over the
            answer's tokens. Exactly one of ``advantages`` / ``teacher_logprobs``.
        teacher_logprobs: [..., T]: the teacher's log-probs of the sampled tokens; the
            advantage is ``lp_t - lp_s`` (detached).
        old_logprobs: optional [..., T]: the sampler's log-probs. The loss is weighted by the
            importance ratio ``exp(lp_s - lp_old)`` (detached) and, with ``clip_eps``, zeroed
            on PPO's flat side of the clip.
        baseline: optional, broadcastable to [..., T] ([B, 1]: per sequence), constant,
            subtracted from the advantage (before ``advantage_clip``).
        clip_eps: PPO's clip range in (0, 1), used when ``old_logprobs`` is given; None: no
            clip (:func:`sampled_reverse_kl_loss`'s behaviour).
        advantage_clip: optional c > 0: the advantage is clamped to [-c, c].
        reference_logprobs, beta: optional k3 KL penalty ``beta * k3`` to a reference policy
            (as :func:`policy_gradient_loss`; metric "reference_kl" whenever given).
        temperature: tau > 0; logits are divided by it.
        reduction: one of :data:`opd_kernels.REDUCTIONS` ("sequence_sum": the paper's, the
            last dim is the sequence). "none" returns the per-token loss [..., T]; it is not
            terminal (its gradient depends on what follows), so it runs ``token_logprobs`` and
            the per-token loss unfused. "token_mean" warns (DeprecationWarning) and means "mean".
        vocab_size: use only the first rows of ``weight`` (a padded head).
        backend: "torch" (chunked PyTorch on every device, row math compiled on CPU and CUDA),
            "triton" (the same chunked schedule with two Triton row kernels, g stored in the
            weight's dtype; CUDA, or CPU under TRITON_INTERPRET=1), "auto" (torch everywhere:
            the Triton rows are not timed on a GPU yet).
        ignore_index: positions whose id is this (HF's -100) count as masked ones.
        chunk_size: tokens per chunk (default: ``_params.default_chunk_size`` for the chunk's
            buffers: one fp32 [C, V] block on torch, C = 2 D; fp32 logits and g on Triton).

    Returns:
        (loss, metrics): loss fp32 (fp64 for fp64 inputs), 0-dim or [..., T] for "none";
        metrics detached 0-dim tensors (no host sync), those of ``sampled_reverse_kl_loss``
        ("reverse_kl", "tokens", "importance_ratio", "advantage_clipped_fraction") or of
        ``policy_gradient_loss`` ("tokens", "advantage" after baseline and clamp,
        "importance_ratio"), plus "clipped_fraction" (ratio clip active), "reference_kl"
        (``reference_logprobs`` given) and "advantage_clipped_fraction" (``advantage_clip``).
        Gradients flow to ``hidden`` and ``weight`` (none to a frozen weight, and no work for it).
    """
    h, W, inv_tau, backend = prepare_head(hidden, weight, temperature, backend, vocab_size)
    ignore_index = v.check_ignore_index(ignore_index)
    if (advantages is None) == (teacher_logprobs is None):
        raise ValueError(
            "pass exactly one of advantages (GRPO / PPO) and teacher_logprobs (sampled OPD), got "
            + ("both" if advantages is not None else "neither")
        )
    signal_name, signal = (
        ("advantages", advantages) if advantages is not None else ("teacher_logprobs", teacher_logprobs)
    )
    assert signal is not None  # exactly one of the two, checked above
    leading = hidden.shape[:-1]
    v.check_like(signal_name, signal, mask, old_logprobs=old_logprobs, reference_logprobs=reference_logprobs)
    # keep: mask, and not ignore_index (HF labels); the ids are 0 where not kept, safe to gather.
    flat_tokens, keep = v.check_token_ids(tokens, leading, W.shape[0], ignore_index=ignore_index, mask=mask)
    v.check_baseline(baseline, leading, "tokens")
    v.check_same_device(
        hidden=hidden,
        weight=weight,
        tokens=tokens,
        mask=mask,
        **{signal_name: signal},
        old_logprobs=old_logprobs,
        baseline=baseline,
        reference_logprobs=reference_logprobs,
    )
    v.check_clip_eps(clip_eps)
    v.check_advantage_clip(advantage_clip)
    if v.check_beta(beta) > 0 and reference_logprobs is None:
        raise ValueError("beta > 0 needs reference_logprobs")
    reduction = v.check_reduction(reduction)
    if reduction == "sequence_sum" and len(leading) < 1:
        raise ValueError("reduction='sequence_sum' needs a sequence dim (the last one of tokens)")
    chunk_size = v.check_chunk_size(chunk_size)

    dtype = accumulate_dtype(h.dtype)

    def spread(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(dtype).expand(leading).reshape(-1)

    def flat(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else spread(t)

    inputs = PolicyGradientInputs(
        live=keep,
        signal=spread(signal),
        from_teacher=teacher_logprobs is not None,
        baseline=flat(baseline),
        old_logprobs=flat(old_logprobs),
        reference_logprobs=flat(reference_logprobs),
        clip_eps=clip_eps if old_logprobs is not None else None,
        advantage_clip=advantage_clip,
        beta=beta,
    )
    if reduction == "none":
        lp = token_logprobs(
            hidden,
            weight,
            tokens,
            temperature=temperature,
            backend=backend,
            vocab_size=vocab_size,
            ignore_index=ignore_index,
            mask=mask,
        )
        terms = inputs.terms(lp.reshape(-1))
        return terms.loss.reshape(leading), _metrics(terms, keep.sum(), inputs.from_teacher)

    grad_enabled = torch.is_grad_enabled()
    params = PolicyGradientParams(
        inv_tau=inv_tau,
        backend=backend,
        chunk_size=chunk_size,
        need_dh=grad_enabled and hidden.requires_grad,
        need_dw=grad_enabled and weight.requires_grad,
        reduction=reduction,
        sequences=math.prod(leading[:-1]),
    )
    loss, lp = _FusedPolicyGradient.apply(h, W, flat_tokens, inputs, params)
    return loss, _metrics(inputs.terms(lp), keep.sum(), inputs.from_teacher)
