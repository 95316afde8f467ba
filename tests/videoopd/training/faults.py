"""A fault injector for the loop's tests (test_guard.py in-process, distributed_opd.py under
``accelerate launch``): at optimizer step ``step`` on process ``rank`` it raises
:class:`InjectedFault` in one phase of the loop, or makes the student's loss of the step's first
micro-batch have NaN gradients (``nan_gradient``) or a NaN value with finite gradients
(``nan_loss``). It wraps what the loop calls, through ``setattr`` (pytest's
``monkeypatch.setattr`` in-process)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

RAISING = ("rollout", "teacher", "student", "optimizer", "evaluation", "checkpoint")
FAULTS = (*RAISING, "nan_gradient", "nan_loss")


class InjectedFault(RuntimeError):
    """The error a test injects."""


class NaNGradient(torch.autograd.Function):
    """The identity whose backward is NaN: a finite loss with NaN gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.nan


def install(fault: str, rank: int, step: int, setattr: Callable[[Any, str, Any], None] = setattr) -> None:
    """Inject ``fault`` (one of :data:`FAULTS`) at optimizer step ``step`` on process ``rank``."""
    from accelerate import PartialState

    from videoopd.algo import objectives
    from videoopd.training import loop, reporting, run_setup

    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")
    now = {"step": 0, "micro": 0}

    def here() -> bool:
        return now["step"] == step and PartialState().process_index == rank

    def raising(target: Any, name: str) -> None:
        through = getattr(target, name)

        def wrapped(*args, **kwargs):
            if here():
                raise InjectedFault(
                    f"injected fault in the {fault} phase of step {step} on process {rank} "
                    f"at unix time {time.time():.3f}"
                )
            return through(*args, **kwargs)

        setattr(target, name, wrapped)

    stepping = loop.step_gradients

    def step_gradients(step_now, *args, **kwargs):  # the loop's step, for the phases below
        now["step"], now["micro"] = step_now, 0
        return stepping(step_now, *args, **kwargs)

    setattr(loop, "step_gradients", step_gradients)
    if fault in RAISING:
        target, name = {
            "rollout": (objectives.SampledObjective, "rollout_step"),
            "teacher": (objectives.DistillationObjective, "score_step"),
            "student": (loop, "policy_head_forward"),
            "optimizer": (loop, "step_if_finite"),
            "evaluation": (reporting, "evaluate"),  # where evaluate_held_out looks it up
            "checkpoint": (run_setup, "save_checkpoint"),  # where PreparedRun.save_checkpoint looks it up
        }[fault]
        raising(target, name)
        return
    forward = loop.policy_head_forward

    def poisoned(wrapper, model, inputs, fn):
        loss, metrics = forward(wrapper, model, inputs, fn)
        now["micro"] += 1
        if here() and now["micro"] == 1:
            loss = NaNGradient.apply(loss) if fault == "nan_gradient" else loss + math.nan
        return loss, metrics

    setattr(loop, "policy_head_forward", poisoned)
