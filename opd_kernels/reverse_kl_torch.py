"""Chunked pure-PyTorch reverse KL in one pass: any device, bounded memory.

Per chunk of C tokens, two matmuls give both models' logits over the *whole* vocabulary in
fp32 ([C, V] each); one row function (``_torch_rows.reverse_kl_rows``: a few fused loops
under torch.compile on CPU, in-place ATen ops otherwise) turns them into lse_s, lse_t, the
reverse KL and the logit gradient g, written over the student's logits; two more matmuls give
dh = g W_s and dW += g^T h_s. Four matmuls in all, as many as naive PyTorch's forward and
backward, and each logit is computed once (the loss is terminal: the gradient is formed in
the forward call). A 16-bit LM head is upcast to fp32 once per call where the device cannot
multiply it into fp32 natively (CPU), not once per chunk.

Extra memory: the two [C, V] fp32 blocks, 8 * C * V bytes (C from
``_params.default_chunk_size`` with LOGIT_BYTES = 8: C = D_s by default, so about twice the fp32
size of the student head), plus the fp32 accumulators dh [N, D_s] and dW [V, D_s], and the fp32 copies of
16-bit heads on CPU, 4 * V * (D_s + D_t) bytes.
"""

from __future__ import annotations

import torch

from ._matmul import acc_operand, accumulate_dtype, addmm_acc_, grad_operand, mm_acc
from ._params import KernelParams
from ._torch_rows import reverse_kl_rows

# Bytes a chunk holds per logit: the student's and the teacher's fp32 logits (g overwrites one).
LOGIT_BYTES = 8


def reverse_kl_torch(
    h_s: torch.Tensor,
    W_s: torch.Tensor,
    h_t: torch.Tensor,
    W_t: torch.Tensor,
    weights: torch.Tensor,
    params: KernelParams,
):
    """Per-token reverse KL and, as ``params.need_dh`` / ``need_dw`` ask, the weighted gradients.

    h_s [N, D_s], W_s [V, D_s], h_t [N, D_t], W_t [V, D_t] (already cut to V rows),
    weights [N] fp32: the loss is sum_i weights_i * rkl_i. Returns (rkl [N] with 0 where
    weights == 0, dh [N, D_s] | None, dW [V, D_s] | None), gradients in the accumulation dtype.
    """
    n, vocab = h_s.shape[0], W_s.shape[0]
    chunk = params.tokens_per_chunk(vocab, h_s.shape[1], LOGIT_BYTES)
    inv_tau, need_dh, need_dw, need_grad = params.inv_tau, params.need_dh, params.need_dw, params.need_grad
    dtype = accumulate_dtype(h_s.dtype)
    device = h_s.device
    W_s_acc, W_t_acc = acc_operand(W_s), acc_operand(W_t)
    active = weights != 0
    # Masked rows (padding) may hold NaN/inf: select them away (not multiply, 0 * NaN = NaN)
    # before the matmuls, so they contribute exactly 0 to rkl, dh and dW. Done once for all
    # rows, in the matmul dtype ([N, D] copies, small beside the [C, V] blocks).
    h_s = torch.where(active[:, None], acc_operand(h_s), 0.0)
    h_t = torch.where(active[:, None], acc_operand(h_t), 0.0)
    # d(w * rkl)/dz_s = w * p * (log p - log q - rkl); the 1/tau of z = h W^T / tau folds in here.
    scale = torch.where(active, weights.to(dtype), 0.0) * inv_tau if need_grad else None
    rkl = torch.empty(n, dtype=dtype, device=device)
    dh = torch.empty(h_s.shape, dtype=dtype, device=device) if need_dh else None
    dW = torch.zeros(W_s.shape, dtype=dtype, device=device) if need_dw else None
    for r0 in range(0, n, chunk):
        r1 = min(r0 + chunk, n)
        hs = h_s[r0:r1]
        z_s = mm_acc(hs, W_s_acc.t())
        z_t = mm_acc(h_t[r0:r1], W_t_acc.t())
        rkl_chunk, g = reverse_kl_rows(z_s, z_t, inv_tau, scale[r0:r1] if need_grad else None)
        del z_s, z_t  # g holds one of the two blocks; the other is freed here
        rkl[r0:r1] = torch.where(active[r0:r1], rkl_chunk, 0.0)
        if not need_grad:
            continue
        g = grad_operand(g, W_s_acc)
        if need_dh:
            dh[r0:r1] = mm_acc(g, W_s_acc)
        if need_dw:
            addmm_acc_(dW, g.t(), hs)
        del g
    return rkl, dh, dW
