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
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from opd_kernels import fused_policy_gradient_loss, fused_reverse_kl, token_logprobs
from videoopd.grounding.metrics import parse_span
from videoopd.qwen.collators import concat_model_inputs, select_model_rows
from videoopd.qwen.generation import (
    Rollout,
    generate,
    group_rollout_seeds,
    rollout_seed,
    select_rollout_rows,
    split_rollout,
)
from videoopd.qwen.models import (
    encode_vision,
    is_fsdp_sharded,
    lm_head_weight,
    policy_head_forward,
    with_encoded_vision,
)

__all__: list[str] = []  # nothing here is promised: docs/api.md

OBJECTIVES = ("sampled", "full")
# opd_kernels' vocabulary (its REDUCTIONS, less "none": a step's loss is one number)
REDUCTIONS = ("sequence_sum", "mean", "sum")
# old names still accepted for one release, with a DeprecationWarning, as opd_kernels accepts them
DEPRECATED_REDUCTIONS = {"token_mean": "mean"}
VISION_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts", "pixel_values", "image_grid_thw")

LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class GenerationContext:
    """What an objective's no-grad phases may use: the student as a full-parameter (or FSDP2
    root) model for ``generate``, this process's device, the optimizer step (rollout seeds),
    and whether generation must keep every process stepping (FSDP2 over several processes)."""

    model: Any
    device: torch.device
    step: int
    synced_gpus: bool = False
    # FSDP2: gather the student once per generate call, not per generated token (generate's gather_weights)
    gather_weights: bool = True


@dataclass
class MicroBatch:
    """One micro-batch ready for the student's forward + backward.

    ``student_inputs``: keyword inputs of the base model, on the device. ``loss_fn(hidden
    [B, L, D], head_weight [V, D])`` -> (loss summed over this micro-batch's units, metric
    sums). ``units``: 0-dim tensor, what the step's loss is divided by (summed over the step's
    micro-batches and processes); None: the loss is a plain sum. ``sums``: metric sums known
    before the student's forward (token counts, rewards). ``records``: the prompts' records.
    ``pending``: the teacher's score of the micro-batch while it may still be under way (a
    :class:`PendingScore`; None: nothing to wait for); the loop waits on it (``wait()``)
    right before the micro-batch's forward, so that a teacher elsewhere scores micro-batch
    k + 1 while the student trains on k.
    """

    student_inputs: dict[str, Any]
    loss_fn: LossFn
    units: torch.Tensor | None
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    records: list[Any] = field(default_factory=list)
    pending: PendingScore | None = None


@dataclass
class RolloutCall:
    """One ``generate`` call of a step: the inputs of the micro-batches it joined (each on the
    device, pixels as collated), the joint rollout of all their rows, which the teacher
    scores in one forward, and their records."""

    inputs: list[dict[str, Any]]
    rollout: Rollout
    records: list[Any]


@dataclass
class RolledBatch:
    """One micro-batch after the rollout phase: its inputs on the device, its rollout (cut from
    its call's, as if generated alone), its records, and the call with its rows there."""

    inputs: dict[str, Any]
    rollout: Rollout
    records: list[Any]
    call: RolloutCall
    rows: slice

    def teacher_rows(self, view: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This micro-batch's part of a scoring model's view of its call (per-token [B, A, ...]
        tensors: its rows and answer columns; the shared head as it is)."""
        width = self.rollout.sequences.shape[1] - self.rollout.prompt_length
        return {k: v if k == "teacher_head" else v[self.rows, :width] for k, v in view.items()}


class Objective(Protocol):
    """What the loop needs of an objective (see the module docstring)."""

    name: str

    def rollout_step(self, ctx: GenerationContext, batches: list[dict[str, Any]]) -> list[Any]: ...

    def score_step(self, ctx: GenerationContext, rolled: list[Any]) -> list[MicroBatch]: ...

    def summarize(self, sums: dict[str, float]) -> dict[str, float]: ...


def to_device(inputs: Any, device: torch.device | str) -> dict[str, Any]:
    """A processor batch (BatchFeature or dict) as a dict with its tensors on ``device``."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in dict(inputs).items()}


def scoring_inputs(
    inputs: dict[str, Any], rollout: Rollout, device: torch.device | str, *, sampler: bool = False
) -> dict[str, Any]:
    """Inputs of the scoring forward pass: prompt + answer ids, the vision tensors, on ``device``.
    ``sampler``: for the model that sampled the rollout (the student's training forward), whose
    vision tower output of the rollout (``rollout.student_vision``) stands in for the pixels."""
    out = {"input_ids": rollout.sequences.to(device), "attention_mask": rollout.attention_mask.to(device)}
    for key in VISION_KEYS:
        if key in inputs and inputs[key] is not None:
            out[key] = inputs[key].to(device)
    if inputs.get("mm_token_type_ids") is not None:  # answer tokens are text (type 0)
        types = inputs["mm_token_type_ids"]
        pad = types.new_zeros(types.shape[0], rollout.sequences.shape[1] - types.shape[1])
        out["mm_token_type_ids"] = torch.cat([types, pad], dim=1).to(device)
    return with_encoded_vision(out, rollout.student_vision) if sampler else out


def answer_slice(hidden: torch.Tensor, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden [B, A, D] at positions P-1..L-2, target tokens [B, A], mask [B, A]) of a rollout."""
    p = rollout.prompt_length
    return (
        hidden[:, p - 1 : -1],
        rollout.sequences[:, p:].to(hidden.device),
        rollout.answer_mask[:, p:].to(hidden.device),
    )


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


class PendingScore(Protocol):
    """A teacher's score of one micro-batch, perhaps still under way: ``wait()`` blocks until
    it is done and returns the seconds it blocked; ``result()`` (after or without ``wait``)
    is the teacher's view of :func:`score_rollout`, on the device it was asked for;
    ``received_bytes()``: what came from another process for it, and ``busy_s()``: the seconds
    a teacher elsewhere spent on it (both 0 for a colocated teacher, timed as the step's
    ``teacher`` phase)."""

    def wait(self) -> float: ...

    def result(self) -> dict[str, torch.Tensor]: ...

    def received_bytes(self) -> int: ...

    def busy_s(self) -> float: ...


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


def sample_rollouts(
    ctx: GenerationContext,
    batches: list[dict[str, Any]],
    processor: Any,
    *,
    seed: int,
    num_generations: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    reuse_vision: bool = True,
) -> list[RolledBatch]:
    """The collated ``batches``' rollouts from ONE ``generate`` call over all their rows, one
    answer per row, each batch's cut back from the joint one (:func:`split_rollout`). With
    ``num_generations`` > 1 the rows are groups of copies of a prompt
    (:class:`videoopd.algo.grpo.GroupedCollator`) and copy g samples with its own seed
    (``group_rollout_seeds``); else each row with its record's seed. ``reuse_vision``: the
    student's frozen vision tower encodes each video once, for the rollout and for the training
    forward (``rollout.student_vision``; :func:`videoopd.qwen.models.encode_vision` says when it
    cannot); False re-encodes it in the training forward (measurements)."""
    inputs, encoded, seeds = [], [], []
    for batch in batches:
        records = batch["records"]
        if num_generations > 1:
            if len(records) % num_generations:
                raise ValueError(
                    f"with num_generations={num_generations} a batch holds groups of copies of a prompt "
                    f"(GroupedCollator), got {len(records)} rows"
                )
            seeds += group_rollout_seeds(seed, ctx.step, records)
        else:
            seeds += [rollout_seed(seed, ctx.step, record.id) for record in records]
        inputs.append(to_device(batch["inputs"], ctx.device))
        encoded.append(encode_vision(ctx.model, inputs[-1]) if reuse_vision else None)
    pad = getattr(processor, "tokenizer", processor).pad_token_id
    joint = concat_model_inputs([with_encoded_vision(i, e) for i, e in zip(inputs, encoded)], pad)
    rollout = generate(
        ctx.model,
        processor,
        joint,
        seeds=seeds,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        synced_gpus=ctx.synced_gpus,
        gather_weights=ctx.gather_weights,
    )
    rows = [i["input_ids"].shape[0] for i in inputs]
    parts = [rollout] if len(batches) == 1 else split_rollout(rollout, [i["input_ids"].shape[1] for i in inputs], rows)
    call = RolloutCall(inputs=inputs, rollout=rollout, records=[r for b in batches for r in b["records"]])
    out, start = [], 0
    for batch, batch_inputs, batch_encoded, part, count in zip(batches, inputs, encoded, parts, rows):
        part.student_vision = batch_encoded
        out.append(
            RolledBatch(
                inputs=batch_inputs, rollout=part, records=batch["records"], call=call, rows=slice(start, start + count)
            )
        )
        start += count
    return out


def rollout_calls(batches: list[dict[str, Any]], rows_per_call: int) -> list[list[dict[str, Any]]]:
    """``batches`` in order, grouped into generate calls of at most ``rows_per_call`` rows
    (whole batches; a batch larger than that is a call of its own; 0: one call)."""
    if rows_per_call < 0:
        raise ValueError(f"rows_per_call must be >= 0, got {rows_per_call!r}")
    calls: list[list[dict[str, Any]]] = []
    rows = 0
    for batch in batches:
        size = len(batch["records"])
        if not calls or (rows_per_call and rows + size > rows_per_call):
            calls.append([])
            rows = 0
        calls[-1].append(batch)
        rows += size
    return calls


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
        """One micro-batch's rollout, generated alone."""
        return sample_rollouts(
            ctx,
            [batch],
            self.processor,
            seed=self.seed,
            num_generations=self.num_generations,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            reuse_vision=self.reuse_vision,
        )[0]

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
        pad = getattr(self.processor, "tokenizer", self.processor).pad_token_id
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


class SupervisedObjective:
    """SFT: the mean negative log-likelihood of the answer tokens (and the closing end-of-turn
    token) over the step's answer tokens, from base-model hidden states through
    ``token_logprobs``. Batches come from :class:`videoopd.data.datasets.SFTCollator`."""

    name = "sft"

    def __init__(self, backend: str = "auto"):
        self.backend = backend

    def rollout(self, ctx: GenerationContext, batch: dict[str, Any]) -> dict[str, Any]:
        return batch

    def rollout_step(self, ctx: GenerationContext, batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(batches)

    def score_step(self, ctx: GenerationContext, batches: list[dict[str, Any]]) -> list[MicroBatch]:
        return [self.score(ctx, batch) for batch in batches]

    def score(self, ctx: GenerationContext, batch: dict[str, Any]) -> MicroBatch:
        inputs = to_device(batch["inputs"], ctx.device)
        answer_mask = batch["answer_mask"].to(ctx.device)
        tokens = answer_mask[:, 1:].sum().double()
        return MicroBatch(
            student_inputs=dict(inputs),
            loss_fn=lambda hidden, weight: self.loss(hidden, weight, inputs["input_ids"], answer_mask),
            units=tokens,
            sums={
                "answer_tokens": tokens,
                "sequences": torch.tensor(float(answer_mask.shape[0]), device=ctx.device, dtype=torch.float64),
                "context_tokens": inputs["attention_mask"].sum().double(),
            },
            records=list(batch["records"]),
        )

    def loss(
        self, hidden: torch.Tensor, weight: torch.Tensor, input_ids: torch.Tensor, answer_mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(NLL summed over the answer tokens, {}). Only the hidden states that predict answer
        tokens enter ``token_logprobs``."""
        predicts = answer_mask[:, 1:]
        targets = input_ids[:, 1:][predicts]
        logprobs = token_logprobs(hidden[:, :-1][predicts], weight, targets, backend=self.backend)
        return -logprobs.sum(), {}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        return {"answer_tokens": int(sums.get("answer_tokens", 0.0))}
