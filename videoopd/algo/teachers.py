"""The teacher's scoring of a step's rollouts: the scorer protocol and its pending results, the colocated
teacher (scores at once, a generate call's rollouts in one forward), the rows of each micro-batch, and several
teachers routed by source."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from opd_kernels import token_logprobs
from videoopd.algo.rollouts import PendingScore, RolledBatch, answer_slice, scoring_inputs
from videoopd.qwen.generation import Rollout
from videoopd.qwen.models import is_fsdp_sharded, lm_head_weight, policy_head_forward

__all__: list[str] = []  # nothing here is promised: docs/api.md


def score_rollout(
    teacher: Any,
    teacher_wrapper: Any,
    inputs: dict[str, Any],
    rollout: Rollout,
    *,
    objective: str,
    temperature: float,
    vocab_size: int,
    device: torch.device | str,
    backend: str = "auto",
    teacher_head: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The frozen teacher's view of a rollout, on ``device`` (the student's).

    "sampled": ``{"teacher_logprobs": [B, A]}``, the teacher's log-probs of the sampled
    tokens over the student's first ``vocab_size`` rows. "full": ``{"teacher_hidden": [B, A,
    D_t], "teacher_head": [V_t, D_t]}`` for the exact reverse KL: ``teacher_head`` when given
    (the copy an earlier call returned: the head is frozen), else the head itself, or a copy of
    it when the teacher is sharded (the gathered weight is freed after the teacher's forward).
    """
    t_device = lm_head_weight(teacher).device
    sharded = is_fsdp_sharded(teacher)

    def head_fn(hidden: torch.Tensor, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        h, tokens, _ = answer_slice(hidden, rollout)
        if objective == "sampled":
            lp = token_logprobs(h, weight, tokens, temperature=temperature, backend=backend, vocab_size=vocab_size)
            return {"teacher_logprobs": lp}
        if teacher_head is None:
            return {"teacher_hidden": h, "teacher_head": weight.detach().clone() if sharded else weight.detach()}
        return {"teacher_hidden": h, "teacher_head": teacher_head}

    with torch.no_grad():
        out = policy_head_forward(teacher_wrapper, teacher, scoring_inputs(inputs, rollout, t_device), head_fn)
    return {k: v.to(device) for k, v in out.items()}


class TeacherScorer(Protocol):
    """What :class:`DistillationObjective` needs of a teacher: ``submit`` rollouts (their
    processor inputs, the rollout, the records it answers) and get a :class:`PendingScore`
    back at once or when done. ``joins_calls``: whether it is given a generate call's rollouts
    in one submission (a teacher in the training processes: one forward, one gather of its
    weights, per call) or each micro-batch's as soon as it exists (a teacher elsewhere, which
    scores micro-batch k + 1 while the student trains on k). :class:`ColocatedTeacher` scores
    in this process; :class:`videoopd.algo.teacher_service.TeacherService` on Ray actors
    elsewhere."""

    joins_calls: bool

    def submit(
        self,
        inputs: dict[str, Any],
        rollout: Rollout,
        records: list[Any],
        *,
        objective: str,
        temperature: float,
        vocab_size: int,
        device: torch.device | str,
        backend: str = "auto",
    ) -> PendingScore: ...


class ScoredNow:
    """A :class:`PendingScore` that is already done."""

    def __init__(self, view: dict[str, torch.Tensor]):
        self.view = view

    def wait(self) -> float:
        return 0.0

    def result(self) -> dict[str, torch.Tensor]:
        return self.view

    def received_bytes(self) -> int:
        return 0

    def busy_s(self) -> float:
        return 0.0


class ColocatedTeacher:
    """The teacher as a model in this process (``--teacher-placement replicate|shard``):
    ``submit`` scores at once (:func:`score_rollout`), a generate call's rollouts in one
    forward. ``wrapper``: the engine's form of ``model`` (FSDP2), or None. The exact
    objective's head is kept for the run (:attr:`head`: a copy when the teacher is sharded, one
    and not one per micro-batch or step, since it is frozen)."""

    joins_calls = True

    def __init__(self, model: Any, wrapper: Any = None):
        self.model, self.wrapper = model, wrapper if wrapper is not None else model
        self.head: torch.Tensor | None = None

    def submit(
        self,
        inputs: dict[str, Any],
        rollout: Rollout,
        records: list[Any],
        *,
        objective: str,
        temperature: float,
        vocab_size: int,
        device: torch.device | str,
        backend: str = "auto",
    ) -> ScoredNow:
        view = score_rollout(
            self.model,
            self.wrapper,
            inputs,
            rollout,
            objective=objective,
            temperature=temperature,
            vocab_size=vocab_size,
            device=device,
            backend=backend,
            teacher_head=self.head,
        )
        self.head = view.get("teacher_head", self.head)
        return ScoredNow(view)


class RowsOfScore:
    """One micro-batch's part of the :class:`PendingScore` of its generate call
    (:meth:`RolledBatch.teacher_rows`); the call's bytes and time count once, on its first rows."""

    def __init__(self, call_score: PendingScore, rolled: RolledBatch):
        self.call_score, self.rolled = call_score, rolled
        self.first = rolled.rows.start == 0

    def wait(self) -> float:
        return self.call_score.wait()

    def result(self) -> dict[str, torch.Tensor]:
        return self.rolled.teacher_rows(self.call_score.result())

    def received_bytes(self) -> int:
        return self.call_score.received_bytes() if self.first else 0

    def busy_s(self) -> float:
        return self.call_score.busy_s() if self.first else 0.0


def teacher_router(names: list[str], by_source: dict[str, str] | None = None) -> Callable[[Any], str]:
    """record -> the name of the teacher that scores it: the record's own ``teacher`` field (its
    data's choice), else ``by_source``'s teacher for the record's ``source``, else the first of
    ``names``. ValueError for a rule naming no teacher of ``names``; a record naming one is
    refused when scored (:meth:`DistillationObjective.route`, with its file and line)."""
    if not names:
        raise ValueError("names must name at least one teacher, got []")
    by_source = dict(by_source or {})
    unknown = {source: name for source, name in by_source.items() if name not in names}
    if unknown:
        raise ValueError(f"by_source names teachers that are not among {list(names)}: {unknown}")

    def route(record: Any) -> str:
        own = getattr(record, "teacher", None)
        return own if own is not None else by_source.get(getattr(record, "source", None), names[0])

    return route


class TeacherGroups:
    """A submission's rows scored per teacher (several teachers): ``parts`` are (teacher name,
    the rows of the submission it scores, ascending, its :class:`PendingScore` of those rows)."""

    def __init__(self, parts: list[tuple[str, list[int], PendingScore]]):
        self.parts = parts

    def wait(self) -> float:
        return sum(pending.wait() for _, _, pending in self.parts)

    def received_bytes(self) -> int:
        return sum(pending.received_bytes() for _, _, pending in self.parts)

    def busy_s(self) -> float:
        return sum(pending.busy_s() for _, _, pending in self.parts)

    def rows(self, rows: slice, width: int) -> list[tuple[str, torch.Tensor, dict[str, torch.Tensor]]]:
        """The groups of the submission's rows ``rows`` (a micro-batch): (teacher name, the rows
        in the micro-batch [n], that teacher's view of them, cut to ``width`` answer columns)."""
        out = []
        for name, group_rows, pending in self.parts:
            picked = [k for k, row in enumerate(group_rows) if rows.start <= row < rows.stop]
            if not picked:
                continue
            view, index = pending.result(), torch.tensor(picked, dtype=torch.long)
            local = torch.tensor([group_rows[k] - rows.start for k in picked], dtype=torch.long)
            out.append(
                (name, local, {k: v if k == "teacher_head" else v[index.to(v.device), :width] for k, v in view.items()})
            )
        return out


class GroupsOfRows:
    """A micro-batch's part of a :class:`TeacherGroups` (its rows ``rows`` of the submission):
    ``result()`` is a list of (teacher name, rows [n], view) for
    :meth:`DistillationObjective.loss`; bytes and time count once, on the submission's first rows."""

    def __init__(self, groups: TeacherGroups, rows: slice, width: int):
        self.groups, self.rows_, self.width = groups, rows, width
        self.first = rows.start == 0

    def wait(self) -> float:
        return self.groups.wait()

    def result(self) -> list[tuple[str, torch.Tensor, dict[str, torch.Tensor]]]:  # type: ignore[override]
        return self.groups.rows(self.rows_, self.width)

    def received_bytes(self) -> int:
        return self.groups.received_bytes() if self.first else 0

    def busy_s(self) -> float:
        return self.groups.busy_s() if self.first else 0.0
