"""Argument checks shared by every op: clear errors that name the argument and the shapes seen.

Also the one place where the ops' option vocabularies are declared: backends, schedules,
reductions (:data:`Reduction` / :data:`REDUCTIONS`, shared by every op) and :data:`MAX_TOPK`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import warnings
from typing import Literal, cast

import torch

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
TRITON_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
BACKENDS = ("auto", "triton", "torch")
SCHEDULES = ("auto", "chunked", "fused")

Reduction = Literal["mean", "sum", "sequence_sum", "none"]
#: How every op (fused_reverse_kl, policy_gradient_loss, sampled_reverse_kl_loss) reduces its
#: per-token values, PyTorch's / Liger's names plus one sequence-level mode:
#: "mean" over the selected tokens (0 when none; PyTorch's mean over non-ignored targets),
#: "sum" over the selected tokens, "sequence_sum" (sum over each sequence's selected tokens,
#: the last leading dim, then mean over the sequences; verl's "seq-mean-token-sum", the
#: Video-OPD paper's), "none" (per-token values in the leading shape, 0 where not selected).
REDUCTIONS: tuple[Reduction, ...] = ("mean", "sum", "sequence_sum", "none")
#: Old names still accepted, with a DeprecationWarning: the loss functions' "token_mean".
DEPRECATED_REDUCTIONS: dict[str, Reduction] = {"token_mean": "mean"}

#: The most log-probs topk_logprobs returns per token: the Triton top-k kernel keeps k keys
#: (padded to a power of two) per row in registers, and is compiled and tested up to 64.
MAX_TOPK = 64


def _dtensor_class():
    # A DTensor cannot exist before torch.distributed.tensor is imported, so a sys.modules
    # look-up is exact, costs no import (~0.5 s) and works where torch.distributed is absent.
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def check_not_dtensor(name: str, value) -> None:
    """Reject a DTensor (an FSDP2-sharded LM head read outside its module's forward, say).

    Let through, it fails deep inside with a message that does not say what to do (aten.mm's
    "got mixed torch.Tensor and DTensor", Triton's "invalid python storage").
    """
    dtensor = _dtensor_class()
    if dtensor is None or not isinstance(value, dtensor):
        return
    raise TypeError(
        f"{name} is a torch.distributed DTensor (placements {tuple(value.placements)}, global shape "
        f"{tuple(value.shape)}); opd_kernels needs a full torch.Tensor. Compute the loss inside the "
        f"forward of the FSDP-wrapped module, where FSDP2 has unsharded the parameters, or gather it "
        f"explicitly with {name}.full_tensor()"
    )


def check_tensor(name: str, value, *, ndim: int | None = None, min_ndim: int | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    check_not_dtensor(name, value)
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(value.shape)}")
    if min_ndim is not None and value.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dims, got shape {tuple(value.shape)}")
    return value


def check_floating(name: str, value: torch.Tensor) -> None:
    if value.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"{name} must be a floating tensor (bfloat16, float16, float32 or float64), got dtype {value.dtype}"
        )


#: The dtypes autocast casts (float64 it leaves alone, as it does for torch.nn.functional.linear).
AUTOCAST_ELIGIBLE = (torch.bfloat16, torch.float16, torch.float32)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """autocast's dtype for matmuls on ``device``'s type when ``torch.autocast`` is on there, else None."""
    if torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def check_hidden_and_weight(hidden_name: str, hidden, weight_name: str, weight) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [..., D], weight [V, D]; returns the pair in the dtype the op's matmuls run in.

    Under ``torch.autocast`` on the tensors' device type that is autocast's dtype, as for
    ``torch.nn.functional.linear``: bf16 / fp16 / fp32 operands are cast (differentiably: the
    gradient goes back to each input in its own dtype, an fp32 LM head gets an fp32 gradient),
    fp64 ones are left as they are. Outside autocast both must already share a dtype. Every op
    takes its matmul operands from here and runs its autograd Function under
    :func:`autocast_off`, so that what happens inside (fp32 accumulation, fp32 losses) does not
    depend on the caller's autocast state.
    """
    check_tensor(hidden_name, hidden, min_ndim=1)
    check_tensor(weight_name, weight, ndim=2)
    check_floating(hidden_name, hidden)
    check_floating(weight_name, weight)
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{hidden_name} has hidden size {hidden.shape[-1]} (shape {tuple(hidden.shape)}) but "
            f"{weight_name} has {weight.shape[1]} columns (shape {tuple(weight.shape)}); expected "
            f"{weight_name} of shape [vocab, {hidden.shape[-1]}]"
        )
    target = autocast_dtype(hidden.device)
    if target is not None:
        hidden = hidden.to(target) if hidden.dtype in AUTOCAST_ELIGIBLE else hidden
        weight = weight.to(target) if weight.dtype in AUTOCAST_ELIGIBLE else weight
    if hidden.dtype != weight.dtype:
        hint = (
            "; run under torch.autocast to mix them"
            if target is None
            else f" (under torch.autocast({hidden.device.type}, {target}), which leaves float64 as it is)"
        )
        raise ValueError(f"{hidden_name} ({hidden.dtype}) and {weight_name} ({weight.dtype}) must share a dtype{hint}")
    if weight.shape[0] == 0:
        raise ValueError(f"{weight_name} has an empty vocabulary (shape {tuple(weight.shape)})")
    return hidden, weight


def no_autocast(device: torch.device):
    """A context with autocast off on ``device``'s type: the backends' own matmuls keep the
    dtypes they ask for (fp32 logits) whatever autocast state the caller is in. The operands
    were cast before, by :func:`check_hidden_and_weight`."""
    if not torch.amp.is_autocast_available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


def autocast_off(fn):
    """Decorates an autograd Function's forward / backward: runs it under :func:`no_autocast`
    for the device of its first tensor argument (the backward too: it may run inside the
    caller's autocast region)."""

    @functools.wraps(fn)
    def wrapper(ctx, *args):
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
        if device is None:
            return fn(ctx, *args)
        with no_autocast(device):
            return fn(ctx, *args)

    return wrapper


def check_ignore_index(ignore_index) -> int:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")
    return ignore_index


def check_token_ids(
    tokens,
    leading_shape: torch.Size,
    vocab: int,
    *,
    ignore_index: int,
    mask=None,
    check: bool = False,
    hidden_name: str = "hidden",
) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 token ids of ``leading_shape``, ids in [0, vocab) or ``ignore_index`` (HF's -100).

    Returns (ids, keep), both flat [N]: ``keep`` is False where the id is ``ignore_index`` or
    ``mask`` (an optional bool tensor of ``leading_shape``, checked here) is False; ``ids`` has
    0 there, so that it is safe to gather whatever those positions held. An op with token ids
    masks the positions ``keep`` drops: value 0, no gradient, not counted.
    ``check=True`` validates the kept ids' range up front (one host synchronisation).
    """
    check_tensor("tokens", tokens)
    if tokens.dtype != torch.int64:
        raise ValueError(f"tokens must be int64 (torch.long), got dtype {tokens.dtype}")
    if tokens.shape != leading_shape:
        raise ValueError(
            f"tokens must have the leading shape of {hidden_name}, {tuple(leading_shape)}, got {tuple(tokens.shape)}"
        )
    check_mask(mask, leading_shape, hidden_name)
    flat = tokens.reshape(-1)
    keep = flat != ignore_index
    if mask is not None:
        keep = keep & mask.reshape(-1)
    if check and flat.numel() and not bool((~keep | ((flat >= 0) & (flat < vocab))).all()):
        bad = flat[keep & ((flat < 0) | (flat >= vocab))]
        raise ValueError(f"tokens must lie in [0, {vocab}) or be ignore_index={ignore_index}, found {bad[:5].tolist()}")
    return torch.where(keep, flat, 0), keep


def check_same_device(**tensors: torch.Tensor | None) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        seen = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"all inputs must be on one device, got {seen}")


def check_mask(mask, leading_shape: torch.Size, hidden_name: str) -> None:
    if mask is None:
        return
    check_tensor("mask", mask)
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if mask.shape != leading_shape:
        raise ValueError(
            f"mask must have the leading shape of {hidden_name}, {tuple(leading_shape)}, got {tuple(mask.shape)}"
        )


def check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a Python number, got {type(temperature).__name__}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    return float(temperature)


def check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_reduction(reduction, *, stacklevel: int = 3) -> Reduction:
    """One of :data:`REDUCTIONS`; an old name of :data:`DEPRECATED_REDUCTIONS` warns and maps to its new one."""
    if isinstance(reduction, str) and reduction in DEPRECATED_REDUCTIONS:
        new = DEPRECATED_REDUCTIONS[reduction]
        warnings.warn(
            f"reduction={reduction!r} is deprecated; use reduction={new!r}, which means the same",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
        return new
    return cast(Reduction, check_choice("reduction", reduction, REDUCTIONS))  # one of REDUCTIONS, checked


def check_like(name: str, reference: torch.Tensor, mask: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Per-token values: a floating ``reference`` (called ``name``), ``others`` of its shape, a bool
    mask of its shape."""
    check_tensor(name, reference)
    for other_name, t in {name: reference, **others}.items():
        if t is None:
            continue
        check_tensor(other_name, t)
        if not t.is_floating_point():
            raise ValueError(f"{other_name} must be a floating tensor, got dtype {t.dtype}")
        if t.shape != reference.shape:
            raise ValueError(
                f"{other_name} has shape {tuple(t.shape)}, expected the shape of {name}, {tuple(reference.shape)}"
            )
    check_tensor("mask", mask)
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if mask.shape != reference.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected the shape of {name}, {tuple(reference.shape)}")


def check_baseline(baseline, shape: torch.Size, name: str) -> None:
    """An optional floating tensor broadcastable to ``shape`` (the shape of ``name``)."""
    if baseline is None:
        return
    check_tensor("baseline", baseline)
    if not baseline.is_floating_point():
        raise ValueError(f"baseline must be a floating tensor, got dtype {baseline.dtype}")
    try:
        torch.broadcast_shapes(baseline.shape, shape)
    except RuntimeError:
        raise ValueError(
            f"baseline has shape {tuple(baseline.shape)}, which does not broadcast to the shape of "
            f"{name}, {tuple(shape)}"
        ) from None


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def check_clip_eps(clip_eps) -> float | None:
    """PPO's clip range: None (no clip) or a number in (0, 1)."""
    if clip_eps is not None and (not _is_number(clip_eps) or not 0 < clip_eps < 1):
        raise ValueError(f"clip_eps must be a number in (0, 1), got {clip_eps!r}")
    return clip_eps


def check_advantage_clip(advantage_clip) -> float | None:
    """None (no clamp) or a finite number c > 0 (advantages clamped to [-c, c])."""
    if advantage_clip is not None and (not _is_number(advantage_clip) or not 0 < advantage_clip < math.inf):
        raise ValueError(f"advantage_clip must be a finite number > 0, got {advantage_clip!r}")
    return advantage_clip


def check_beta(beta) -> float:
    """The KL penalty coefficient: a finite number >= 0."""
    if not _is_number(beta) or not beta >= 0 or beta == math.inf:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    return beta


def check_chunk_size(chunk_size) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return chunk_size


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(
    backend: str, device: torch.device, dtypes: tuple[torch.dtype, ...], *, auto_triton_on_cuda: bool = True
) -> str:
    """'auto' is Triton on CUDA (where ``auto_triton_on_cuda``) and the chunked torch backend elsewhere."""
    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        on_cuda = auto_triton_on_cuda and device.type == "cuda"
        return "triton" if on_cuda and all(d in TRITON_DTYPES for d in dtypes) else "torch"
    if backend == "triton":
        if device.type != "cuda" and not triton_interpreting():
            raise ValueError(
                f"backend='triton' needs CUDA tensors (got device {device}) or TRITON_INTERPRET=1 "
                "set before opd_kernels is imported; use backend='torch' on this device"
            )
        bad = [d for d in dtypes if d not in TRITON_DTYPES]
        if bad:
            raise ValueError(
                f"backend='triton' supports bfloat16, float16 and float32 inputs, got {bad[0]}; "
                "use backend='torch' for float64"
            )
    return backend
