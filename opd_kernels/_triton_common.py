"""Triton building blocks shared by the fused kernels of every op."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._validation import triton_interpreting

# Triton 3.9's interpreter computes tl.dot on bf16/fp16 operands wrongly (garbage of order
# 1e10); under the interpreter the operands are upcast, which is exact (a 16-bit product is
# exact in fp32) and is what the tensor cores compute. Compiled kernels never take this path.
# (An inline `if` rather than a helper: each nested jit call costs ~1 ms in the interpreter.)
_UPCAST_DOT_OPERANDS = tl.constexpr(triton_interpreting())


@triton.jit
def tile_logits(
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
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """[BLOCK_N, BLOCK_V] tile of (h W^T) / tau, fp32 accumulation over D."""
    offs_d = tl.arange(0, BLOCK_D)
    h_ptrs = h_ptr + rows[:, None].to(tl.int64) * stride_h + offs_d[None, :]
    w_ptrs = w_ptr + cols[:, None].to(tl.int64) * stride_w + offs_d[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d_ok = (d0 + offs_d) < D
        h = tl.load(h_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        if _UPCAST_DOT_OPERANDS:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, tl.trans(w), acc, input_precision=DOT_PRECISION)
        h_ptrs += BLOCK_D
        w_ptrs += BLOCK_D
    return acc * inv_tau


@triton.jit
def tile_program_ids(N, V, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, GROUP_V: tl.constexpr):
    """(token block, vocabulary block) of this program in a 1-D grid over all tiles.

    GROUP_V vocabulary blocks sweep all token blocks together so W tiles stay in L2.
    """
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    num_v = tl.cdiv(V, BLOCK_V)
    per_group = GROUP_V * num_n
    first_v = (pid // per_group) * GROUP_V
    group_size = tl.minimum(num_v - first_v, GROUP_V)
    pid_v = first_v + (pid % per_group) % group_size
    pid_n = (pid % per_group) // group_size
    return pid_n, pid_v


@triton.jit
def scatter_logit_grads(
    g,
    h_ptr,
    w_ptr,
    dh_ptr,
    dw_ptr,
    rows,
    cols,
    row_ok,
    col_ok,
    D,
    stride_h,
    stride_w,
    BLOCK_D: tl.constexpr,
    COMPUTE_DH: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Given g = dL/dz for one [BLOCK_N, BLOCK_V] tile (fp32), add g W into dh and g^T h into dW.

    dh [N, D] and dW [V, D] are contiguous fp32 accumulators, updated with atomics.
    """
    g = g.to(h_ptr.dtype.element_ty)
    if _UPCAST_DOT_OPERANDS:
        g = g.to(tl.float32)
    offs_d = tl.arange(0, BLOCK_D)
    if COMPUTE_DH:
        w_ptrs = w_ptr + cols[:, None].to(tl.int64) * stride_w + offs_d[None, :]
        dh_ptrs = dh_ptr + rows[:, None].to(tl.int64) * D + offs_d[None, :]
        for d0 in range(0, D, BLOCK_D):
            d_ok = (d0 + offs_d) < D
            w = tl.load(w_ptrs, mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            if _UPCAST_DOT_OPERANDS:
                w = w.to(tl.float32)
            part = tl.dot(g, w, input_precision=DOT_PRECISION)
            tl.atomic_add(dh_ptrs, part, mask=row_ok[:, None] & d_ok[None, :], sem="relaxed")
            w_ptrs += BLOCK_D
            dh_ptrs += BLOCK_D
    if COMPUTE_DW:
        h_ptrs = h_ptr + rows[:, None].to(tl.int64) * stride_h + offs_d[None, :]
        dw_ptrs = dw_ptr + cols[:, None].to(tl.int64) * D + offs_d[None, :]
        g_t = tl.trans(g)
        for d0 in range(0, D, BLOCK_D):
            d_ok = (d0 + offs_d) < D
            h = tl.load(h_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            if _UPCAST_DOT_OPERANDS:
                h = h.to(tl.float32)
            part = tl.dot(g_t, h, input_precision=DOT_PRECISION)
            tl.atomic_add(dw_ptrs, part, mask=col_ok[:, None] & d_ok[None, :], sem="relaxed")
            h_ptrs += BLOCK_D
            dw_ptrs += BLOCK_D


@dataclass(frozen=True)
class TileConfig:
    block_n: int
    block_v: int
    block_d: int
    num_warps: int
    num_stages: int
    group_v: int = 8


def dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: a few splits so the combine path is exercised


def vocab_splits(n_rows: int, vocab: int, block_n: int, block_v: int, device: torch.device) -> tuple[int, int]:
    """(splits, tiles per split) so that token blocks x splits fill the GPU twice over."""
    num_n = max(1, triton.cdiv(n_rows, block_n))  # callers launch nothing for 0 rows; never divide by 0
    num_tiles = triton.cdiv(vocab, block_v)
    want = max(1, min(num_tiles, triton.cdiv(2 * num_sms(device), num_n)))
    tiles_per_split = triton.cdiv(num_tiles, want)
    return triton.cdiv(num_tiles, tiles_per_split), tiles_per_split  # every split owns >= 1 tile


def combine_split_entropy(lse_parts: torch.Tensor, entropy_parts: torch.Tensor):
    """Merge per-split (logsumexp, entropy of the split-local softmax) along dim 0: (lse, entropy).

    With w_k = exp(lse_k - lse) the splits' shares of the mass, H = sum_k w_k H_k - sum_k w_k log w_k:
    two sums of non-negative terms, nothing cancels."""
    lse = torch.logsumexp(lse_parts, dim=0)
    log_w = lse_parts - lse
    w = torch.exp(log_w)
    # a split without mass (w = 0) adds nothing, whatever its entropy holds
    terms = torch.where(w > 0, w * (entropy_parts - log_w), 0.0)
    return lse, terms.sum(dim=0)


def combine_split_stats(lse_parts: torch.Tensor, mean_parts: torch.Tensor):
    """Merge per-split (logsumexp, mean of x under the split-local softmax) along dim 0."""
    lse = torch.logsumexp(lse_parts, dim=0)
    return lse, (torch.softmax(lse_parts, dim=0) * mean_parts).sum(dim=0)
