"""Chunked pure-PyTorch token log-probs, entropy and top-k: any device, bounded memory.

Same tiling as reverse_kl_torch: ``chunk_size`` tokens by VOCAB_CHUNK columns at a time.
"""

from __future__ import annotations

import torch

from ._matmul import accumulate_dtype, addmm_acc_, mm_acc
from ._torch_common import fold_logsumexp_tile
from .reverse_kl_torch import DEFAULT_CHUNK_SIZE, VOCAB_CHUNK


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


def logsumexp_stats_torch(h, W, inv_tau, with_mean, chunk_size=None):
    """Per row: lse of z = h W^T / tau and, with_mean, E_p[z] (for the entropy lse - E_p[z])."""
    n, vocab = h.shape[0], W.shape[0]
    dtype = accumulate_dtype(h.dtype)
    lse = torch.empty(n, dtype=dtype, device=h.device)
    mean_z = torch.empty(n, dtype=dtype, device=h.device)
    chunk = chunk_size or DEFAULT_CHUNK_SIZE
    for r0 in range(0, n, chunk):
        hc = h[r0 : r0 + chunk]
        m = torch.full((hc.shape[0],), float("-inf"), dtype=dtype, device=h.device)
        s = torch.zeros_like(m)
        sz = torch.zeros_like(m)
        for v0 in range(0, vocab, VOCAB_CHUNK):
            z = mm_acc(hc, W[v0 : v0 + VOCAB_CHUNK].t()).mul_(inv_tau)
            m, s, rescale, e = fold_logsumexp_tile(m, s, z)
            if with_mean:
                sz = sz * rescale + (e * z).sum(dim=1)
        lse[r0 : r0 + chunk] = m + torch.log(s)
        if with_mean:
            mean_z[r0 : r0 + chunk] = sz / s
    return lse, (mean_z if with_mean else None)


def softmax_grads_torch(h, W, inv_tau, lse, entropy, grad_lp, grad_entropy, need_dh, need_dw, chunk_size=None):
    """Gradients of sum_i (grad_lp_i * lp_i + grad_entropy_i * H_i) through the softmax part.

    d lp / dz = onehot(y) - p (the one-hot part is add_target_grads), dH / dz = -p (log p + H).
    So here g = -p * (grad_lp + grad_entropy * (log p + H)) / tau.
    """
    n, vocab = h.shape[0], W.shape[0]
    dtype = accumulate_dtype(h.dtype)
    dh = torch.zeros(h.shape, dtype=dtype, device=h.device) if need_dh else None
    dW = torch.zeros(W.shape, dtype=dtype, device=W.device) if need_dw else None
    chunk = chunk_size or DEFAULT_CHUNK_SIZE
    for r0 in range(0, n, chunk):
        r1 = min(r0 + chunk, n)
        go_lp = grad_lp[r0:r1, None]
        go_ent = grad_entropy[r0:r1, None] if grad_entropy is not None else None
        # Rows with zero upstream gradient (masked tokens) may hold NaN/inf (padding): select
        # them away before the matmuls (0 * NaN = NaN) so they add exactly 0 to dh and dW.
        live = go_lp != 0 if go_ent is None else (go_lp != 0) | (go_ent != 0)
        hc = torch.where(live, h[r0:r1], 0.0)
        lse_c = torch.where(live, lse[r0:r1, None], 0.0)
        ent_c = torch.where(live, entropy[r0:r1, None], 0.0) if entropy is not None else None
        for v0 in range(0, vocab, VOCAB_CHUNK):
            v1 = min(v0 + VOCAB_CHUNK, vocab)
            log_p = mm_acc(hc, W[v0:v1].t()).mul_(inv_tau).sub_(lse_c)
            weight = go_lp if go_ent is None else go_lp + go_ent * (log_p + ent_c)
            g = torch.exp(log_p).mul_(weight).mul_(-inv_tau)
            if need_dh:
                addmm_acc_(dh[r0:r1], g, W[v0:v1])
            if need_dw:
                addmm_acc_(dW[v0:v1], g.t(), hc)
    return dh, dW


def topk_torch(h, W, k, inv_tau, chunk_size=None):
    """Exact top-k of log_softmax(h W^T / tau) per row, by a running merge over vocab tiles."""
    n, vocab = h.shape[0], W.shape[0]
    dtype = accumulate_dtype(h.dtype)
    values = torch.empty((n, k), dtype=dtype, device=h.device)
    indices = torch.empty((n, k), dtype=torch.int64, device=h.device)
    chunk = chunk_size or DEFAULT_CHUNK_SIZE
    for r0 in range(0, n, chunk):
        hc = h[r0 : r0 + chunk]
        rows = hc.shape[0]
        best_z = torch.full((rows, 0), float("-inf"), dtype=dtype, device=h.device)
        best_i = torch.empty((rows, 0), dtype=torch.int64, device=h.device)
        m = torch.full((rows,), float("-inf"), dtype=dtype, device=h.device)
        s = torch.zeros_like(m)
        for v0 in range(0, vocab, VOCAB_CHUNK):
            z = mm_acc(hc, W[v0 : v0 + VOCAB_CHUNK].t()).mul_(inv_tau)
            # Sliced so that the exp tile is freed before the top-k merge allocates its own.
            m, s = fold_logsumexp_tile(m, s, z)[:2]
            tile_z, tile_i = z.topk(min(k, z.shape[1]), dim=1)
            merged_z = torch.cat([best_z, tile_z], dim=1)
            merged_i = torch.cat([best_i, tile_i + v0], dim=1)
            best_z, pos = merged_z.topk(min(k, merged_z.shape[1]), dim=1)
            best_i = merged_i.gather(1, pos)
        values[r0 : r0 + rows] = best_z - (m + torch.log(s))[:, None]
        indices[r0 : r0 + rows] = best_i
    return values, indices
