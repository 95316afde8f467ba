"""token_logprobs and topk_logprobs straight from hidden states: a matmul and nothing else."""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import _validation as v
from ._matmul import accumulate_dtype
from ._params import LogprobParams
from .logprobs_torch import add_target_grads, logsumexp_stats_torch, softmax_grads_torch, target_logits, topk_torch


def prepare_head(hidden, weight, temperature, backend, vocab_size):
    """The checks and layout of every op from one model's hidden states and LM head: (h [N, D], W [V, D] cut to
    ``vocab_size`` rows, 1 / temperature, the resolved backend)."""
    # Under torch.autocast the operands come back in autocast's dtype (differentiably cast).
    hidden, weight = v.check_hidden_and_weight("hidden", hidden, "weight", weight)
    inv_tau = 1.0 / v.check_temperature(temperature)
    if vocab_size is not None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 0 < vocab_size <= weight.shape[0]:
            raise ValueError(
                f"vocab_size must be an int in [1, {weight.shape[0]}] (weight has shape "
                f"{tuple(weight.shape)}), got {vocab_size!r}"
            )
        weight = weight[:vocab_size]
    # Measured on an H200 (README): cuBLAS logits per token chunk with the row math compiled beat
    # our fused Triton kernels, 1.8x (token_logprobs forward), 2.8x (its backward), 9x (top-k).
    backend = v.resolve_backend(backend, hidden.device, (hidden.dtype,), auto_triton_on_cuda=False)
    h = hidden.reshape(-1, hidden.shape[-1])
    h = h if h.stride(-1) == 1 else h.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    return h, weight, inv_tau, backend


def _stats(h, W, params: LogprobParams):
    if params.backend == "triton":
        from .logprobs_triton import logsumexp_stats_triton

        return logsumexp_stats_triton(h, W, params)
    return logsumexp_stats_torch(h, W, params)


class _TokenLogprobsGrads(NamedTuple):
    """What _TokenLogprobsFunction.backward returns: one slot per input of its forward, in order."""

    hidden: torch.Tensor | None
    weight: torch.Tensor | None
    tokens: None = None  # integer ids: no gradient
    keep: None = None
    params: None = None


class _TokenLogprobsFunction(torch.autograd.Function):
    @staticmethod
    @v.autocast_off
    def forward(ctx, h, W, tokens, keep, params: LogprobParams):
        lse, entropy = _stats(h, W, params)
        # A log-prob is never positive and an entropy never negative; rounding can cross 0.
        # Ignored positions (keep False) are selected away: exactly 0, even on a NaN row.
        logprobs = torch.where(keep, target_logits(h, W, tokens, params.inv_tau) - lse, 0.0).clamp_max(0.0)
        entropy = torch.where(keep, entropy, 0.0).clamp_min(0.0) if params.return_entropy else None
        ctx.params = params
        if params.need_grad:
            ctx.save_for_backward(h, W, tokens, keep, lse, entropy)
        if entropy is None:
            return logprobs
        return logprobs, entropy

    @staticmethod
    @v.autocast_off
    def backward(ctx, grad_logprobs, grad_entropy=None):
        h, W, tokens, keep, lse, entropy = ctx.saved_tensors
        params = ctx.params
        dtype = accumulate_dtype(h.dtype)
        # Upstream gradients may be expanded views (stride 0, from .sum()); kernels need real rows.
        # An ignored position gets a zero upstream gradient, which every backend turns into exactly
        # zero rows of dh / dW (rows with zero upstream gradient are selected away).
        grad_logprobs = grad_logprobs if grad_logprobs is not None else torch.zeros_like(lse)
        grad_logprobs = torch.where(keep, grad_logprobs.to(dtype), 0.0).contiguous()
        if grad_entropy is not None and entropy is not None:
            grad_entropy = torch.where(keep, grad_entropy.to(dtype), 0.0).contiguous()
        else:
            grad_entropy = None
        if params.backend == "triton":
            from .logprobs_triton import softmax_grads_triton

            dh, dW = softmax_grads_triton(h, W, lse, entropy, grad_logprobs, grad_entropy, params)
        else:
            dh, dW = softmax_grads_torch(h, W, lse, entropy, grad_logprobs, grad_entropy, params)
        add_target_grads(dh, dW, h, W, tokens, grad_logprobs * params.inv_tau)
        return _TokenLogprobsGrads(
            hidden=dh.to(h.dtype) if dh is not None else None, weight=dW.to(W.dtype) if dW is not None else None
        )


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    backend: str = "auto",
    vocab_size: int | None = None,
    check_tokens: bool = False,
    ignore_index: int = -100,
    mask: torch.Tensor | None = None,
):
    """log softmax(hidden @ weight.T / temperature)[token] without building [tokens, vocab].

    Args:
        hidden: [..., D] bf16 / fp16 / fp32 (fp64 on the torch backend).
        weight: [V, D] LM head, same dtype (any mix under ``torch.autocast``: the matmuls run in
            autocast's dtype, each input gets its gradient in its own dtype). With
            ``vocab_size`` only its first rows are used (a padded head: 152,064 rows for a
            151,936-token vocabulary).
        tokens: int64 [...] (the leading shape of hidden), ids in [0, V) or ``ignore_index``.
            An out-of-range id raises IndexError on CPU and a device-side assert on CUDA;
            ``check_tokens=True`` checks up front with a ValueError (this costs one host
            synchronisation).
        ignore_index: positions whose id is this (Hugging Face's and PyTorch's -100 by
            default, so labels go in as they are) get log-prob 0 and entropy 0 and pass no
            gradient, even where their hidden state is NaN; the caller's loss should not
            count them (``mask=labels != ignore_index``).
        mask: optional bool [...]; False positions are treated as ignored ones, whatever id
            they hold (a position is kept where mask is True and its id is not ignore_index).
        temperature: tau > 0; logits are divided by it.
        return_entropy: also return the entropy of softmax(z / tau) per token.
        backend: "torch" (chunked: cuBLAS / CPU logits for a token chunk times the whole
            vocabulary, row math compiled by torch.compile on CPU and CUDA), "triton" (fused
            kernels, logits never leave the chip: less memory, slower), "auto" (torch on every
            device, CUDA included: the Triton kernels are not what "auto" picks; on an H200 the
            torch backend measured 1.8x faster forward, 2.8x backward, README). Opt in to
            backend="triton" for the memory it saves.

    Returns:
        fp32 log-probs [...] (<= 0), or (log-probs, entropy >= 0) with return_entropy. Both are
        differentiable w.r.t. hidden and weight; under torch.no_grad() or for inputs that need
        no grad nothing is saved for backward (the teacher's case).
    """
    h, W, inv_tau, backend = prepare_head(hidden, weight, temperature, backend, vocab_size)
    ignore_index = v.check_ignore_index(ignore_index)
    v.check_tensor("tokens", tokens)
    if mask is not None:
        v.check_tensor("mask", mask)
    v.check_same_device(hidden=hidden, weight=weight, tokens=tokens, mask=mask)
    flat_tokens, keep = v.check_token_ids(
        tokens, hidden.shape[:-1], W.shape[0], ignore_index=ignore_index, mask=mask, check=check_tokens
    )
    grad_enabled = torch.is_grad_enabled()
    params = LogprobParams(
        inv_tau=inv_tau,
        backend=backend,
        need_dh=grad_enabled and hidden.requires_grad,
        need_dw=grad_enabled and weight.requires_grad,
        return_entropy=bool(return_entropy),
    )
    out = _TokenLogprobsFunction.apply(h, W, flat_tokens, keep, params)
    leading = hidden.shape[:-1]
    if return_entropy:
        return out[0].reshape(leading), out[1].reshape(leading)
    return out.reshape(leading)


@torch.no_grad()
def topk_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    *,
    temperature: float = 1.0,
    backend: str = "auto",
    vocab_size: int | None = None,
):
    """The k largest log-probs of softmax(hidden @ weight.T / temperature) and their token ids.

    Args:
        hidden: [..., D]; weight: [V, D] (first ``vocab_size`` rows if given); the same dtype,
            or any mix under ``torch.autocast`` (the matmul runs in autocast's dtype).
        k: 1 <= k <= min(MAX_TOPK, V), MAX_TOPK = 64.
        backend: "torch" (chunked whole-vocabulary logit rows and torch.topk), "triton" (one
            fused kernel: a running merge of tl.topk, logits never leave the chip), "auto"
            (torch on every device: the Triton kernel is not what "auto" picks; on an H200 the
            torch backend measured 9x faster, README).

    Returns:
        (values [..., k] fp32, sorted descending; indices [..., k] int64). Ties go to the lower
        token id on the Triton backend. Not differentiable (computed under no_grad).
    """
    h, W, inv_tau, backend = prepare_head(hidden, weight, temperature, backend, vocab_size)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(v.MAX_TOPK, W.shape[0]):
        raise ValueError(
            f"k must be an int in [1, {min(v.MAX_TOPK, W.shape[0])}] (vocabulary {W.shape[0]}, "
            f"at most {v.MAX_TOPK}), got {k!r}"
        )
    params = LogprobParams(inv_tau=inv_tau, backend=backend)
    with v.no_autocast(h.device):
        if backend == "triton":
            from .logprobs_triton import topk_triton

            values, indices = topk_triton(h, W, k, params)
        else:
            values, indices = topk_torch(h, W, k, params)
    leading = hidden.shape[:-1]
    return values.clamp_max(0.0).reshape(*leading, k), indices.reshape(*leading, k)
