"""Test and benchmark helpers: float64 references that materialise logits, and a memory tracker.

Nothing here is used by the ops themselves.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_HOST_SYNC_OPS = {"aten::_local_scalar_dense", "aten::item"}


def _masked_reduce(per_token: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    if mask is not None:
        per_token = torch.where(mask, per_token, torch.zeros_like(per_token))
    if reduction == "none":
        return per_token
    total = per_token.sum()
    if reduction == "sum":
        return total
    if reduction == "sequence_sum":  # the last dim is the sequence
        return per_token.sum(dim=-1).mean() if per_token.numel() else total
    count = mask.sum() if mask is not None else torch.tensor(per_token.numel())
    return total / count.clamp_min(1).to(total.dtype)


def reference_logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Materialised float64 logits [..., V] (only for tests and accuracy figures)."""
    return (hidden.double() @ weight.double().t()) / temperature


def reverse_kl_reference(
    student_hidden, student_weight, teacher_hidden, teacher_weight, *, mask=None, temperature=1.0, reduction="mean"
):
    """float64 KL(student || teacher) with full [..., V] logits; differentiable."""
    vocab = student_weight.shape[0]
    log_p = torch.log_softmax(reference_logits(student_hidden, student_weight, temperature), dim=-1)
    log_q = torch.log_softmax(reference_logits(teacher_hidden, teacher_weight[:vocab], temperature), dim=-1)
    per_token = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    return _masked_reduce(per_token, mask, reduction)


@dataclass
class TensorRecord:
    op: str
    shape: tuple[int, ...]
    numel: int


@dataclass
class MemoryTracker(TorchDispatchMode):
    """Records every tensor created by aten ops inside the ``with`` block.

    - ``largest``: the biggest tensor created (by element count) and the op that made it;
    - ``peak_bytes``: the peak of bytes held by tensors created inside the block and still
      alive (freed when their last Python reference dies), i.e. the op's extra memory;
    - ``host_syncs``: aten ops that copy a device value to the host (``.item()`` & co).

    ``numel_limit``: if given, creating a tensor with >= numel_limit elements raises at once,
    with the op in the message.
    """

    numel_limit: int | None = None
    largest: TensorRecord | None = None
    peak_bytes: int = 0
    live_bytes: int = 0
    host_syncs: list[str] = field(default_factory=list)

    def __post_init__(self):
        super().__init__()
        self._live: dict[int, int] = {}

    def _release(self, key: int) -> None:
        self.live_bytes -= self._live.pop(key, 0)

    def _record(self, op: str, out: torch.Tensor, input_storages: set[int]) -> None:
        storage = out.untyped_storage()
        key = storage.data_ptr()
        if key in input_storages or key in self._live or storage.nbytes() == 0:
            return  # a view, an in-place result or an empty tensor: no new memory
        numel = out.numel()
        if self.largest is None or numel > self.largest.numel:
            self.largest = TensorRecord(op, tuple(out.shape), numel)
        if self.numel_limit is not None and numel >= self.numel_limit:
            raise AssertionError(
                f"{op} created a tensor of shape {tuple(out.shape)} ({numel} elements), "
                f">= the limit of {self.numel_limit}"
            )
        self._live[key] = storage.nbytes()
        self.live_bytes += storage.nbytes()
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        weakref.finalize(out, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name in _HOST_SYNC_OPS:
            self.host_syncs.append(name)
        if name == "aten::_to_copy":
            target = kwargs.get("device")
            if target is not None and torch.device(target).type == "cpu" and args[0].device.type != "cpu":
                self.host_syncs.append("aten::_to_copy(device=cpu)")
        out = func(*args, **kwargs)
        input_storages = set()
        for a in torch.utils._pytree.tree_leaves((args, kwargs)):
            if isinstance(a, torch.Tensor):
                input_storages.add(a.untyped_storage().data_ptr())
            elif isinstance(a, (torch.UntypedStorage, torch.TypedStorage)):
                input_storages.add(a.data_ptr())
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._record(name, t, input_storages)
        return out
