"""Triton token log-probs, entropy and top-k: logits never leave the chip.

- forward: a GEMM with an online-logsumexp epilogue (grid: token blocks x vocabulary
  splits; 2 floats per token and split, combined in torch). The target logit z[y] is a
  gather and a row dot, O(N * D), done beside it.
- backward: each [BLOCK_N, BLOCK_V] tile is recomputed, g = -p (grad_lp + grad_H (log p + H))
  is formed and added into dh / dW with fp32 atomics (the one-hot part of onehot(y) - p is a
  gather/index_add, O(N * D)). Token blocks whose upstream gradients are all zero (masked
  tokens) are skipped exactly.
- top-k: per token block, one sweep over the vocabulary with a running merge of tl.topk
  over 64-bit keys (order-preserving float bits << 32 | ~column), so values and indices
  travel together and ties go to the lower token id.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._params import KernelParams, LogprobParams
from ._triton_common import (
    TileConfig,
    combine_split_entropy,
    dot_precision,
    scatter_logit_grads,
    tile_logits,
    tile_program_ids,
    vocab_splits,
)
from ._validation import MAX_TOPK


@triton.jit
def _lse_fwd_kernel(
    h_ptr,
    w_ptr,
    part_ptr,
    N,
    V,
    D,
    stride_h,
    stride_w,
    inv_tau,
    tiles_per_split,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    WITH_MEAN: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """part [2, splits, N]: logsumexp of z over the split, and the entropy of the split-local
    softmax from logits centred on the running max: log s - E[z - m], accumulating
    sd = sum exp(z - m) (z - m) (one sign, near 0 on a peaked row) rather than sum exp(z - m) z,
    whose ratio to s cancels against the lse in fp32 when the logits are large."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    sd = tl.zeros((BLOCK_N,), tl.float32)
    v_begin = split * tiles_per_split * BLOCK_V
    v_end = tl.minimum(v_begin + tiles_per_split * BLOCK_V, V)
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        z = tile_logits(
            h_ptr,
            w_ptr,
            rows,
            cols,
            row_ok,
            col_ok,
            D,
            stride_h,
            stride_w,
            inv_tau,
            BLOCK_N,
            BLOCK_V,
            BLOCK_D,
            DOT_PRECISION,
        )
        z = tl.where(col_ok[None, :], z, float("-inf"))
        new_m = tl.maximum(m, tl.max(z, axis=1))
        e = tl.exp(z - new_m[:, None])
        rescale = tl.exp(m - new_m)
        if WITH_MEAN:
            # re-centre the sum so far on the new max: sum e (z - m) -> sum e (z - new_m)
            shift = tl.where(s > 0, m - new_m, 0.0)
            sd = rescale * (sd + s * shift) + tl.sum(tl.where(col_ok[None, :], e * (z - new_m[:, None]), 0.0), axis=1)
        s = s * rescale + tl.sum(e, axis=1)
        m = new_m
    out = part_ptr + split.to(tl.int64) * N + rows
    tl.store(out, m + tl.log(s), mask=row_ok)
    if WITH_MEAN:
        tl.store(out + tl.num_programs(1).to(tl.int64) * N, tl.log(s) - sd / s, mask=row_ok)


@triton.jit
def _softmax_bwd_kernel(
    h_ptr,
    w_ptr,
    lse_ptr,
    entropy_ptr,
    grad_lp_ptr,
    grad_entropy_ptr,
    dh_ptr,
    dw_ptr,
    N,
    V,
    D,
    stride_h,
    stride_w,
    inv_tau,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP_V: tl.constexpr,
    HAS_ENTROPY_GRAD: tl.constexpr,
    COMPUTE_DH: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_n, pid_v = tile_program_ids(N, V, BLOCK_N, BLOCK_V, GROUP_V)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < N
    col_ok = cols < V
    go_lp = tl.load(grad_lp_ptr + rows, mask=row_ok, other=0.0)
    live_rows = go_lp != 0
    if HAS_ENTROPY_GRAD:
        go_ent = tl.load(grad_entropy_ptr + rows, mask=row_ok, other=0.0)
        live_rows = live_rows | (go_ent != 0)
    if tl.max(live_rows.to(tl.int32), axis=0) > 0:
        z = tile_logits(
            h_ptr,
            w_ptr,
            rows,
            cols,
            row_ok,
            col_ok,
            D,
            stride_h,
            stride_w,
            inv_tau,
            BLOCK_N,
            BLOCK_V,
            BLOCK_D,
            DOT_PRECISION,
        )
        log_p = z - tl.load(lse_ptr + rows, mask=row_ok, other=0.0)[:, None]
        weight = go_lp[:, None]
        if HAS_ENTROPY_GRAD:
            entropy = tl.load(entropy_ptr + rows, mask=row_ok, other=0.0)
            weight = weight + go_ent[:, None] * (log_p + entropy[:, None])
        g = -tl.exp(log_p) * weight * inv_tau
        g = tl.where(live_rows[:, None] & col_ok[None, :], g, 0.0)
        # Dead rows of a partially live block may hold NaN/inf (padding): as the row mask,
        # live_rows loads their h as 0 (0 * NaN would be NaN in g^T h) and leaves their dh at 0.
        scatter_logit_grads(
            g,
            h_ptr,
            w_ptr,
            dh_ptr,
            dw_ptr,
            rows,
            cols,
            row_ok & live_rows,
            col_ok,
            D,
            stride_h,
            stride_w,
            BLOCK_D,
            COMPUTE_DH,
            COMPUTE_DW,
            DOT_PRECISION,
        )


@triton.jit
def _topk_kernel(
    h_ptr,
    w_ptr,
    values_ptr,
    indices_ptr,
    N,
    V,
    D,
    stride_h,
    stride_w,
    inv_tau,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """values/indices [N, K]: the K largest log-probs of each row (K a power of two)."""
    pid_n = tl.program_id(0)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    best = tl.zeros((BLOCK_N, K), tl.uint64)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        z = tile_logits(
            h_ptr,
            w_ptr,
            rows,
            cols,
            row_ok,
            col_ok,
            D,
            stride_h,
            stride_w,
            inv_tau,
            BLOCK_N,
            BLOCK_V,
            BLOCK_D,
            DOT_PRECISION,
        )
        z = tl.where(col_ok[None, :], z, float("-inf"))
        new_m = tl.maximum(m, tl.max(z, axis=1))
        s = s * tl.exp(m - new_m) + tl.sum(tl.exp(z - new_m[:, None]), axis=1)
        m = new_m
        # Order-preserving map of fp32 bits to uint32: flip all bits of negatives, the sign of the rest.
        bits = z.to(tl.uint32, bitcast=True)
        ordered = tl.where((bits >> 31) != 0, ~bits, bits | 0x80000000)
        keys = (ordered.to(tl.uint64) << 32) | (~cols.to(tl.uint32)).to(tl.uint64)[None, :]
        keys = tl.where(col_ok[None, :], keys, 0)
        # Sorting is the expensive part: merge only tiles where some row has a key above its
        # current k-th best (after the first tiles, most tiles of a large vocabulary do not).
        improves = tl.max(keys, axis=1) > tl.min(best, axis=1)
        if tl.max(improves.to(tl.int32), axis=0) > 0:
            tile_best = tl.topk(keys, K, dim=1)
            both = tl.reshape(tl.join(best, tile_best), (BLOCK_N, 2 * K))
            best = tl.topk(both, K, dim=1)
    lse = m + tl.log(s)
    ordered = (best >> 32).to(tl.uint32)
    bits = tl.where((ordered >> 31) != 0, ordered & 0x7FFFFFFF, ~ordered)
    values = bits.to(tl.float32, bitcast=True) - lse[:, None]
    indices = ~(best & 0xFFFFFFFF).to(tl.uint32)
    offs_k = tl.arange(0, K)
    out = rows[:, None].to(tl.int64) * K + offs_k[None, :]
    tl.store(values_ptr + out, values, mask=row_ok[:, None])
    tl.store(indices_ptr + out, indices.to(tl.int32), mask=row_ok[:, None])


# ---------------------------------------------------------------------------------------
# Shipped configurations
# ---------------------------------------------------------------------------------------

# The fp32 rows are also clean (no stack frame) under Triton 3.6, the oldest Triton the GPU image
# has: there, 2 forward stages give the entropy variant a 16-byte stack on sm_90, and 1 top-k
# stage a 24-byte one for k = 1.
FWD_CONFIGS = {
    torch.bfloat16: TileConfig(block_n=128, block_v=128, block_d=64, num_warps=8, num_stages=3),
    torch.float16: TileConfig(block_n=128, block_v=128, block_d=64, num_warps=8, num_stages=3),
    torch.float32: TileConfig(block_n=64, block_v=64, block_d=32, num_warps=8, num_stages=1),
}
BWD_CONFIGS = {
    torch.bfloat16: TileConfig(block_n=64, block_v=128, block_d=64, num_warps=8, num_stages=2),
    torch.float16: TileConfig(block_n=64, block_v=128, block_d=64, num_warps=8, num_stages=2),
    torch.float32: TileConfig(block_n=32, block_v=64, block_d=32, num_warps=4, num_stages=1),
}
TOPK_CONFIGS = {
    torch.bfloat16: TileConfig(block_n=32, block_v=128, block_d=64, num_warps=8, num_stages=2),
    torch.float16: TileConfig(block_n=32, block_v=128, block_d=64, num_warps=8, num_stages=2),
    torch.float32: TileConfig(block_n=32, block_v=64, block_d=32, num_warps=8, num_stages=2),
}


def _pow2_at_least(k: int) -> int:
    return 1 << max(0, (k - 1).bit_length())


# ---------------------------------------------------------------------------------------
# Host functions (same contracts as logprobs_torch; params.chunk_size is not used: no chunks)
# ---------------------------------------------------------------------------------------


def logsumexp_stats_triton(h, W, params: LogprobParams):
    n, vocab = h.shape[0], W.shape[0]
    inv_tau, with_mean = params.inv_tau, params.return_entropy
    if n == 0:  # no tokens: nothing to launch (an empty grid, and no splits to size)
        empty = torch.empty(0, dtype=torch.float32, device=h.device)
        return empty, (empty if with_mean else None)
    cfg = FWD_CONFIGS[h.dtype]
    splits, tiles_per_split = vocab_splits(n, vocab, cfg.block_n, cfg.block_v, h.device)
    parts = torch.empty((2, splits, n), dtype=torch.float32, device=h.device)
    _lse_fwd_kernel[(triton.cdiv(n, cfg.block_n), splits)](
        h,
        W,
        parts,
        n,
        vocab,
        h.shape[1],
        h.stride(0),
        W.stride(0),
        inv_tau,
        tiles_per_split,
        BLOCK_N=cfg.block_n,
        BLOCK_V=cfg.block_v,
        BLOCK_D=cfg.block_d,
        WITH_MEAN=with_mean,
        DOT_PRECISION=dot_precision(h.dtype),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    if not with_mean:
        return torch.logsumexp(parts[0], dim=0), None
    return combine_split_entropy(parts[0], parts[1])


def softmax_grads_triton(h, W, lse, entropy, grad_lp, grad_entropy, params: KernelParams):
    n, vocab = h.shape[0], W.shape[0]
    inv_tau, need_dh, need_dw = params.inv_tau, params.need_dh, params.need_dw
    dh = torch.zeros(h.shape, dtype=torch.float32, device=h.device) if need_dh else None
    dW = torch.zeros(W.shape, dtype=torch.float32, device=h.device) if need_dw else None
    if n == 0:
        return dh, dW
    cfg = BWD_CONFIGS[h.dtype]
    grid = (triton.cdiv(n, cfg.block_n) * triton.cdiv(vocab, cfg.block_v),)
    has_entropy_grad = grad_entropy is not None
    _softmax_bwd_kernel[grid](
        h,
        W,
        lse,
        entropy if has_entropy_grad else lse,
        grad_lp,
        grad_entropy if has_entropy_grad else grad_lp,
        dh if need_dh else lse,
        dW if need_dw else lse,  # placeholders are never touched
        n,
        vocab,
        h.shape[1],
        h.stride(0),
        W.stride(0),
        inv_tau,
        BLOCK_N=cfg.block_n,
        BLOCK_V=cfg.block_v,
        BLOCK_D=cfg.block_d,
        GROUP_V=cfg.group_v,
        HAS_ENTROPY_GRAD=has_entropy_grad,
        COMPUTE_DH=need_dh,
        COMPUTE_DW=need_dw,
        DOT_PRECISION=dot_precision(h.dtype),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return dh, dW


def topk_triton(h, W, k, params: KernelParams):
    n, vocab = h.shape[0], W.shape[0]
    inv_tau = params.inv_tau
    cfg = TOPK_CONFIGS[h.dtype]
    padded_k = _pow2_at_least(k)
    block_v = max(cfg.block_v, padded_k)
    values = torch.empty((n, padded_k), dtype=torch.float32, device=h.device)
    indices = torch.empty((n, padded_k), dtype=torch.int32, device=h.device)
    if n == 0:
        return values[:, :k], indices[:, :k].long()
    _topk_kernel[(triton.cdiv(n, cfg.block_n),)](
        h,
        W,
        values,
        indices,
        n,
        vocab,
        h.shape[1],
        h.stride(0),
        W.stride(0),
        inv_tau,
        BLOCK_N=cfg.block_n,
        BLOCK_V=block_v,
        BLOCK_D=cfg.block_d,
        K=padded_k,
        DOT_PRECISION=dot_precision(h.dtype),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return values[:, :k], indices[:, :k].long()


def kernel_specs():
    from ._aot import KernelSpec, triton_type

    dims = {"N": "i32", "V": "i32", "D": "i32", "stride_h": "i32", "stride_w": "i32", "inv_tau": "fp32"}
    aligned = ("h_ptr", "w_ptr", "stride_h", "stride_w")
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        ty = triton_type(dtype)
        mats = {"h_ptr": f"*{ty}", "w_ptr": f"*{ty}"}
        cfg = FWD_CONFIGS[dtype]
        for with_mean in (False, True):
            yield KernelSpec(
                name=f"logprob_fused_fwd[{ty}{',entropy' if with_mean else ''}]",
                kernel=_lse_fwd_kernel,
                signature={
                    **mats,
                    "part_ptr": "*fp32",
                    **dims,
                    "tiles_per_split": "i32",
                    "BLOCK_N": "constexpr",
                    "BLOCK_V": "constexpr",
                    "BLOCK_D": "constexpr",
                    "WITH_MEAN": "constexpr",
                    "DOT_PRECISION": "constexpr",
                },
                constexprs={
                    "BLOCK_N": cfg.block_n,
                    "BLOCK_V": cfg.block_v,
                    "BLOCK_D": cfg.block_d,
                    "WITH_MEAN": with_mean,
                    "DOT_PRECISION": dot_precision(dtype),
                },
                num_warps=cfg.num_warps,
                num_stages=cfg.num_stages,
                expects_tensor_cores=dtype != torch.float32,
                divisible_by_16=aligned + ("part_ptr",),
            )
        cfg = BWD_CONFIGS[dtype]
        for entropy_grad in (False, True):
            yield KernelSpec(
                name=f"logprob_fused_bwd[{ty}{',entropy' if entropy_grad else ''}]",
                kernel=_softmax_bwd_kernel,
                signature={
                    **mats,
                    "lse_ptr": "*fp32",
                    "entropy_ptr": "*fp32",
                    "grad_lp_ptr": "*fp32",
                    "grad_entropy_ptr": "*fp32",
                    "dh_ptr": "*fp32",
                    "dw_ptr": "*fp32",
                    **dims,
                    "BLOCK_N": "constexpr",
                    "BLOCK_V": "constexpr",
                    "BLOCK_D": "constexpr",
                    "GROUP_V": "constexpr",
                    "HAS_ENTROPY_GRAD": "constexpr",
                    "COMPUTE_DH": "constexpr",
                    "COMPUTE_DW": "constexpr",
                    "DOT_PRECISION": "constexpr",
                },
                constexprs={
                    "BLOCK_N": cfg.block_n,
                    "BLOCK_V": cfg.block_v,
                    "BLOCK_D": cfg.block_d,
                    "GROUP_V": cfg.group_v,
                    "HAS_ENTROPY_GRAD": entropy_grad,
                    "COMPUTE_DH": True,
                    "COMPUTE_DW": True,
                    "DOT_PRECISION": dot_precision(dtype),
                },
                num_warps=cfg.num_warps,
                num_stages=cfg.num_stages,
                expects_tensor_cores=dtype != torch.float32,
                divisible_by_16=aligned
                + ("lse_ptr", "entropy_ptr", "grad_lp_ptr", "grad_entropy_ptr", "dh_ptr", "dw_ptr"),
            )
        cfg = TOPK_CONFIGS[dtype]
        for k in (1, 8, MAX_TOPK):
            yield KernelSpec(
                name=f"topk[{ty},k={k}]",
                kernel=_topk_kernel,
                signature={
                    **mats,
                    "values_ptr": "*fp32",
                    "indices_ptr": "*i32",
                    **dims,
                    "BLOCK_N": "constexpr",
                    "BLOCK_V": "constexpr",
                    "BLOCK_D": "constexpr",
                    "K": "constexpr",
                    "DOT_PRECISION": "constexpr",
                },
                constexprs={
                    "BLOCK_N": cfg.block_n,
                    "BLOCK_V": max(cfg.block_v, k),
                    "BLOCK_D": cfg.block_d,
                    "K": k,
                    "DOT_PRECISION": dot_precision(dtype),
                },
                num_warps=cfg.num_warps,
                num_stages=cfg.num_stages,
                expects_tensor_cores=dtype != torch.float32,
                divisible_by_16=aligned + ("values_ptr", "indices_ptr"),
            )
