"""Chunked pure-PyTorch reverse KL: any device, bounded memory.

Tokens are processed ``chunk_size`` rows at a time and the vocabulary
``VOCAB_CHUNK`` columns at a time, with flash-attention style running statistics,
so the largest temporaries are a few [chunk_size, VOCAB_CHUNK] fp32 tiles.
The gradient pass recomputes each tile once more (2 extra matmuls per tile).
"""

from __future__ import annotations

import torch

from ._matmul import accumulate_dtype, addmm_acc_, mm_acc
from ._torch_common import fold_logsumexp_tile

DEFAULT_CHUNK_SIZE = 1024
VOCAB_CHUNK = 8192


def _logit_tiles(h_s, W_s, h_t, W_t, inv_tau, v0, v1):
    z_s = mm_acc(h_s, W_s[v0:v1].t()).mul_(inv_tau)
    z_t = mm_acc(h_t, W_t[v0:v1].t()).mul_(inv_tau)
    return z_s, z_t


def _chunk_stats(h_s, W_s, h_t, W_t, inv_tau, vocab):
    """Per-row lse_s, lse_t and E_p[z_s - z_t] by one streaming pass over vocabulary tiles."""
    rows = h_s.shape[0]
    dtype = accumulate_dtype(h_s.dtype)
    m_s = torch.full((rows,), float("-inf"), dtype=dtype, device=h_s.device)
    m_t = torch.full_like(m_s, float("-inf"))
    s_s = torch.zeros_like(m_s)
    s_t = torch.zeros_like(m_s)
    a = torch.zeros_like(m_s)
    for v0 in range(0, vocab, VOCAB_CHUNK):
        z_s, z_t = _logit_tiles(h_s, W_s, h_t, W_t, inv_tau, v0, min(v0 + VOCAB_CHUNK, vocab))
        m_s, s_s, rescale_s, e_s = fold_logsumexp_tile(m_s, s_s, z_s)
        a = a * rescale_s + (e_s * (z_s - z_t)).sum(dim=1)
        # Sliced so that the teacher's exp tile is freed now, not held until the next tile.
        m_t, s_t = fold_logsumexp_tile(m_t, s_t, z_t)[:2]
    lse_s = m_s + torch.log(s_s)
    lse_t = m_t + torch.log(s_t)
    return lse_s, lse_t, a / s_s - lse_s + lse_t


def reverse_kl_torch(
    h_s: torch.Tensor,
    W_s: torch.Tensor,
    h_t: torch.Tensor,
    W_t: torch.Tensor,
    weights: torch.Tensor,
    inv_tau: float,
    need_dh: bool,
    need_dw: bool,
    chunk_size: int | None = None,
):
    """Per-token reverse KL and, on request, the weighted gradients.

    h_s [N, D_s], W_s [V, D_s], h_t [N, D_t], W_t [V, D_t] (already cut to V rows),
    weights [N] fp32: the loss is sum_i weights_i * rkl_i. Returns (rkl [N] with 0 where
    weights == 0, dh [N, D_s] | None, dW [V, D_s] | None), gradients in the accumulation dtype.
    """
    n, vocab = h_s.shape[0], W_s.shape[0]
    chunk = chunk_size or DEFAULT_CHUNK_SIZE
    dtype = accumulate_dtype(h_s.dtype)
    active = weights != 0
    rkl = torch.empty(n, dtype=dtype, device=h_s.device)
    dh = torch.empty(h_s.shape, dtype=dtype, device=h_s.device) if need_dh else None
    dW = torch.zeros(W_s.shape, dtype=dtype, device=W_s.device) if need_dw else None
    for r0 in range(0, n, chunk):
        r1 = min(r0 + chunk, n)
        # Masked rows (padding) may hold NaN/inf: select them away (not multiply, 0 * NaN = NaN)
        # before the matmuls, so they contribute exactly 0 to rkl, dh and dW.
        live = active[r0:r1, None]
        hs = torch.where(live, h_s[r0:r1], 0.0)
        ht = torch.where(live, h_t[r0:r1], 0.0)
        lse_s, lse_t, rkl_chunk = _chunk_stats(hs, W_s, ht, W_t, inv_tau, vocab)
        rkl[r0:r1] = torch.where(active[r0:r1], rkl_chunk, 0.0)
        if not (need_dh or need_dw):
            continue
        # d(w * rkl)/dz_s = w * p * (log p - log q - rkl); the 1/tau of z = h W^T / tau folds in here.
        row_scale = torch.where(active[r0:r1], weights[r0:r1].to(dtype), 0.0) * inv_tau
        if need_dh:
            dh_chunk = torch.zeros((r1 - r0, h_s.shape[1]), dtype=dtype, device=h_s.device)
        for v0 in range(0, vocab, VOCAB_CHUNK):
            v1 = min(v0 + VOCAB_CHUNK, vocab)
            z_s, z_t = _logit_tiles(hs, W_s, ht, W_t, inv_tau, v0, v1)
            log_p = z_s.sub_(lse_s[:, None])
            log_ratio = log_p - z_t.sub_(lse_t[:, None])
            g = torch.exp(log_p).mul_(log_ratio.sub_(rkl_chunk[:, None])).mul_(row_scale[:, None])
            if need_dh:
                addmm_acc_(dh_chunk, g, W_s[v0:v1])
            if need_dw:
                addmm_acc_(dW[v0:v1], g.t(), hs)
        if need_dh:
            dh[r0:r1] = dh_chunk
    return rkl, dh, dW
