"""A step's rollouts and what the loop gets from them: the generation context, the generate calls a step's
collated batches are grouped into, their rollouts (:func:`sample_rollouts`), the student's and teacher's scoring
inputs, and the :class:`MicroBatch` an objective hands the loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from videoopd.qwen.collators import concat_model_inputs
from videoopd.qwen.generation import Rollout, generate, group_rollout_seeds, rollout_seed, split_rollout
from videoopd.qwen.models import encode_vision, tokenizer_of, with_encoded_vision

__all__: list[str] = []  # nothing here is promised: docs/api.md


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
    pad = tokenizer_of(processor).pad_token_id
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
