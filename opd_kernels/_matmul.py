"""Matmuls whose output is accumulated and returned in fp32 (fp64 for fp64 inputs).

On CUDA, bf16/fp16 operands go straight to cuBLAS with an fp32 output (``out_dtype``),
so logits are never rounded to 16 bits (the error that costs Liger 4-23% of gradient
accuracy) and the tensor cores still do the work. Elsewhere the operands are upcast.
"""

from __future__ import annotations

import torch

_HALF = (torch.bfloat16, torch.float16)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _native_fp32_out(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.is_cuda and a.dtype in _HALF and a.dtype == b.dtype


def acc_operand(t: torch.Tensor) -> torch.Tensor:
    """t ready to be multiplied many times with an fp32 (fp64) result: t itself where the
    device multiplies its dtype into fp32 natively (CUDA bf16/fp16) or it is fp32/fp64
    already, else its fp32 copy. For an LM head reused by every token chunk: upcast once, not
    once per chunk."""
    if t.dtype in _HALF and not t.is_cuda:
        return t.float()
    return t


def grad_operand(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """An fp32 logit gradient g as the partner of ``weight`` (an :func:`acc_operand`) in a
    matmul: rounded to the weight's 16-bit dtype where the device multiplies that into fp32
    natively (CUDA; the Triton chunked schedule stores g the same way), else g as it is."""
    return g.to(weight.dtype) if weight.dtype in _HALF and weight.is_cuda else g


def mm_acc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with an fp32 (fp64 for fp64 inputs) result."""
    if _native_fp32_out(a, b):
        return torch.mm(a, b, out_dtype=torch.float32)
    dtype = torch.promote_types(accumulate_dtype(a.dtype), accumulate_dtype(b.dtype))
    return torch.mm(a.to(dtype), b.to(dtype))


def addmm_acc_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """acc += a @ b in place, acc in fp32/fp64, without a second [M, K] temporary on CUDA."""
    if _native_fp32_out(a, b) and acc.dtype == torch.float32:
        return torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    return acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


def multiply_out_(
    g: torch.Tensor, W: torch.Tensor, h: torch.Tensor, dh: torch.Tensor | None, dW: torch.Tensor | None
) -> None:
    """A token chunk's logit gradient g [C, V] multiplied out: dh (the chunk's rows, [C, D]) = g W,
    dW [V, D] += g^T h; either skipped where None (W frozen, or h needs no gradient)."""
    if dh is not None:
        dh.copy_(mm_acc(g, W))
    if dW is not None:
        addmm_acc_(dW, g.t(), h)
