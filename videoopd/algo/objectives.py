"""Per-batch objectives of the one training loop: on-policy distillation (sampled, full) and SFT.

An objective turns the collated micro-batches of an optimizer step into :class:`MicroBatch`es
in two no-grad phases, ``rollout_step`` (the student generates: OPD, GRPO; nothing: SFT) and
``score_step`` (the frozen teacher scores the rollouts: OPD; rewards: GRPO; nothing: SFT), and
says how the student's hidden states become a loss (``MicroBatch.loss_fn``, run by the loop
inside the student's forward, where the full LM-head weight exists under every engine). Losses
are *sums*, with ``units`` saying what they are normalised by (sequences or tokens): the loop
divides by the units of the whole optimizer step over every process, so that 2 processes x
batch b step exactly like
1 process x batch 2b. Everything comes from base-model hidden states; no [tokens, vocab]
logits are built. Position t's hidden state predicts token t + 1.

The step's rollouts are generated together: the micro-batches' prompts are joined into as few
``generate`` calls as ``rollout_batch_size`` allows (all of them by default), each sample
drawn with its record's own seed, so that what a prompt samples depends neither on the calls
nor on the other prompts; the teacher scores each call's rollouts in one forward. Each
micro-batch then trains on its own rows, cut back to its own prompt and answer lengths.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Protocol

import torch

from opd_kernels import fused_policy_gradient_loss, fused_reverse_kl, token_logprobs
from videoopd.algo.rollouts import VISION_KEYS as VISION_KEYS
from videoopd.algo.rollouts import GenerationContext as GenerationContext
from videoopd.algo.rollouts import LossFn as LossFn
from videoopd.algo.rollouts import MicroBatch as MicroBatch
from videoopd.algo.rollouts import PendingScore as PendingScore
from videoopd.algo.rollouts import RolledBatch as RolledBatch
from videoopd.algo.rollouts import RolloutCall as RolloutCall
from videoopd.algo.rollouts import answer_slice as answer_slice
from videoopd.algo.rollouts import rollout_calls as rollout_calls
from videoopd.algo.rollouts import sample_rollouts as sample_rollouts
from videoopd.algo.rollouts import scoring_inputs as scoring_inputs
from videoopd.algo.rollouts import to_device as to_device
from videoopd.algo.supervised import SupervisedObjective as SupervisedObjective
from videoopd.algo.teachers import ColocatedTeacher as ColocatedTeacher
from videoopd.algo.teachers import GroupsOfRows as GroupsOfRows
from videoopd.algo.teachers import RowsOfScore as RowsOfScore
from videoopd.algo.teachers import ScoredNow as ScoredNow
from videoopd.algo.teachers import TeacherGroups as TeacherGroups
from videoopd.algo.teachers import TeacherScorer as TeacherScorer
from videoopd.algo.teachers import score_rollout as score_rollout
from videoopd.algo.teachers import teacher_router as teacher_router
from videoopd.grounding.metrics import parse_span
from videoopd.qwen.collators import concat_model_inputs, select_model_rows
from videoopd.qwen.generation import Rollout, select_rollout_rows
from videoopd.qwen.models import lm_head_weight, tokenizer_of

__all__: list[str] = []  # nothing here is promised: docs/api.md

OBJECTIVES = ("sampled", "full")
# opd_kernels' vocabulary (its REDUCTIONS, less "none": a step's loss is one number)
REDUCTIONS = ("sequence_sum", "mean", "sum")
# old names still accepted for one release, with a DeprecationWarning, as opd_kernels accepts them
DEPRECATED_REDUCTIONS = {"token_mean": "mean"}


class Objective(Protocol):
    """What the loop needs of an objective (see the module docstring)."""

    name: str

    def rollout_step(self, ctx: GenerationContext, batches: list[dict[str, Any]]) -> list[Any]: ...

    def score_step(self, ctx: GenerationContext, rolled: list[Any]) -> list[MicroBatch]: ...

    def summarize(self, sums: dict[str, float]) -> dict[str, float]: ...


def group_mean_baseline(values: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B, 1]: for each row of ``values`` [B, T], the mean of ``values`` over the masked tokens
    of its group (``group_size`` adjacent rows: the answers to one prompt); 0 for a group
    without tokens. Masked-out positions are never read (they may hold NaN)."""
    if values.dim() != 2 or values.shape[0] % group_size:
        raise ValueError(f"values must be [groups * {group_size}, T], got shape {tuple(values.shape)}")
    picked = torch.where(mask, values, torch.zeros_like(values)).reshape(-1, group_size * values.shape[1])
    counts = mask.reshape(-1, group_size * values.shape[1]).sum(dim=1, keepdim=True).clamp_min(1)
    means = picked.sum(dim=1, keepdim=True) / counts
    return means.repeat_interleave(group_size, dim=0)


def check_reduction(reduction: str, stacklevel: int = 3) -> str:
    """``reduction`` if one of :data:`REDUCTIONS`; an old name (:data:`DEPRECATED_REDUCTIONS`)
    warns (DeprecationWarning) and maps to its new one; else a ValueError."""
    if reduction in DEPRECATED_REDUCTIONS:
        new = DEPRECATED_REDUCTIONS[reduction]
        warnings.warn(
            f"reduction {reduction!r} is deprecated; use {new!r}, which means the same",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
        return new
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


class SampledObjective:
    """What the objectives that sample answers share (:class:`DistillationObjective`,
    :class:`videoopd.algo.grpo.GRPOObjective`): the sampling settings, ``rollout`` (the student
    answers each row of a batch, :func:`sample_rollout`) and the step's units of a rollout per
    ``reduction``. ``vocab_size``: the student's head rows a scoring model's log-probs are
    taken over (None: the student's head's)."""

    def __init__(
        self,
        processor: Any,
        *,
        reduction: str,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        seed: int = 0,
        vocab_size: int | None = None,
        backend: str = "auto",
        num_generations: int = 1,
        reuse_vision: bool = True,
        rollout_batch_size: int = 0,
    ):
        reduction = check_reduction(reduction)
        if num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {num_generations!r}")
        if rollout_batch_size < 0:
            raise ValueError(
                f"rollout_batch_size must be >= 0 (0: all of a step's rollouts), got {rollout_batch_size!r}"
            )
        self.processor, self.reduction, self.vocab_size, self.backend = processor, reduction, vocab_size, backend
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.seed, self.num_generations, self.reuse_vision = seed, num_generations, reuse_vision
        self.rollout_batch_size = rollout_batch_size

    def rollout_step(self, ctx: GenerationContext, batches: list[dict[str, Any]]) -> list[RolledBatch]:
        """The step's micro-batches' rollouts, generated in calls of at most
        ``rollout_batch_size`` rollouts (0: one call)."""
        return [
            rolled
            for call in rollout_calls(batches, self.rollout_batch_size)
            for rolled in sample_rollouts(
                ctx,
                call,
                self.processor,
                seed=self.seed,
                num_generations=self.num_generations,
                temperature=self.temperature,
                top_p=self.top_p,
                max_new_tokens=self.max_new_tokens,
                reuse_vision=self.reuse_vision,
            )
        ]

    def rollout(self, ctx: GenerationContext, batch: dict[str, Any]) -> RolledBatch:
        """One micro-batch's rollout, generated alone (a step of one micro-batch is one call)."""
        return self.rollout_step(ctx, [batch])[0]

    def score_step(self, ctx: GenerationContext, rolled: list[RolledBatch]) -> list[MicroBatch]:
        return [self.score(ctx, r) for r in rolled]

    def vocab(self, ctx: GenerationContext) -> int:
        """The vocabulary a scoring model's log-probs are taken over."""
        return self.vocab_size if self.vocab_size is not None else lm_head_weight(ctx.model).shape[0]

    def units(self, ctx: GenerationContext, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(answer tokens, sequences, the units per ``reduction``) of a rollout, 0-dim float64
        tensors on the device (units None for "sum")."""
        answer_mask = rollout.answer_mask[:, rollout.prompt_length :].to(ctx.device)
        tokens = answer_mask.sum().double()
        sequences = torch.tensor(float(answer_mask.shape[0]), dtype=torch.float64, device=ctx.device)
        return tokens, sequences, {"sequence_sum": sequences, "mean": tokens, "sum": None}[self.reduction]


class DistillationObjective(SampledObjective):
    """On-policy distillation: the student samples ``num_generations`` answers per prompt (1:
    the paper's), the frozen teacher scores them, the student minimises the reverse KL on its
    own tokens.

    ``objective`` "sampled" (the paper's): ``sampled_reverse_kl_loss`` on the sampled tokens'
    log-probs (computed as ``fused_policy_gradient_loss``, one pass from the hidden states),
    optionally with two variance reductions: with ``num_generations`` G > 1 (batches from a
    :class:`videoopd.algo.grpo.GroupedCollator`) each answer's per-token advantage
    ``lp_t - lp_s`` is taken relative to its prompt's group (minus the group's mean over its
    answer tokens), and ``advantage_clip`` c clamps it to [-c, c]. "full": the exact reverse KL
    over the vocabulary (``fused_reverse_kl``; G > 1 only adds rollouts). ``reduction``
    "sequence_sum" (the paper's: summed over each answer, averaged over the step's sequences),
    "mean" (averaged over the step's answer tokens) or "sum".

    ``teacher``: the frozen teacher as a model in this process (scored through
    ``teacher_wrapper``, its engine's form, when given: :class:`ColocatedTeacher`) or any
    :class:`TeacherScorer` (the Ray service: :mod:`videoopd.algo.teacher_service`); or several,
    a dict {name: teacher} (models here wrapped through ``teacher_wrapper`` {name: wrapper}),
    with ``teacher_of(record) -> name`` saying which scores a record (default: the first).
    Each submission's rows are then grouped by teacher and scored per group, and the loss is
    the sum of the groups' losses; the step row adds ``teacher/<name>/reverse_kl`` and
    ``teacher/<name>/answer_tokens``.
    """

    name = "opd"

    def __init__(
        self,
        teacher: Any,
        processor: Any,
        *,
        teacher_wrapper: Any = None,
        objective: str = "sampled",
        reduction: str = "sequence_sum",
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        seed: int = 0,
        vocab_size: int | None = None,
        backend: str = "auto",
        num_generations: int = 1,
        advantage_clip: float | None = None,
        reuse_vision: bool = True,
        rollout_batch_size: int = 0,
        teacher_of: Callable[[Any], str] | None = None,
    ):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        super().__init__(
            processor,
            reduction=reduction,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
            vocab_size=vocab_size,
            backend=backend,
            num_generations=num_generations,
            reuse_vision=reuse_vision,
            rollout_batch_size=rollout_batch_size,
        )
        teachers = teacher if isinstance(teacher, dict) else {"teacher": teacher}
        wrappers = teacher_wrapper if isinstance(teacher_wrapper, dict) else {"teacher": teacher_wrapper}
        if not teachers:
            raise ValueError("teacher must be a teacher or a non-empty dict {name: teacher}, got {}")
        # a model in this process, or anything that scores like one (a TeacherScorer: the service)
        self.teachers: dict[str, Any] = {
            name: t if hasattr(t, "submit") else ColocatedTeacher(t, wrappers.get(name)) for name, t in teachers.items()
        }
        self.teacher = next(iter(self.teachers.values()))
        first = next(iter(self.teachers))
        self.teacher_of = teacher_of or (lambda record: first)
        self.objective = objective
        self.advantage_clip = advantage_clip

    def score_step(self, ctx: GenerationContext, rolled: list[RolledBatch]) -> list[MicroBatch]:
        """The micro-batches of a step: each generate call's rollouts submitted to the teacher
        at once (one forward), or each micro-batch's on its own to a teacher elsewhere
        (:attr:`TeacherScorer.joins_calls`); with several teachers, each submission's rows
        grouped by teacher (:meth:`submit_groups`)."""
        several = len(self.teachers) > 1
        if not self.teacher.joins_calls:
            if several:
                return [
                    self.micro_batch(
                        ctx,
                        r,
                        GroupsOfRows(
                            self.submit_groups(ctx, r.inputs, r.rollout, r.records),
                            slice(0, len(r.records)),
                            self.width(r),
                        ),
                    )
                    for r in rolled
                ]
            return [self.micro_batch(ctx, r, self.submit(ctx, r.inputs, r.rollout, r.records)) for r in rolled]
        pad = tokenizer_of(self.processor).pad_token_id
        calls: dict[int, Any] = {}
        out = []
        for r in rolled:
            if id(r.call) not in calls:
                inputs = concat_model_inputs(r.call.inputs, pad)
                calls[id(r.call)] = (
                    self.submit_groups(ctx, inputs, r.call.rollout, r.call.records)
                    if several
                    else self.submit(ctx, inputs, r.call.rollout, r.call.records)
                )
            pending = calls[id(r.call)]
            out.append(
                self.micro_batch(
                    ctx, r, GroupsOfRows(pending, r.rows, self.width(r)) if several else RowsOfScore(pending, r)
                )
            )
        return out

    @staticmethod
    def width(rolled: RolledBatch) -> int:
        return rolled.rollout.sequences.shape[1] - rolled.rollout.prompt_length

    def route(self, records: list[Any]) -> list[str]:
        """The teacher name of each record (``teacher_of``); ValueError for a name not among the
        teachers, naming the record and where it was read."""
        names = [self.teacher_of(record) for record in records]
        for record, name in zip(records, names):
            if name not in self.teachers:
                where = getattr(record, "annotation_file", None)
                where = f" ({where}, {record.annotation_location})" if where else ""
                raise ValueError(
                    f"record {getattr(record, 'id', record)}{where} names teacher {name!r}; the "
                    f"teachers are {list(self.teachers)}"
                )
        return names

    def submit_groups(
        self, ctx: GenerationContext, inputs: dict[str, Any], rollout: Rollout, records: list[Any]
    ) -> TeacherGroups:
        """A submission's rows grouped by teacher (:meth:`route`), each group submitted to its
        teacher as a batch of its own (its rows of the inputs and the rollout)."""
        names = self.route(list(records))
        parts = []
        for name in dict.fromkeys(names):
            rows = [i for i, n in enumerate(names) if n == name]
            whole = len(rows) == len(names)
            part_inputs = inputs if whole else select_model_rows(inputs, rows)
            part_rollout = rollout if whole else select_rollout_rows(rollout, rows)
            parts.append(
                (
                    name,
                    rows,
                    self.submit(
                        ctx, part_inputs, part_rollout, [records[i] for i in rows], teacher=self.teachers[name]
                    ),
                )
            )
        return TeacherGroups(parts)

    def score(self, ctx: GenerationContext, rolled: RolledBatch) -> MicroBatch:
        """One micro-batch, scored with the rest of its generate call."""
        return self.score_step(ctx, [rolled])[0]

    def submit(
        self, ctx: GenerationContext, inputs: dict[str, Any], rollout: Rollout, records: list[Any], teacher: Any = None
    ) -> PendingScore:
        return (teacher or self.teacher).submit(
            inputs,
            rollout,
            list(records),
            objective=self.objective,
            temperature=self.temperature,
            vocab_size=self.vocab(ctx),
            device=ctx.device,
            backend=self.backend,
        )

    def micro_batch(self, ctx: GenerationContext, rolled: RolledBatch, pending: PendingScore) -> MicroBatch:
        inputs, rollout, records = rolled.inputs, rolled.rollout, rolled.records
        tokens, sequences, units = self.units(ctx, rollout)
        parsed = sum(parse_span(a) is not None for a in rollout.answers)
        sums = {
            "answer_tokens": tokens,
            "sequences": sequences,
            "context_tokens": rollout.attention_mask.sum().double().to(ctx.device),
            "parsed_answers": torch.tensor(float(parsed), dtype=torch.float64, device=ctx.device),
        }
        if len(self.teachers) > 1:
            answer_mask = rollout.answer_mask[:, rollout.prompt_length :].to(ctx.device)
            names = self.route(list(records))
            for name in self.teachers:  # every name, for every process to sum the same keys
                rows = torch.tensor([n == name for n in names], device=ctx.device)
                sums[f"teacher/{name}/answer_tokens"] = answer_mask[rows].sum().double()
        return MicroBatch(
            student_inputs=scoring_inputs(inputs, rollout, ctx.device, sampler=True),
            loss_fn=lambda hidden, weight: self.loss(hidden, weight, rollout, pending.result()),
            units=units,
            sums=sums,
            records=list(records),
            pending=pending,
        )

    def loss(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        rollout: Rollout,
        teacher_view: dict[str, torch.Tensor] | list[tuple[str, torch.Tensor, dict[str, torch.Tensor]]],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss summed over this micro-batch's answer tokens, {"reverse_kl_sum": ...}).
        ``teacher_view``: one teacher's view of every row, or (teacher name, rows, its view of
        them) per group of rows (several teachers): the sum of each group's loss alone."""
        h, tokens, mask = answer_slice(hidden, rollout)
        # the sampler's own log-probs as the old policy's: the importance ratio corrects for
        # what the sampler did differently from the scored softmax (nucleus, suppressed tokens)
        old = rollout.sampler_logprobs.to(h.device) if rollout.sampler_logprobs is not None else None
        if isinstance(teacher_view, dict):
            return self.rows_loss(h, weight, tokens, mask, old, teacher_view)
        # every teacher's key, rows or not: processes sum the step's metrics key by key
        total, sums = (
            None,
            {f"teacher/{name}/reverse_kl_sum": h.new_zeros((), dtype=torch.float64) for name in self.teachers},
        )
        for name, rows, view in teacher_view:
            rows = rows.to(h.device)
            loss, part = self.rows_loss(
                h[rows], weight, tokens[rows], mask[rows], old[rows] if old is not None else None, view
            )
            total = loss if total is None else total + loss
            for key, value in part.items():
                sums[key] = sums[key] + value if key in sums else value
            sums[f"teacher/{name}/reverse_kl_sum"] = part["reverse_kl_sum"]
        return total, sums

    def rows_loss(
        self,
        h: torch.Tensor,
        weight: torch.Tensor,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        old: torch.Tensor | None,
        teacher_view: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`loss` of rows scored by one teacher: their answer hidden states [B, A, D], tokens,
        mask, sampler log-probs (or None) and the teacher's view of them."""
        if self.objective == "sampled":
            teacher_lp = teacher_view["teacher_logprobs"]
            baseline = None
            if self.num_generations > 1:
                # the group's mean advantage needs every answer's log-probs before any coefficient
                # of the fused pass: one forward-only pass (1 matmul a chunk; the fused one adds 3)
                with torch.no_grad():
                    lp = token_logprobs(h, weight, tokens, temperature=self.temperature, backend=self.backend)
                baseline = group_mean_baseline(teacher_lp - lp, mask, self.num_generations)
            # sampled_reverse_kl_loss on token_logprobs, in one pass: the ratio is not clipped
            loss, m = fused_policy_gradient_loss(
                h,
                weight,
                tokens,
                mask,
                teacher_logprobs=teacher_lp,
                old_logprobs=old,
                baseline=baseline,
                clip_eps=None,
                advantage_clip=self.advantage_clip,
                temperature=self.temperature,
                reduction="sum",
                backend=self.backend,
            )
            sums = {"reverse_kl_sum": (m["reverse_kl"] * m["tokens"]).double()}
            for name in ("importance_ratio", "advantage_clipped_fraction"):
                if name in m:
                    sums[f"{name}_sum"] = (m[name] * m["tokens"]).double()
            return loss, sums
        h_t = teacher_view["teacher_hidden"].to(dtype=h.dtype)
        w_t = teacher_view["teacher_head"].to(dtype=h.dtype)
        loss = fused_reverse_kl(
            h, weight, h_t, w_t, mask=mask, temperature=self.temperature, reduction="sum", backend=self.backend
        )
        return loss, {"reverse_kl_sum": loss.detach().double()}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        tokens = sums.get("answer_tokens", 0.0)
        sequences = max(1.0, sums.get("sequences", 0.0))
        out = {
            "reverse_kl": sums.get("reverse_kl_sum", 0.0) / max(1.0, tokens),
            "answer_tokens": int(tokens),
            "mean_answer_len": tokens / sequences,
            "parsed_rate": sums.get("parsed_answers", 0.0) / sequences,
            "rollouts": int(sums.get("sequences", 0.0)),
        }
        for name in ("importance_ratio", "advantage_clipped_fraction"):
            if f"{name}_sum" in sums:
                out[name] = sums[f"{name}_sum"] / max(1.0, tokens)
        for name in self.teachers if len(self.teachers) > 1 else ():
            teacher_tokens = sums.get(f"teacher/{name}/answer_tokens", 0.0)
            out[f"teacher/{name}/answer_tokens"] = int(teacher_tokens)
            kl_sum = sums.get(f"teacher/{name}/reverse_kl_sum", 0.0)
            out[f"teacher/{name}/reverse_kl"] = kl_sum / max(1.0, teacher_tokens)
        return out
