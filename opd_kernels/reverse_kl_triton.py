"""Triton reverse KL, two schedules.

chunked: per token chunk of C rows, cuBLAS writes both models' logits in fp32 ([C, V]
each), ONE Triton row kernel turns them into lse_s, lse_t, rkl and the logit gradient g
(in the input dtype, in a [C, V] buffer), and two more cuBLAS matmuls give dh = g W_s
and dW += g^T h_s (fp32 accumulator). Extra memory: C * V * (8 + itemsize) bytes plus the
fp32 gradient accumulators, N * D_s * 4 and V * D_s * 4 bytes. HBM traffic per element of
the [C, V] chunk: cuBLAS writes 8 B of logits, the row kernel reads 16 B (two passes over
both rows) and writes itemsize, the gradient matmuls read g twice: about 30 B for bf16,
against 2 (D_s + D_t) + 4 D_s flop of matmul. At D_s = D_t = 4096 that is ~1,100 flop/B,
above an H100's ~295 flop/B balance: the schedule stays matmul-bound, the memory passes
costing up to a quarter of the matmul time where they do not overlap.

fused: logits never leave the chip. The forward kernel is a GEMM with an online
logsumexp epilogue (grid: token blocks x vocabulary splits, partial statistics combined
in torch, 3 floats per token and split); the backward kernel recomputes each
[BLOCK_N, BLOCK_V] tile of both models, forms g and adds g W_s into dh and g^T h_s into
dW with fp32 atomics. Extra memory: the fp32 accumulators only. Token blocks whose
weights are all zero (masked prompt tokens) are skipped exactly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._matmul import addmm_acc_, mm_acc
from ._params import KernelParams
from ._triton_common import (
    TileConfig,
    combine_split_stats,
    dot_precision,
    scatter_logit_grads,
    tile_logits,
    tile_program_ids,
    vocab_splits,
)

# ---------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------


@triton.jit
def _rkl_row_kernel(
    zs_ptr,
    zt_ptr,
    stride_zs,
    stride_zt,
    weight_ptr,
    rkl_ptr,
    g_ptr,
    stride_g,
    V,
    inv_tau,
    WRITE_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """One token row of fp32 logits -> rkl (and g = w p (log p - log q - rkl) / tau)."""
    row = tl.program_id(0).to(tl.int64)
    zs_row = zs_ptr + row * stride_zs
    zt_row = zt_ptr + row * stride_zt
    offs = tl.arange(0, BLOCK_V)
    m_s = tl.full((), float("-inf"), tl.float32)
    m_t = tl.full((), float("-inf"), tl.float32)
    s_s = tl.zeros((), tl.float32)
    s_t = tl.zeros((), tl.float32)
    a = tl.zeros((), tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + offs
        ok = cols < V
        zs = tl.load(zs_row + cols, mask=ok, other=float("-inf")) * inv_tau
        zt = tl.load(zt_row + cols, mask=ok, other=float("-inf")) * inv_tau
        new_m_s = tl.maximum(m_s, tl.max(zs, axis=0))
        new_m_t = tl.maximum(m_t, tl.max(zt, axis=0))
        e_s = tl.exp(zs - new_m_s)
        rescale_s = tl.exp(m_s - new_m_s)
        a = a * rescale_s + tl.sum(tl.where(ok, e_s * (zs - zt), 0.0), axis=0)
        s_s = s_s * rescale_s + tl.sum(e_s, axis=0)
        s_t = s_t * tl.exp(m_t - new_m_t) + tl.sum(tl.exp(zt - new_m_t), axis=0)
        m_s = new_m_s
        m_t = new_m_t
    lse_s = m_s + tl.log(s_s)
    lse_t = m_t + tl.log(s_t)
    rkl = a / s_s - lse_s + lse_t
    w = tl.load(weight_ptr + row)
    active = w != 0
    tl.store(rkl_ptr + row, tl.where(active, rkl, 0.0))
    if WRITE_GRAD:
        scale = tl.where(active, w * inv_tau, 0.0)
        g_row = g_ptr + row * stride_g
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + offs
            ok = cols < V
            log_p = tl.load(zs_row + cols, mask=ok, other=0.0) * inv_tau - lse_s
            log_q = tl.load(zt_row + cols, mask=ok, other=0.0) * inv_tau - lse_t
            g = tl.exp(log_p) * (log_p - log_q - rkl) * scale
            g = tl.where(active, g, 0.0)
            tl.store(g_row + cols, g.to(g_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _rkl_fwd_fused_kernel(
    hs_ptr,
    ws_ptr,
    ht_ptr,
    wt_ptr,
    weight_ptr,
    part_ptr,
    N,
    V,
    DS,
    DT,
    stride_hs,
    stride_ws,
    stride_ht,
    stride_wt,
    inv_tau,
    tiles_per_split,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Partial statistics of one token block over one vocabulary split.

    part [3, splits, N]: lse_s over the split, E_p[z_s - z_t] under the split-local
    student distribution, lse_t over the split.
    """
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    w = tl.load(weight_ptr + rows, mask=row_ok, other=0.0)
    m_s = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    m_t = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s_s = tl.zeros((BLOCK_N,), tl.float32)
    s_t = tl.zeros((BLOCK_N,), tl.float32)
    a = tl.zeros((BLOCK_N,), tl.float32)
    if tl.max(tl.abs(w), axis=0) > 0:
        v_begin = split * tiles_per_split * BLOCK_V
        v_end = tl.minimum(v_begin + tiles_per_split * BLOCK_V, V)
        for v0 in range(v_begin, v_end, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            col_ok = cols < V
            zs = tile_logits(
                hs_ptr,
                ws_ptr,
                rows,
                cols,
                row_ok,
                col_ok,
                DS,
                stride_hs,
                stride_ws,
                inv_tau,
                BLOCK_N,
                BLOCK_V,
                BLOCK_D,
                DOT_PRECISION,
            )
            zt = tile_logits(
                ht_ptr,
                wt_ptr,
                rows,
                cols,
                row_ok,
                col_ok,
                DT,
                stride_ht,
                stride_wt,
                inv_tau,
                BLOCK_N,
                BLOCK_V,
                BLOCK_D,
                DOT_PRECISION,
            )
            zs = tl.where(col_ok[None, :], zs, float("-inf"))
            zt = tl.where(col_ok[None, :], zt, float("-inf"))
            new_m_s = tl.maximum(m_s, tl.max(zs, axis=1))
            new_m_t = tl.maximum(m_t, tl.max(zt, axis=1))
            e_s = tl.exp(zs - new_m_s[:, None])
            rescale_s = tl.exp(m_s - new_m_s)
            diff = tl.where(col_ok[None, :], zs - zt, 0.0)
            a = a * rescale_s + tl.sum(e_s * diff, axis=1)
            s_s = s_s * rescale_s + tl.sum(e_s, axis=1)
            s_t = s_t * tl.exp(m_t - new_m_t) + tl.sum(tl.exp(zt - new_m_t[:, None]), axis=1)
            m_s = new_m_s
            m_t = new_m_t
    out = part_ptr + split.to(tl.int64) * N + rows
    stride_part = num_splits.to(tl.int64) * N
    tl.store(out, m_s + tl.log(s_s), mask=row_ok)
    tl.store(out + stride_part, a / s_s, mask=row_ok)
    tl.store(out + 2 * stride_part, m_t + tl.log(s_t), mask=row_ok)


@triton.jit
def _rkl_bwd_fused_kernel(
    hs_ptr,
    ws_ptr,
    ht_ptr,
    wt_ptr,
    scale_ptr,
    lse_s_ptr,
    lse_t_ptr,
    rkl_ptr,
    dh_ptr,
    dw_ptr,
    N,
    V,
    DS,
    DT,
    stride_hs,
    stride_ws,
    stride_ht,
    stride_wt,
    inv_tau,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP_V: tl.constexpr,
    COMPUTE_DH: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Recompute one [BLOCK_N, BLOCK_V] tile, form g, add g W_s into dh and g^T h_s into dW."""
    pid_n, pid_v = tile_program_ids(N, V, BLOCK_N, BLOCK_V, GROUP_V)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < N
    col_ok = cols < V
    scale = tl.load(scale_ptr + rows, mask=row_ok, other=0.0)
    if tl.max(tl.abs(scale), axis=0) > 0:
        zs = tile_logits(
            hs_ptr,
            ws_ptr,
            rows,
            cols,
            row_ok,
            col_ok,
            DS,
            stride_hs,
            stride_ws,
            inv_tau,
            BLOCK_N,
            BLOCK_V,
            BLOCK_D,
            DOT_PRECISION,
        )
        zt = tile_logits(
            ht_ptr,
            wt_ptr,
            rows,
            cols,
            row_ok,
            col_ok,
            DT,
            stride_ht,
            stride_wt,
            inv_tau,
            BLOCK_N,
            BLOCK_V,
            BLOCK_D,
            DOT_PRECISION,
        )
        lse_s = tl.load(lse_s_ptr + rows, mask=row_ok, other=0.0)
        lse_t = tl.load(lse_t_ptr + rows, mask=row_ok, other=0.0)
        rkl = tl.load(rkl_ptr + rows, mask=row_ok, other=0.0)
        log_p = zs - lse_s[:, None]
        log_q = zt - lse_t[:, None]
        g = tl.exp(log_p) * (log_p - log_q - rkl[:, None]) * scale[:, None]
        live_rows = row_ok & (scale != 0)
        live = live_rows[:, None] & col_ok[None, :]
        # Masked rows of a partially masked block may hold NaN/inf (padding): passing live_rows
        # as the row mask loads their h as 0 (0 * NaN would be NaN in g^T h) and leaves their
        # dh at its zero initial value.
        scatter_logit_grads(
            tl.where(live, g, 0.0),
            hs_ptr,
            ws_ptr,
            dh_ptr,
            dw_ptr,
            rows,
            cols,
            live_rows,
            col_ok,
            DS,
            stride_hs,
            stride_ws,
            BLOCK_D,
            COMPUTE_DH,
            COMPUTE_DW,
            DOT_PRECISION,
        )


# ---------------------------------------------------------------------------------------
# Shipped configurations (also compiled ahead of time by tests and `opd_kernels.report`)
# ---------------------------------------------------------------------------------------


ROW_BLOCK_V = 2048
ROW_NUM_WARPS = 8

# Keyed by input dtype. fp32 inputs use exact fp32 dots (no TF32), so smaller tiles; the fp32
# forward uses 8 warps: with 4, Triton 3.6's ptxas gives it an 8-byte stack frame on sm_80.
FWD_CONFIGS = {
    torch.bfloat16: TileConfig(block_n=64, block_v=128, block_d=64, num_warps=8, num_stages=3),
    torch.float16: TileConfig(block_n=64, block_v=128, block_d=64, num_warps=8, num_stages=3),
    torch.float32: TileConfig(block_n=32, block_v=64, block_d=32, num_warps=8, num_stages=2),
}
BWD_CONFIGS = {
    torch.bfloat16: TileConfig(block_n=64, block_v=128, block_d=64, num_warps=8, num_stages=2),
    torch.float16: TileConfig(block_n=64, block_v=128, block_d=64, num_warps=8, num_stages=2),
    torch.float32: TileConfig(block_n=32, block_v=64, block_d=32, num_warps=4, num_stages=1),
}


# ---------------------------------------------------------------------------------------
# Schedules (same contract as reverse_kl_torch.reverse_kl_torch)
# ---------------------------------------------------------------------------------------


def chunk_logit_bytes(dtype: torch.dtype) -> int:
    """Bytes the chunked schedule holds per logit of a chunk: both models' fp32 logits and g in the input dtype."""
    return 8 + dtype.itemsize


def reverse_kl_triton_chunked(h_s, W_s, h_t, W_t, weights, params: KernelParams):
    n, vocab = h_s.shape[0], W_s.shape[0]
    device = h_s.device
    chunk = min(params.tokens_per_chunk(vocab, h_s.shape[1], chunk_logit_bytes(h_s.dtype)), max(n, 1))
    inv_tau, need_dh, need_dw, need_grad = params.inv_tau, params.need_dh, params.need_dw, params.need_grad
    rkl = torch.empty(n, dtype=torch.float32, device=device)
    dh = torch.empty(h_s.shape, dtype=torch.float32, device=device) if need_dh else None
    dW = torch.zeros(W_s.shape, dtype=torch.float32, device=device) if need_dw else None
    g_buffer = torch.empty((chunk, vocab), dtype=h_s.dtype, device=device) if need_grad else None
    active = weights[:, None] != 0
    for r0 in range(0, n, chunk):
        r1 = min(r0 + chunk, n)
        hs, ht = h_s[r0:r1], h_t[r0:r1]
        if need_dw:
            # The row kernel writes g = 0 on masked rows, but 0 * NaN = NaN in g^T h_s: masked
            # rows (padding) that hold NaN/inf are selected away before they reach dW.
            hs = torch.where(active[r0:r1], hs, 0.0)
        z_s = mm_acc(hs, W_s.t())
        z_t = mm_acc(ht, W_t.t())
        g = g_buffer[: r1 - r0] if need_grad else z_s  # g unused when WRITE_GRAD is off
        _rkl_row_kernel[(r1 - r0,)](
            z_s,
            z_t,
            z_s.stride(0),
            z_t.stride(0),
            weights[r0:r1],
            rkl[r0:r1],
            g,
            g.stride(0),
            vocab,
            inv_tau,
            WRITE_GRAD=need_grad,
            BLOCK_V=ROW_BLOCK_V,
            num_warps=ROW_NUM_WARPS,
        )
        del z_s, z_t
        if need_dh:
            dh[r0:r1] = mm_acc(g, W_s)
        if need_dw:
            addmm_acc_(dW, g.t(), hs)
    return rkl, dh, dW


def _fused_stats(h_s, W_s, h_t, W_t, weights, inv_tau):
    n, vocab = h_s.shape[0], W_s.shape[0]
    cfg = FWD_CONFIGS[h_s.dtype]
    num_n = triton.cdiv(n, cfg.block_n)
    splits, tiles_per_split = vocab_splits(n, vocab, cfg.block_n, cfg.block_v, h_s.device)
    parts = torch.empty((3, splits, n), dtype=torch.float32, device=h_s.device)
    _rkl_fwd_fused_kernel[(num_n, splits)](
        h_s,
        W_s,
        h_t,
        W_t,
        weights,
        parts,
        n,
        vocab,
        h_s.shape[1],
        h_t.shape[1],
        h_s.stride(0),
        W_s.stride(0),
        h_t.stride(0),
        W_t.stride(0),
        inv_tau,
        tiles_per_split,
        BLOCK_N=cfg.block_n,
        BLOCK_V=cfg.block_v,
        BLOCK_D=cfg.block_d,
        DOT_PRECISION=dot_precision(h_s.dtype),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    lse_s_parts, mean_diff_parts, lse_t_parts = parts.unbind(0)
    lse_s, mean_diff = combine_split_stats(lse_s_parts, mean_diff_parts)
    lse_t = torch.logsumexp(lse_t_parts, dim=0)
    active = weights != 0
    rkl = torch.where(active, mean_diff - lse_s + lse_t, 0.0)
    return lse_s, lse_t, rkl


def reverse_kl_triton_fused(h_s, W_s, h_t, W_t, weights, params: KernelParams):
    """params.chunk_size is not used: the fused schedule holds no [tokens, vocab] buffer to size."""
    n, vocab = h_s.shape[0], W_s.shape[0]
    device = h_s.device
    inv_tau, need_dh, need_dw = params.inv_tau, params.need_dh, params.need_dw
    if n == 0:
        rkl = torch.zeros(0, dtype=torch.float32, device=device)
    else:
        lse_s, lse_t, rkl = _fused_stats(h_s, W_s, h_t, W_t, weights, inv_tau)
    dh = torch.zeros(h_s.shape, dtype=torch.float32, device=device) if need_dh else None
    dW = torch.zeros(W_s.shape, dtype=torch.float32, device=device) if need_dw else None
    if (need_dh or need_dw) and n > 0:
        cfg = BWD_CONFIGS[h_s.dtype]
        scale = torch.where(weights != 0, weights * inv_tau, 0.0)
        grid = (triton.cdiv(n, cfg.block_n) * triton.cdiv(vocab, cfg.block_v),)
        _rkl_bwd_fused_kernel[grid](
            h_s,
            W_s,
            h_t,
            W_t,
            scale,
            lse_s,
            lse_t,
            rkl,
            dh if need_dh else scale,
            dW if need_dw else scale,  # placeholders never touched
            n,
            vocab,
            h_s.shape[1],
            h_t.shape[1],
            h_s.stride(0),
            W_s.stride(0),
            h_t.stride(0),
            W_t.stride(0),
            inv_tau,
            BLOCK_N=cfg.block_n,
            BLOCK_V=cfg.block_v,
            BLOCK_D=cfg.block_d,
            GROUP_V=cfg.group_v,
            COMPUTE_DH=need_dh,
            COMPUTE_DW=need_dw,
            DOT_PRECISION=dot_precision(h_s.dtype),
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
    return rkl, dh, dW


# ---------------------------------------------------------------------------------------
# Ahead-of-time specs: exactly the configurations launched above
# ---------------------------------------------------------------------------------------


def kernel_specs():
    from ._aot import KernelSpec, triton_type

    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        ty = triton_type(dtype)
        for write_grad in (True, False):
            yield KernelSpec(
                name=f"rkl_row[{ty}{',grad' if write_grad else ''}]",
                kernel=_rkl_row_kernel,
                signature={
                    "zs_ptr": "*fp32",
                    "zt_ptr": "*fp32",
                    "stride_zs": "i32",
                    "stride_zt": "i32",
                    "weight_ptr": "*fp32",
                    "rkl_ptr": "*fp32",
                    "g_ptr": f"*{ty}",
                    "stride_g": "i32",
                    "V": "i32",
                    "inv_tau": "fp32",
                    "WRITE_GRAD": "constexpr",
                    "BLOCK_V": "constexpr",
                },
                constexprs={"WRITE_GRAD": write_grad, "BLOCK_V": ROW_BLOCK_V},
                num_warps=ROW_NUM_WARPS,
                num_stages=1,
                divisible_by_16=("zs_ptr", "zt_ptr", "weight_ptr", "rkl_ptr", "g_ptr"),
            )
        matrices = {"hs_ptr": f"*{ty}", "ws_ptr": f"*{ty}", "ht_ptr": f"*{ty}", "wt_ptr": f"*{ty}"}
        dims = {
            "N": "i32",
            "V": "i32",
            "DS": "i32",
            "DT": "i32",
            "stride_hs": "i32",
            "stride_ws": "i32",
            "stride_ht": "i32",
            "stride_wt": "i32",
            "inv_tau": "fp32",
        }
        aligned = ("hs_ptr", "ws_ptr", "ht_ptr", "wt_ptr", "stride_hs", "stride_ws", "stride_ht", "stride_wt")
        cfg = FWD_CONFIGS[dtype]
        yield KernelSpec(
            name=f"rkl_fused_fwd[{ty}]",
            kernel=_rkl_fwd_fused_kernel,
            signature={
                **matrices,
                "weight_ptr": "*fp32",
                "part_ptr": "*fp32",
                **dims,
                "tiles_per_split": "i32",
                "BLOCK_N": "constexpr",
                "BLOCK_V": "constexpr",
                "BLOCK_D": "constexpr",
                "DOT_PRECISION": "constexpr",
            },
            constexprs={
                "BLOCK_N": cfg.block_n,
                "BLOCK_V": cfg.block_v,
                "BLOCK_D": cfg.block_d,
                "DOT_PRECISION": dot_precision(dtype),
            },
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
            expects_tensor_cores=dtype != torch.float32,
            divisible_by_16=aligned + ("weight_ptr", "part_ptr"),
        )
        cfg = BWD_CONFIGS[dtype]
        for compute_dw in (True, False):
            yield KernelSpec(
                name=f"rkl_fused_bwd[{ty},{'dh+dw' if compute_dw else 'dh'}]",
                kernel=_rkl_bwd_fused_kernel,
                signature={
                    **matrices,
                    "scale_ptr": "*fp32",
                    "lse_s_ptr": "*fp32",
                    "lse_t_ptr": "*fp32",
                    "rkl_ptr": "*fp32",
                    "dh_ptr": "*fp32",
                    "dw_ptr": "*fp32",
                    **dims,
                    "BLOCK_N": "constexpr",
                    "BLOCK_V": "constexpr",
                    "BLOCK_D": "constexpr",
                    "GROUP_V": "constexpr",
                    "COMPUTE_DH": "constexpr",
                    "COMPUTE_DW": "constexpr",
                    "DOT_PRECISION": "constexpr",
                },
                constexprs={
                    "BLOCK_N": cfg.block_n,
                    "BLOCK_V": cfg.block_v,
                    "BLOCK_D": cfg.block_d,
                    "GROUP_V": cfg.group_v,
                    "COMPUTE_DH": True,
                    "COMPUTE_DW": compute_dw,
                    "DOT_PRECISION": dot_precision(dtype),
                },
                num_warps=cfg.num_warps,
                num_stages=cfg.num_stages,
                expects_tensor_cores=dtype != torch.float32,
                divisible_by_16=aligned + ("scale_ptr", "lse_s_ptr", "lse_t_ptr", "rkl_ptr", "dh_ptr", "dw_ptr"),
            )
