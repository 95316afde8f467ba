"""Collators: a batch of decoded items (:class:`videoopd.data.datasets.GroundingVideoDataset`)
as Qwen-VL processor inputs, in DataLoader workers.

:class:`GroundingCollator` renders the grounding prompt for generation (left-padded: rollouts,
evaluation); :class:`SFTCollator` renders prompt + perfect answer for supervised fine-tuning
(right-padded, answer marked).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from videoopd.qwen.models import concat_encoded_vision, tokenizer_of
from videoopd.qwen.processing import processor_inputs
from videoopd.qwen.prompts import (
    ANSWER_PREFIXES,
    PROMPT_STYLES,
    STYLE_DEFAULT,
    build_messages,
    format_answer,
    record_system_prompt,
    render_chat,
)

__all__: list[str] = []  # nothing here is promised: docs/api.md

# Per-token [B, L] inputs of a left-padded batch, and the value their padding holds (None: the pad token id).
TOKEN_INPUTS = {"input_ids": None, "attention_mask": 0, "mm_token_type_ids": 0}


def concat_model_inputs(batches: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Left-padded processor batches (:class:`GroundingCollator`'s ``inputs``, on one device) as
    one batch of all their rows, in order, for one ``generate`` call: the per-token inputs
    left-padded to the longest prompt (``pad_token_id`` in ``input_ids``, 0 in the masks), the
    per-video tensors (pixels, grids, ``second_per_grid_ts``) and the vision encoder outputs
    (``mm_encoder_outputs``) joined in order. A single batch comes back as it is."""
    if not batches:
        raise ValueError("batches must not be empty")
    if len(batches) == 1:
        return dict(batches[0])
    keys = set(batches[0])
    if any(set(b) != keys for b in batches):
        raise ValueError(f"batches have different inputs: {[sorted(b) for b in batches]}")
    length = max(b["input_ids"].shape[1] for b in batches)
    out: dict[str, Any] = {}
    for key in batches[0]:
        values = [b[key] for b in batches]
        if key in TOKEN_INPUTS:
            fill = pad_token_id if TOKEN_INPUTS[key] is None else TOKEN_INPUTS[key]
            out[key] = torch.cat([torch.nn.functional.pad(v, (length - v.shape[1], 0), value=fill) for v in values])
        elif key == "mm_encoder_outputs":
            out[key] = concat_encoded_vision(values)
        elif all(torch.is_tensor(v) for v in values):
            out[key] = torch.cat(values, dim=0)
        elif all(v is None for v in values):
            out[key] = None
        else:
            raise TypeError(f"cannot concatenate input {key!r} of types {[type(v).__name__ for v in values]}")
    return out


# Per-video inputs of a processor batch and the [videos, 3] grid that says how many patch rows each has.
VIDEO_INPUTS = {"pixel_values_videos": "video_grid_thw", "pixel_values": "image_grid_thw"}


def select_model_rows(inputs: dict[str, Any], rows: Sequence[int]) -> dict[str, Any]:
    """The rows ``rows`` (ascending indices) of a processor batch of one video per row
    (:class:`GroundingCollator`'s ``inputs``): the per-token inputs' rows, without the left
    padding columns all of them share (as the rows would be padded alone, and as
    :func:`videoopd.qwen.generation.select_rollout_rows` cuts their rollout), each selected
    video's patches, grid and ``second_per_grid_ts``. The vision encoder outputs (the
    student's) are left out: whoever scores the rows encodes the pixels itself."""
    batch = inputs["input_ids"].shape[0]
    if not rows or list(rows) != sorted(set(rows)) or rows[0] < 0 or rows[-1] >= batch:
        raise ValueError(f"rows must be ascending distinct indices below {batch}, got {list(rows)}")
    index = torch.tensor(list(rows), dtype=torch.long)
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if key == "mm_encoder_outputs" or value is None:
            continue
        if key in TOKEN_INPUTS or key in ("video_grid_thw", "image_grid_thw", "second_per_grid_ts"):
            if value.shape[0] != batch:
                raise ValueError(
                    f"select_model_rows needs one video per row: {key} has {value.shape[0]} rows for {batch} prompts"
                )
            out[key] = value[index.to(value.device)]
            if key in TOKEN_INPUTS:
                out[key] = out[key][:, first_column(inputs["attention_mask"][index.to(value.device)]) :]
        elif key in VIDEO_INPUTS:
            sizes = inputs[VIDEO_INPUTS[key]].prod(dim=-1).tolist()
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            out[key] = torch.cat([value[starts[i] : starts[i] + sizes[i]] for i in rows])
        else:
            out[key] = value
    return out


def first_column(attention_mask: torch.Tensor) -> int:
    """The first column of a left-padded batch's ``attention_mask`` [B, L] that some row attends to."""
    attended = attention_mask.bool().any(dim=0).nonzero()
    return int(attended[0]) if len(attended) else attention_mask.shape[1]


class GroundingCollator:
    """Renders the prompt through the processor's chat template and runs the processor on a
    batch of decoded items. Items whose video failed (``video=None``) are passed through in
    ``failed`` as (record, error message), their exceptions in ``failed_exceptions``, and left
    out of ``inputs`` (None when no video of the batch decoded). ``system_prompt``: see
    :func:`videoopd.qwen.prompts.build_messages` (default: the style's own). ``normalize_query``:
    how the query is shown (an evaluation protocol's rule, e.g. TimeLens strips its periods). A
    record with its own ``prompt`` (a data file's user turn as written) is shown that prompt;
    with ``system_prompt=DATA_SYSTEM``, its own system prompt where its data file gave one."""

    def __init__(
        self,
        processor: Any,
        prompt_style: str = "paper",
        system_prompt: Any = STYLE_DEFAULT,
        normalize_query: Callable[[str], str] | None = None,
    ):
        if not callable(processor):
            raise TypeError(f"processor must be a callable Qwen-VL processor, got {type(processor).__name__}")
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {sorted(PROMPT_STYLES)}, got {prompt_style!r}")
        self.processor = processor
        self.prompt_style = prompt_style
        self.system_prompt = system_prompt
        self.normalize_query = normalize_query

    def texts(self, records: Sequence[Any]) -> list[str]:
        normalize = self.normalize_query or (lambda query: query)
        prefix = ANSWER_PREFIXES.get(self.prompt_style, "")
        return [
            render_chat(
                self.processor,
                build_messages(
                    normalize(record.query),
                    self.prompt_style,
                    record_system_prompt(self.system_prompt, record),
                    prompt=getattr(record, "prompt", None),
                ),
            )
            + prefix
            for record in records
        ]

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        ok = [item for item in items if item["video"] is not None]
        failed = [item for item in items if item["video"] is None]
        batch: dict[str, Any] = {
            "records": [item["record"] for item in ok],
            "videos": [item["video"] for item in ok],
            "data_issues": [item.get("data_issue") for item in ok],  # per record; None when fine
            "failed": [(item["record"], item["error"]) for item in failed],
            "failed_exceptions": [item.get("exception") for item in failed],
            "inputs": None,
        }
        if ok:
            batch["inputs"] = processor_inputs(self.processor, self.texts(batch["records"]), batch["videos"])
        return batch


class SFTCollator:
    """Prompt + answer examples, right-padded, with the answer positions marked.

    Returns ``{"inputs": processor outputs, "answer_mask": bool [B, L], "records": [...],
    "data_issues": [...], "failed": [...], "failed_exceptions": [...]}`` (per record, see
    :class:`GroundingVideoDataset`); ``answer_mask`` marks the answer tokens and the closing
    end-of-turn token. Items whose video failed are left out and passed through in ``failed``
    as :class:`GroundingCollator` does; with none decodable, ``inputs`` and ``answer_mask`` are
    None (the training loop skips such a batch). The answer is
    located by tokenizing it alone and checking it against the tail of the full sequence, so
    a tokenizer that merges across the prompt/answer boundary is an error, not a silent shift.
    ``system_prompt`` as for :class:`GroundingCollator`.
    """

    def __init__(self, processor: Any, prompt_style: str = "paper", system_prompt: Any = STYLE_DEFAULT):
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {sorted(PROMPT_STYLES)}, got {prompt_style!r}")
        self.processor = processor
        self.system_prompt = system_prompt
        self.tokenizer = tokenizer_of(processor)
        self.prompt_style = prompt_style
        self.end_of_turn = self.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def answer(self, record: Any) -> str:
        return format_answer(record.span, self.prompt_style)

    def text(self, record: Any) -> str:
        messages = build_messages(
            record.query,
            self.prompt_style,
            record_system_prompt(self.system_prompt, record),
            answer=self.answer(record),
            prompt=getattr(record, "prompt", None),
        )
        # The template closes the turn with "<|im_end|>\n"; training stops at <|im_end|>.
        return render_chat(self.processor, messages, add_generation_prompt=False).rstrip("\n")

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        failed = [item for item in items if item["video"] is None]
        items = [item for item in items if item["video"] is not None]
        batch: dict[str, Any] = {
            "inputs": None,
            "answer_mask": None,
            "records": [item["record"] for item in items],
            "data_issues": [item.get("data_issue") for item in items],
            "failed": [(item["record"], item["error"]) for item in failed],
            "failed_exceptions": [item.get("exception") for item in failed],
        }
        if not items:
            return batch
        records = batch["records"]
        videos = [item["video"] for item in items]
        inputs = processor_inputs(self.processor, [self.text(r) for r in records], videos, padding_side="right")
        ids, attention = inputs["input_ids"], inputs["attention_mask"]
        answer_mask = torch.zeros_like(ids, dtype=torch.bool)
        lengths = attention.sum(dim=1).tolist()
        for row, record in enumerate(records):
            answer_ids = self.tokenizer(self.answer(record), add_special_tokens=False)["input_ids"] + [self.end_of_turn]
            end = lengths[row]
            start = end - len(answer_ids)
            if ids[row, start:end].tolist() != answer_ids:
                raise ValueError(
                    f"{record.id}: the answer's tokens differ from the tail of the tokenized example; "
                    "the tokenizer merges across the prompt/answer boundary"
                )
            answer_mask[row, start:end] = True
        batch["inputs"], batch["answer_mask"] = inputs, answer_mask
        return batch
