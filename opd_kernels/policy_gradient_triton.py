"""Triton row kernels of fused_policy_gradient_loss's chunked schedule (``backend="triton"``).

The schedule is :func:`opd_kernels.logprobs_torch.terminal_logprobs`, as on the torch backend:
per token chunk cuBLAS writes the fp32 logits [C, V], a row kernel gives their lse, the chunk's
coefficients c = dL/dlp follow in torch ([C] values), a second row kernel writes the softmax
part of the logit gradient, g = -c p / tau, in the weight's dtype into a [C, V] buffer (as the
reverse KL's chunked schedule stores its g), and cuBLAS multiplies it out. Extra memory:
C * V * (4 + itemsize) bytes. The c_i between the two row kernels cannot move into one kernel
without the loss's options (clip, baseline, KL penalty) becoming kernel arguments: the split
costs one more read of the fp32 logits, not a matmul.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reverse_kl_triton import ROW_BLOCK_V, ROW_NUM_WARPS


@triton.jit
def _lse_row_kernel(z_ptr, stride_z, lse_ptr, V, inv_tau, BLOCK_V: tl.constexpr):
    """One row of fp32 logits -> logsumexp(z / tau), online over BLOCK_V columns at a time."""
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    offs = tl.arange(0, BLOCK_V)
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + offs
        z = tl.load(z_row + cols, mask=cols < V, other=float("-inf")) * inv_tau
        new_m = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - new_m) + tl.sum(tl.exp(z - new_m), axis=0)
        m = new_m
    tl.store(lse_ptr + row, m + tl.log(s))


@triton.jit
def _softmax_grad_row_kernel(z_ptr, stride_z, lse_ptr, c_ptr, g_ptr, stride_g, V, inv_tau, BLOCK_V: tl.constexpr):
    """g = -c p / tau over one row (0 where c = 0: a masked token), in g's dtype."""
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    g_row = g_ptr + row * stride_g
    lse = tl.load(lse_ptr + row)
    c = tl.load(c_ptr + row)
    offs = tl.arange(0, BLOCK_V)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + offs
        ok = cols < V
        p = tl.exp(tl.load(z_row + cols, mask=ok, other=0.0) * inv_tau - lse)
        g = tl.where(c != 0, -c * inv_tau * p, 0.0)
        tl.store(g_row + cols, g.to(g_ptr.dtype.element_ty), mask=ok)


class TritonTerminalRows:
    """The row math of :func:`opd_kernels.logprobs_torch.terminal_logprobs` as two Triton row kernels."""

    @staticmethod
    def logit_bytes(dtype: torch.dtype) -> int:
        """Bytes a chunk holds per logit: the fp32 logits and g in the weight's matmul dtype."""
        return 4 + dtype.itemsize

    def __init__(self, rows: int, vocab: int, W_acc: torch.Tensor):
        self.g = torch.empty((rows, vocab), dtype=W_acc.dtype, device=W_acc.device)

    def lse(self, z, inv_tau):
        lse = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
        _lse_row_kernel[(z.shape[0],)](
            z, z.stride(0), lse, z.shape[1], inv_tau, BLOCK_V=ROW_BLOCK_V, num_warps=ROW_NUM_WARPS
        )
        return lse

    def grad(self, z, inv_tau, lse, c):
        g = self.g[: z.shape[0]]
        _softmax_grad_row_kernel[(z.shape[0],)](
            z,
            z.stride(0),
            lse,
            c.contiguous(),
            g,
            g.stride(0),
            z.shape[1],
            inv_tau,
            BLOCK_V=ROW_BLOCK_V,
            num_warps=ROW_NUM_WARPS,
        )
        return g


def kernel_specs():
    from ._aot import KernelSpec, triton_type

    yield KernelSpec(
        name="lse_row",
        kernel=_lse_row_kernel,
        signature={
            "z_ptr": "*fp32",
            "stride_z": "i32",
            "lse_ptr": "*fp32",
            "V": "i32",
            "inv_tau": "fp32",
            "BLOCK_V": "constexpr",
        },
        constexprs={"BLOCK_V": ROW_BLOCK_V},
        num_warps=ROW_NUM_WARPS,
        num_stages=1,
        divisible_by_16=("z_ptr", "lse_ptr"),
    )
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        ty = triton_type(dtype)
        yield KernelSpec(
            name=f"softmax_grad_row[{ty}]",
            kernel=_softmax_grad_row_kernel,
            signature={
                "z_ptr": "*fp32",
                "stride_z": "i32",
                "lse_ptr": "*fp32",
                "c_ptr": "*fp32",
                "g_ptr": f"*{ty}",
                "stride_g": "i32",
                "V": "i32",
                "inv_tau": "fp32",
                "BLOCK_V": "constexpr",
            },
            constexprs={"BLOCK_V": ROW_BLOCK_V},
            num_warps=ROW_NUM_WARPS,
            num_stages=1,
            divisible_by_16=("z_ptr", "lse_ptr", "c_ptr", "g_ptr"),
        )
