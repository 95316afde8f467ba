"""fused_reverse_kl: exact KL(student || teacher) over the full vocabulary from hidden states."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from . import _validation as v
from ._grads import keep_forward_grads, take_forward_grads
from ._matmul import accumulate_dtype
from ._params import ReverseKLParams
from .reverse_kl_torch import reverse_kl_torch


def _implementation(params: ReverseKLParams):
    if params.backend == "torch":
        return reverse_kl_torch
    from .reverse_kl_triton import reverse_kl_triton_chunked, reverse_kl_triton_fused

    # Measured on an H200 (README): cuBLAS on token chunks plus one row kernel beats the fused
    # kernel's tl.dot tiles, 2.5-2.7x, with and without gradients; "fused" stays for the memory
    # it saves (O(N + V) against a chunk's logits).
    return reverse_kl_triton_fused if params.schedule == "fused" else reverse_kl_triton_chunked


class _ReverseKLGrads(NamedTuple):
    """What _ReverseKLFunction.backward returns: one slot per input of its forward, in order."""

    student_hidden: torch.Tensor | None
    student_weight: torch.Tensor | None
    teacher_hidden: None = None  # the teacher never gets a gradient
    teacher_weight: None = None
    mask: None = None
    params: None = None


class _ReverseKLFunction(torch.autograd.Function):
    @staticmethod
    @v.autocast_off
    def forward(ctx, h_s, W_s, h_t, W_t, mask, params: ReverseKLParams):
        n = h_s.shape[0]
        impl = _implementation(params)
        weights = mask.to(torch.float32) if mask is not None else h_s.new_ones(n, dtype=torch.float32)
        if params.reduction == "none":
            rkl, _, _ = impl(h_s, W_s, h_t, W_t, weights, params.forward_only())
            ctx.save_for_backward(h_s, W_s, h_t, W_t, mask)
            ctx.params = params
            return rkl

        # The loss is terminal: the gradient is formed in the same pass as the loss and the
        # backward only scales it by grad_output (no second pass over the vocabulary).
        rkl, dh, dW = impl(h_s, W_s, h_t, W_t, weights, params)
        loss = rkl.sum()
        scale = torch.ones((), dtype=rkl.dtype, device=rkl.device)
        if params.reduction in ("mean", "sequence_sum"):
            count = weights.sum().clamp_min(1.0) if params.reduction == "mean" else float(max(params.sequences, 1))
            scale = 1.0 / torch.as_tensor(count, dtype=rkl.dtype, device=rkl.device)
            loss = loss * scale
            dh = dh.mul_(scale) if dh is not None else None
            dW = dW.mul_(scale) if dW is not None else None
        keep_forward_grads(
            ctx, dh.to(h_s.dtype) if dh is not None else None, dW.to(W_s.dtype) if dW is not None else None
        )
        # references, for a second backward through a retained graph only
        ctx.save_for_backward(h_s, W_s, h_t, W_t, mask, scale)
        ctx.params = params
        return loss

    @staticmethod
    @v.autocast_off
    def backward(ctx, grad_output):
        grads = take_forward_grads(ctx, grad_output) if ctx.params.reduction != "none" else None
        if grads is not None:
            dh, dW = grads
        else:
            h_s, W_s, h_t, W_t, mask, *scale = ctx.saved_tensors
            # grad_output may be an expanded view (stride 0, from .sum()); kernels need real rows.
            weights = grad_output.to(accumulate_dtype(h_s.dtype)).contiguous()
            if scale:  # a scalar loss: every token's weight is grad_output x the reduction's scale
                weights = (weights * scale[0].to(weights.dtype)).expand(h_s.shape[0]).contiguous()
            if mask is not None:
                weights = torch.where(mask, weights, 0.0)
            _, dh, dW = _implementation(ctx.params)(h_s, W_s, h_t, W_t, weights, ctx.params)
            dh = dh.to(h_s.dtype) if dh is not None else None
            dW = dW.to(W_s.dtype) if dW is not None else None
        return _ReverseKLGrads(student_hidden=dh, student_weight=dW)


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def fused_reverse_kl(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    reduction: v.Reduction = "mean",
    backend: str = "auto",
    schedule: str = "auto",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Per-token reverse KL, KL(student || teacher), over the whole vocabulary.

    With z_s = student_hidden @ student_weight.T / temperature and z_t likewise for the
    teacher, each selected token contributes
    ``sum_v p_v (log p_v - log q_v)`` with p = softmax(z_s), q = softmax(z_t).
    No [tokens, vocab] tensor is built (see the schedules below).

    Args:
        student_hidden: [..., D_s] bf16 / fp16 / fp32 (fp64 on the torch backend).
        student_weight: [V_s, D_s] the student's LM head, same dtype as student_hidden; under
            ``torch.autocast`` any mix of bf16 / fp16 / fp32: the matmuls run in autocast's
            dtype, as ``torch.nn.functional.linear``'s would, and each input gets its gradient
            in its own dtype (an fp32 head an fp32 gradient).
        teacher_hidden: [..., D_t], the same leading shape as student_hidden.
        teacher_weight: [V_t, D_t] with V_t >= V_s; only its first V_s rows are used, so a
            padded teacher head (152,064 vs 151,936 rows) works as is.
        mask: optional bool [...]; False tokens contribute exactly 0 and get zero gradient.
            The op takes no token ids: from Hugging Face labels pass ``mask=labels != -100``.
        temperature: tau > 0; both models' logits are divided by it.
        reduction: one of :data:`opd_kernels.REDUCTIONS`: "mean" over selected tokens (0 when
            none), "sum", "sequence_sum" (summed over the last leading dim, the sequence, then
            averaged over the other leading dims: needs student_hidden of at least 2 dims), or
            "none" (fp32 [...], 0 where masked).
        backend: "triton" (CUDA, or CPU under TRITON_INTERPRET=1), "torch" (chunked
            PyTorch, any device: one pass, whole-vocabulary logit rows per token chunk, the
            row math compiled by torch.compile on CPU and CUDA, see ``OPD_KERNELS_TORCH_COMPILE``),
            "auto" (triton with the chunked schedule on CUDA, torch elsewhere; measured on an
            H200, the README).
        schedule: Triton only. "chunked": cuBLAS logits for ``chunk_size`` tokens at a time
            plus one fused row kernel; extra memory chunk_size * V_s * (8 + itemsize) bytes.
            "fused": logits never leave the chip; extra memory O(N + V), but 2.5-6x slower than
            chunked on an H200 (README). "auto": chunked.
        chunk_size: tokens per chunk for the chunked schedule and the torch backend; each
            chunk is multiplied by the whole vocabulary. Default: ``default_chunk_size`` (in
            ``opd_kernels._params``), the one policy of every chunked backend: the chunk's
            logit buffers (torch: two fp32 [C, V_s] blocks, 8 bytes a logit; Triton chunked:
            8 + itemsize bytes a logit) stay within twice the fp32 size of the student head and
            1 GiB, C a multiple of 16 in [16, 4096]. Torch: C = D_s (256 tokens, 66 MB, at
            D_s = 256, V_s = 32,000); at V_s = 151,936 the cap gives 880 (torch), 704 (Triton, bf16).

    Returns:
        fp32 loss (fp64 for fp64 inputs): a scalar for "mean" / "sum" / "sequence_sum", the
        leading shape for "none". Gradients flow to student_hidden and student_weight (in their
        dtype; fp32 accumulation throughout), never to the teacher. A frozen student_weight gets
        no weight-gradient work at all.
    """
    # Under torch.autocast the operands come back in autocast's dtype (differentiably cast).
    student_hidden, student_weight = v.check_hidden_and_weight(
        "student_hidden", student_hidden, "student_weight", student_weight
    )
    teacher_hidden, teacher_weight = v.check_hidden_and_weight(
        "teacher_hidden", teacher_hidden, "teacher_weight", teacher_weight
    )
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(
            "student_hidden and teacher_hidden must share leading (token) dims, got "
            f"{tuple(student_hidden.shape)} and {tuple(teacher_hidden.shape)}"
        )
    vocab = student_weight.shape[0]
    if teacher_weight.shape[0] < vocab:
        raise ValueError(
            f"teacher_weight has {teacher_weight.shape[0]} rows (shape {tuple(teacher_weight.shape)}), "
            f"fewer than the student's vocabulary of {vocab} (student_weight {tuple(student_weight.shape)})"
        )
    leading = student_hidden.shape[:-1]
    v.check_mask(mask, leading, "student_hidden")
    v.check_same_device(
        student_hidden=student_hidden,
        student_weight=student_weight,
        teacher_hidden=teacher_hidden,
        teacher_weight=teacher_weight,
        mask=mask,
    )
    inv_tau = 1.0 / v.check_temperature(temperature)
    reduction = v.check_reduction(reduction)
    if reduction == "sequence_sum" and len(leading) < 1:
        raise ValueError(
            f"reduction='sequence_sum' needs a sequence dim: student_hidden must be at least 2-D "
            f"([..., T, D_s]), got shape {tuple(student_hidden.shape)}"
        )
    v.check_choice("schedule", schedule, v.SCHEDULES)
    chunk_size = v.check_chunk_size(chunk_size)
    backend = v.resolve_backend(backend, student_hidden.device, (student_hidden.dtype, teacher_hidden.dtype))

    h_s = _last_dim_contiguous(student_hidden.reshape(-1, student_hidden.shape[-1]))
    h_t = _last_dim_contiguous(teacher_hidden.reshape(-1, teacher_hidden.shape[-1]))
    W_s = _last_dim_contiguous(student_weight)
    # No gradient ever flows to the teacher, so it is detached up front.
    W_t = _last_dim_contiguous(teacher_weight.detach()[:vocab])
    h_t = h_t.detach()
    flat_mask = mask.reshape(-1) if mask is not None else None

    grad_enabled = torch.is_grad_enabled()
    params = ReverseKLParams(
        inv_tau=inv_tau,
        backend=backend,
        chunk_size=chunk_size,
        need_dh=grad_enabled and student_hidden.requires_grad,
        need_dw=grad_enabled and student_weight.requires_grad,
        schedule="fused" if schedule == "fused" else "chunked",
        reduction=reduction,
        sequences=math.prod(leading[:-1]),
    )
    out = _ReverseKLFunction.apply(h_s, W_s, h_t, W_t, flat_mask, params)
    return out.reshape(leading) if reduction == "none" else out


class FusedReverseKL(nn.Module):
    """Module form of :func:`fused_reverse_kl`; the options are fixed at construction."""

    def __init__(
        self,
        temperature: float = 1.0,
        reduction: v.Reduction = "mean",
        backend: str = "auto",
        schedule: str = "auto",
        chunk_size: int | None = None,
    ):
        super().__init__()
        v.check_temperature(temperature)
        self.temperature = temperature
        self.reduction = v.check_reduction(reduction)
        self.backend = v.check_choice("backend", backend, v.BACKENDS)
        self.schedule = v.check_choice("schedule", schedule, v.SCHEDULES)
        self.chunk_size = v.check_chunk_size(chunk_size)

    def forward(self, student_hidden, student_weight, teacher_hidden, teacher_weight, mask=None):
        return fused_reverse_kl(
            student_hidden,
            student_weight,
            teacher_hidden,
            teacher_weight,
            mask=mask,
            temperature=self.temperature,
            reduction=self.reduction,
            backend=self.backend,
            schedule=self.schedule,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, reduction={self.reduction!r}, "
            f"backend={self.backend!r}, schedule={self.schedule!r}, chunk_size={self.chunk_size}"
        )
