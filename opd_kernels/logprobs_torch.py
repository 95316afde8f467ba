"""Chunked pure-PyTorch token log-probs, entropy and top-k: any device, bounded memory.

Like reverse_kl_torch: per chunk of C tokens one matmul gives the fp32 logits over the whole
vocabulary ([C, V]) and a row function (``_torch_rows``) reduces them; C from
``_params.default_chunk_size`` with one fp32 [C, V] block (C = 2 D by default). The forward
keeps lse (and the entropy), 1-2 floats a token; the backward recomputes each
chunk's logits once (one matmul), forms the logit gradient over them in place and adds g W
into dh and g^T h into dW: 4 matmuls for forward + backward, the least that never keeps
[N, V] values between the two.
"""

from __future__ import annotations

import torch

from ._matmul import acc_operand, accumulate_dtype, grad_operand, mm_acc, multiply_out_
from ._params import KernelParams, LogprobParams
from ._torch_rows import logsumexp_rows, softmax_grad_rows

# Bytes a chunk holds per logit: one fp32 block of logits (the gradient overwrites it).
LOGIT_BYTES = 4


def target_logits(h: torch.Tensor, W: torch.Tensor, tokens: torch.Tensor, inv_tau: float) -> torch.Tensor:
    """z[y] = h . W[y] / tau for every row: a gather and a row dot, O(N * D)."""
    dtype = accumulate_dtype(h.dtype)
    return (h.to(dtype) * W.index_select(0, tokens).to(dtype)).sum(dim=1) * inv_tau


def add_target_grads(dh, dW, h, W, tokens, row_scale):
    """The one-hot part of d lp / dz = onehot(y) - p: row_scale_i * W[y_i] and its transpose."""
    if dh is not None:
        dh.add_(row_scale[:, None] * W.index_select(0, tokens).to(dh.dtype))
    if dW is not None:
        # A row with zero upstream gradient (a masked token) adds exactly 0 even where its
        # hidden state is NaN/inf (padding): selected away, since 0 * NaN = NaN.
        scaled_h = (row_scale[:, None] * h.to(dW.dtype)).masked_fill_(row_scale[:, None] == 0, 0.0)
        dW.index_add_(0, tokens, scaled_h)


def logsumexp_stats_torch(h, W, params: LogprobParams):
    """Per row: lse of z = h W^T / tau and, with params.return_entropy, the entropy of softmax(z)
    (from logits centred on their row max: ``_torch_rows.logsumexp_rows``), else None."""
    n, vocab = h.shape[0], W.shape[0]
    inv_tau, with_entropy = params.inv_tau, params.return_entropy
    dtype = accumulate_dtype(h.dtype)
    W_acc = acc_operand(W)
    lse = torch.empty(n, dtype=dtype, device=h.device)
    entropy = torch.empty(n, dtype=dtype, device=h.device) if with_entropy else None
    chunk = params.tokens_per_chunk(vocab, h.shape[1], LOGIT_BYTES)
    for r0 in range(0, n, chunk):
        z = mm_acc(h[r0 : r0 + chunk], W_acc.t())
        lse_c, entropy_c = logsumexp_rows(z, inv_tau, with_entropy)
        del z
        lse[r0 : r0 + chunk] = lse_c
        if with_entropy:
            entropy[r0 : r0 + chunk] = entropy_c
    return lse, entropy


def softmax_grads_torch(h, W, lse, entropy, grad_lp, grad_entropy, params: KernelParams):
    """Gradients of sum_i (grad_lp_i * lp_i + grad_entropy_i * H_i) through the softmax part.

    d lp / dz = onehot(y) - p (the one-hot part is add_target_grads), dH / dz = -p (log p + H).
    So here g = -p * (grad_lp + grad_entropy * (log p + H)) / tau. grad_entropy None: no
    entropy term. Returns (dh | None, dW | None) as params.need_dh / need_dw ask.
    """
    n, vocab = h.shape[0], W.shape[0]
    inv_tau, need_dh, need_dw = params.inv_tau, params.need_dh, params.need_dw
    dtype = accumulate_dtype(h.dtype)
    W_acc = acc_operand(W)
    dh = torch.empty(h.shape, dtype=dtype, device=h.device) if need_dh else None
    dW = torch.zeros(W.shape, dtype=dtype, device=W.device) if need_dw else None
    chunk = params.tokens_per_chunk(vocab, h.shape[1], LOGIT_BYTES)
    # Rows with zero upstream gradient (masked tokens) may hold NaN/inf (padding): select them
    # away before the matmuls (0 * NaN = NaN) so they add exactly 0 to dh and dW.
    live = grad_lp != 0 if grad_entropy is None else (grad_lp != 0) | (grad_entropy != 0)
    h = torch.where(live[:, None], acc_operand(h), 0.0)
    lse = torch.where(live, lse, 0.0)
    entropy = torch.where(live, entropy, 0.0) if grad_entropy is not None else None
    for r0 in range(0, n, chunk):
        r1 = min(r0 + chunk, n)
        go_ent = grad_entropy[r0:r1] if grad_entropy is not None else None
        ent_c = entropy[r0:r1] if entropy is not None else None
        hc = h[r0:r1]
        z = mm_acc(hc, W_acc.t())
        g = grad_operand(softmax_grad_rows(z, inv_tau, lse[r0:r1], ent_c, grad_lp[r0:r1], go_ent), W_acc)
        del z
        multiply_out_(g, W_acc, hc, dh[r0:r1] if need_dh else None, dW)
        del g
    return dh, dW


class TorchTerminalRows:
    """The row math of :func:`terminal_logprobs` on the torch backend (``_torch_rows``): the gradient
    is written over the chunk's fp32 logits, so a chunk holds one fp32 [C, V] block."""

    @staticmethod
    def logit_bytes(dtype: torch.dtype) -> int:
        return LOGIT_BYTES

    def __init__(self, rows: int, vocab: int, W_acc: torch.Tensor):
        self.W_acc = W_acc

    def lse(self, z, inv_tau):
        return logsumexp_rows(z, inv_tau, False)[0]

    def grad(self, z, inv_tau, lse, c):
        return grad_operand(softmax_grad_rows(z, inv_tau, lse, None, c, None), self.W_acc)


def terminal_logprobs(h, W, tokens, live, coefficient, params: KernelParams, rows_class=TorchTerminalRows):
    """Log-probs of ``tokens`` and, in the same pass, the gradients of a terminal loss of them.

    The loss is sum_i L_i(lp_i) with dL_i/dlp_i = ``coefficient(r0, r1, lp[r0:r1])`` known once
    a chunk's log-probs are (a policy-gradient loss: its advantage, importance ratio and clip
    are functions of lp_i and of constants). Per chunk: one matmul gives the fp32 logits z,
    ``logsumexp_rows`` their lse (z kept), lp = z[y] / tau - lse, then c = dL/dlp, and the
    logit gradient c (onehot(y) - p) / tau is formed over z in place and multiplied out:
    dh = g W, dW += g^T h. Three matmuls in all, each logit computed once, one fp32 [C, V]
    block held (the loss is terminal, so no backward pass recomputes them). The one-hot part
    is a gather / index_add over all rows at the end, O(N * D). ``rows_class`` does the row
    math (lse, then g = -c p / tau): :class:`TorchTerminalRows`, or the Triton row kernels
    (``policy_gradient_triton.TritonTerminalRows``), whose ``logit_bytes`` size the chunk.

    live [N] bool: rows that may enter the loss; the others (padding, possibly NaN) are
    selected away before any matmul and get lp and gradient rows the coefficient makes 0.
    Returns (lp [N] <= 0, dh [N, D] | None, dW [V, D] | None) in the accumulation dtype.
    """
    n, vocab = h.shape[0], W.shape[0]
    inv_tau, need_dh, need_dw, need_grad = params.inv_tau, params.need_dh, params.need_dw, params.need_grad
    dtype = accumulate_dtype(h.dtype)
    W_acc = acc_operand(W)
    h = torch.where(live[:, None], acc_operand(h), 0.0)
    target = target_logits(h, W, tokens, inv_tau)
    lp = torch.empty(n, dtype=dtype, device=h.device)
    coefficients = torch.empty(n, dtype=dtype, device=h.device) if need_grad else None
    dh = torch.empty(h.shape, dtype=dtype, device=h.device) if need_dh else None
    dW = torch.zeros(W.shape, dtype=dtype, device=W.device) if need_dw else None
    chunk = min(params.tokens_per_chunk(vocab, h.shape[1], rows_class.logit_bytes(W_acc.dtype)), max(n, 1))
    rows = rows_class(chunk, vocab, W_acc)
    for r0 in range(0, n, chunk):
        r1 = min(r0 + chunk, n)
        hc = h[r0:r1]
        z = mm_acc(hc, W_acc.t())
        lse = rows.lse(z, inv_tau)
        # A log-prob is never positive; rounding can cross 0 (as token_logprobs).
        lp_c = (target[r0:r1] - lse).clamp_max(0.0)
        lp[r0:r1] = lp_c
        if not need_grad:
            continue
        c = coefficients[r0:r1] = coefficient(r0, r1, lp_c)
        g = rows.grad(z, inv_tau, lse, c)
        del z
        multiply_out_(g, W_acc, hc, dh[r0:r1] if need_dh else None, dW)
        del g
    if need_grad:
        add_target_grads(dh, dW, h, W, tokens, coefficients * inv_tau)
    return lp, dh, dW


def topk_torch(h, W, k, params: KernelParams):
    """Exact top-k of log_softmax(h W^T / tau) per row, from whole-vocabulary logit rows."""
    n, vocab = h.shape[0], W.shape[0]
    inv_tau = params.inv_tau
    dtype = accumulate_dtype(h.dtype)
    W_acc = acc_operand(W)
    values = torch.empty((n, k), dtype=dtype, device=h.device)
    indices = torch.empty((n, k), dtype=torch.int64, device=h.device)
    chunk = params.tokens_per_chunk(vocab, h.shape[1], LOGIT_BYTES)
    for r0 in range(0, n, chunk):
        z = mm_acc(h[r0 : r0 + chunk], W_acc.t())
        # The order of the top k does not change under the positive 1/tau; the row function
        # then consumes z for lse (no [C, V] temporary).
        best_z, best_i = z.topk(k, dim=1)
        rows = z.shape[0]
        lse, _ = logsumexp_rows(z, inv_tau, False)
        del z
        values[r0 : r0 + rows] = best_z * inv_tau - lse[:, None]
        indices[r0 : r0 + rows] = best_i
    return values, indices
