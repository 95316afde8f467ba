"""The non-finite step guard: an optimizer step whose loss or gradients are NaN/inf on any
process is skipped by every process, counted, and the run goes on.

Every process must take the same decision without a collective of its own. The step already
makes one that every gradient passes through: the engine's gradient all-reduce (DDP) or
reduce-scatter (FSDP2), then under FSDP2 the all-reduce of the clipping norm. A NaN or inf in
any process's gradients reaches every process's total gradient norm through them (a sum with a
NaN is NaN), so the norm is the agreed flag. It reaches the host with the step's metrics row, in
that row's one all-gather and host sync (:func:`videoopd.training.distributed.reduce_step_metrics`),
and only then does the loop step or skip (:func:`step_if_finite`): the guard adds no collective
and no host sync of its own. A non-finite loss whose
gradients happen to be finite is folded into the same path before the backward
(:func:`flag_nonfinite_loss`). A skipped step leaves the weights (and fp32 masters), the
optimizer's moments and step counts and the schedule as they were, and drops the gradients.

:func:`note_step` keeps the count in the run's checkpointed state, so a resumed run counts as
the uninterrupted one does, and stops the run after ``--max-skipped-steps`` consecutive skipped
steps with an error naming them and their records.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__: list[str] = []  # nothing here is promised: docs/api.md


def flag_nonfinite_loss(loss: torch.Tensor) -> torch.Tensor:
    """``loss`` to back-propagate, unchanged when finite (times exactly 1.0); when NaN/inf, its
    gradients become NaN, so that the engine's gradient collective carries the flag to every
    process. On the device, no host sync."""
    finite = torch.isfinite(loss.detach())
    return loss * torch.where(finite, torch.ones_like(loss), torch.full_like(loss, math.nan))


def agreed_grad_norm(accelerator: Any, params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """The total gradient norm of ``params``, the same on every process (a plain tensor, also
    under FSDP2), clipping the gradients to ``max_norm`` when it is > 0 (accelerate's
    ``clip_grad_norm_``: the step's own collective under FSDP2). NaN or inf when any process's
    gradients held a NaN or inf."""
    if max_norm > 0:
        norm = accelerator.clip_grad_norm_(params, max_norm)
    else:  # no clipping: the norm alone (under FSDP2 one all-reduce, which clipping would have made)
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=accelerator.device)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def step_if_finite(optimizer: Any, scheduler: Any, agreed_norm: float) -> bool:
    """Step ``optimizer`` and ``scheduler`` when ``agreed_norm`` (the step's total gradient norm,
    a host float the same on every process: the row's one host sync brought it) is finite;
    returns whether it stepped. The caller drops the gradients either way."""
    if not math.isfinite(agreed_norm):
        return False
    optimizer.step()
    scheduler.step()
    return True


class TooManySkippedSteps(FloatingPointError):
    """More consecutive optimizer steps had non-finite gradients or loss than ``--max-skipped-steps``."""


def note_step(state: Any, step: int, skipped: bool, records: list[str], max_consecutive: int) -> None:
    """Count optimizer step ``step`` in ``state`` (the run's checkpointed
    :class:`videoopd.training.checkpoint.TrainerState`: ``skipped_steps``, the total so far, and
    ``skipped_in_a_row``, the current run of consecutive skipped steps with the ``records`` each
    drew on every process); raise :class:`TooManySkippedSteps` naming them when that run is
    longer than ``max_consecutive``."""
    if not skipped:
        state.skipped_in_a_row = []
        return
    state.skipped_steps += 1
    state.skipped_in_a_row = [*state.skipped_in_a_row, {"step": step, "records": list(records)}]
    if len(state.skipped_in_a_row) <= max_consecutive:
        return
    where = "; ".join(
        f"step {s['step']} (records {', '.join(map(str, s['records'])) or 'none'})" for s in state.skipped_in_a_row
    )
    raise TooManySkippedSteps(
        f"{len(state.skipped_in_a_row)} consecutive optimizer steps had non-finite gradients "
        f"or loss and were skipped (--max-skipped-steps {max_consecutive}): {where}. The "
        "weights are those before the first of them: lower the learning rate, check these "
        "records, or resume from an earlier checkpoint"
    )
