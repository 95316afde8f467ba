"""Temporal-grounding evaluation: batched greedy generation, answer parsing, R1@{0.3,0.5,0.7}, mIoU.

Command line::

    python -m videoopd.eval --model PATH --data FILE [--format auto] [--video-root DIR]
        [--limit N] [--resume] [--output FILE] [--per_device_eval_batch_size B]
        [--protocol paper|timelens|time-r1]
        [--multi-span auto|skip|first|longest|any] [--prompt-style paper|timelens|time-r1]

``--protocol`` (:mod:`videoopd.grounding.protocols`) sets the prompt, the query's
normalisation, the frame budget (where --fps / --min-pixels / --total-pixels are not given),
how answers are parsed and how IoUs are compared: what that project's evaluation does. The
predictions keep the raw answers, and ``<stem>.metrics.json`` scores them under every
protocol (``protocols``: one block each) besides the chosen one (``overall``, ``per_source``).
Zero-length ground truths are loaded (reported) and scored by each protocol's rule. On
QVHighlights every block also holds its moment-retrieval metrics (MR-R1@0.5/0.7, MR-mAP@0.5,
@0.75 and averaged, as moment_detr's standalone_eval defines them, over every window: the
default --multi-span auto keeps them all on QVHighlights).

The library entry point is :func:`videoopd.evaluation.evaluate.evaluate`, which the training
loop calls for held-out evaluation with its in-memory model and processor.

Files written: the predictions ``--output`` (JSONL, a row per query), its identity sidecar
``<output>.meta.json`` and ``<output stem>.metrics.json``. The identity records the data
file (path, sha256, format, video root, durations file), the model path, the dtype the
weights get (``auto`` resolved for the device) and the decoding settings (prompt,
max_new_tokens, fps, frames, pixels; decoding is greedy).
Frame sampling options not given take the values the checkpoint records it was trained with
(``videoopd.sft`` and ``videoopd.train`` save them with the model:
:func:`videoopd.qwen.processing.record_preprocessing`), else the Qwen defaults.
``--resume`` keeps old rows only when all of these match and is refused (exit 2, naming the
differing fields) otherwise, or when the file has no sidecar (written by a version before
identities were recorded: its rows cannot be told apart from another data set's).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from videoopd.data.annotations import MULTI_SPAN_POLICIES, LoadSummary, load_annotations
from videoopd.data.video import DecodeConfig, VideoDecodeError
from videoopd.evaluation.evaluate import (
    check_resumable,
    evaluate,
    file_sha256,
    format_metrics_table,
    identity_path,
    predictions_identity,
)
from videoopd.grounding.protocols import PROTOCOL_NAMES, PROTOCOLS
from videoopd.training.config import (
    AnnotationOptions,
    ConfigError,
    DecodeOptions,
    LoggingOptions,
    ModelOptions,
    fail,
    opt,
    parse_config,
)

__all__ = ["main"]

PROG = "python -m videoopd.eval"


@dataclass
class EvalConfig(LoggingOptions, ModelOptions, DecodeOptions, AnnotationOptions):
    """evaluation"""

    model: str | None = opt("local checkpoint folder (never downloaded)", required=True)
    data: str | None = opt(
        "annotation file: Charades-STA .txt, ActivityNet Captions, TimeLens-Bench or TVGBench "
        "JSON, TimeLens-100K, QVHighlights or plain JSONL",
        required=True,
    )
    durations: str | None = opt("Charades-STA: CSV with id and length columns (default: probe each video)")
    strict: bool = opt("stop at the first annotation problem instead of reporting it and going on", False)
    limit: int | None = opt("evaluate the first N queries (default: all)", gt=0)
    resume: bool = opt(
        "keep the rows already in --output and evaluate the rest; refused when --output was written "
        "for another data file, model or decoding settings (its .meta.json)",
        False,
    )
    overwrite: bool = opt("replace an existing --output (without it, or --resume, an existing one is refused)", False)
    output: str | None = opt(
        "predictions JSONL, with <output>.meta.json and <stem>.metrics.json beside it "
        "(default: <data stem>.predictions.jsonl in the current folder)"
    )
    per_device_eval_batch_size: int = opt("prompts per generate call (per process), left-padded", 1, gt=0)
    protocol: Literal[PROTOCOL_NAMES] = opt(
        "evaluation protocol: paper (ours), timelens or time-r1: that evaluation's prompt, query normalisation, "
        "frame budget (unless --fps/--min-pixels/--total-pixels are given), answer parsing and threshold rule; "
        "metrics.json also scores the answers under every protocol",
        "paper",
    )
    multi_span: Literal[MULTI_SPAN_POLICIES] = opt(
        "a query with several windows: auto (the format's own rule: any for QVHighlights, skip elsewhere), skip it "
        "(reported), take the first or the longest, or any (a prediction scores its best IoU over the windows)",
        "auto",
    )
    on_video_error: Literal["report", "raise"] = opt(
        "report: count an undecodable video as a failed (IoU 0) row; raise: stop", "report"
    )

    def validate(self) -> None:
        super().validate()
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other: choose one")
        style = PROTOCOLS[self.protocol].prompt_style
        if self.protocol != "paper" and self.prompt_style not in ("paper", style):
            raise ConfigError(
                f"--protocol {self.protocol} prompts with its own style ({style}); "
                f"--prompt-style {self.prompt_style} contradicts it"
            )

    @property
    def effective_prompt_style(self) -> str:
        """The prompt: --prompt-style under the paper protocol, else the protocol's own."""
        return self.prompt_style if self.protocol == "paper" else PROTOCOLS[self.protocol].prompt_style


# eval's own defaults for the options it shares with videoopd.train and videoopd.sft
COMMAND_DEFAULTS: dict[str, Any] = {"dataloader_num_workers": 2}
DESCRIPTION = "Evaluate a local Qwen2.5-VL / Qwen3-VL checkpoint on temporal video grounding."


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _metrics_path(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(".jsonl") + ".metrics.json")


def _same_file(first: Path, second: Path) -> bool:
    # samefile sees through hard links too; resolve() covers paths not created yet.
    if first.exists() and second.exists():
        return os.path.samefile(first, second)
    return first.resolve() == second.resolve()


def _output_problem(data: Path, output: Path) -> str | None:
    """Why the files eval writes for ``output`` cannot be written, or None: checked before
    any work, so that a wrong --output never replaces the annotations."""
    if output.is_dir():
        return f"--output {output} is a folder; give a file path, e.g. {output / (data.stem + '.predictions.jsonl')}"
    blocking = next((folder for folder in output.parents if folder.exists() and not folder.is_dir()), None)
    if blocking is not None:
        return f"--output {output}: {blocking} is a file, not a folder"
    if _same_file(output, data):
        return f"--output {output} is the --data file {data}: the predictions would replace the annotations"
    for kind, path in (("metrics", _metrics_path(output)), ("identity", identity_path(output))):
        if _same_file(path, data):
            return f"--output {output} would write its {kind} to {path}, the --data file {data}"
    return None


def _input_identity(cfg: EvalConfig, summary: LoadSummary, device: str) -> dict[str, Any]:
    """What the predictions answer besides the decoding settings: recorded with them, so
    that --resume never mixes rows of another data file or model (same ids, other queries)."""
    dtype = cfg.dtype
    if dtype == "auto":  # load_policy's rule: the same "auto" gives other weights on another device
        dtype = "bfloat16" if torch.device(device).type == "cuda" else "float32"
    data = Path(cfg.data).resolve()
    durations = Path(cfg.durations).resolve() if cfg.durations else None
    return {
        "data": str(data),
        "data_sha256": file_sha256(data),
        "format": summary.format,
        "video_root": str(Path(cfg.video_root).resolve() if cfg.video_root else data.parent),
        "durations": str(durations) if durations else None,
        "durations_sha256": file_sha256(durations) if durations else None,
        "model": str(Path(cfg.model).resolve()),
        "dtype": dtype,
        # Recorded where it is not the paper's, so that files written before protocols existed resume.
        **({"protocol": cfg.protocol} if cfg.protocol != "paper" else {}),
        # The policy applied (--multi-span auto resolved for the format).
        **({"multi_span": summary.multi_span} if summary.multi_span != "skip" else {}),
    }


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m videoopd.eval``: parse the options, load the model and the records (every
    problem reported with file and line), evaluate under the protocol, write the predictions,
    their identity (``.meta.json``) and ``<stem>.metrics.json``; returns the exit status (2 for bad
    input, in one line)."""
    # Evaluation reads local files only; make any accidental hub lookup fail fast.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_config(EvalConfig, argv, prog=PROG, description=DESCRIPTION, command_defaults=COMMAND_DEFAULTS)
    except ConfigError as exc:
        return fail(PROG, exc)
    output = Path(cfg.output) if cfg.output else Path(f"{Path(cfg.data).stem}.predictions.jsonl")
    problem = _output_problem(Path(cfg.data), output)
    if problem is None and output.exists() and not (cfg.resume or cfg.overwrite):
        problem = (
            f"--output {output} already holds predictions: continue it with --resume, replace it with "
            "--overwrite, or choose another --output"
        )
    if problem is not None:
        return fail(PROG, problem)

    from videoopd.qwen.models import CheckpointError, available_device, check_checkpoint, load_policy
    from videoopd.qwen.processing import load_processor

    if cfg.device is not None:
        try:
            available_device(cfg.device)
        except ValueError as exc:
            return fail(PROG, f"--device: {exc}")
    try:
        records, summary = load_annotations(
            cfg.data,
            cfg.format,
            video_root=cfg.video_root,
            durations=cfg.durations,
            strict=cfg.strict,
            multi_span=cfg.multi_span,
            zero_length="keep",
        )
    except (FileNotFoundError, ValueError) as exc:  # AnnotationError is a ValueError
        return fail(PROG, str(exc))
    print(summary.report(max_issues=20))
    if cfg.limit is not None:
        records = records[: cfg.limit]
    if not records:
        return fail(PROG, f"--data {cfg.data}: no records to evaluate (the report above says what was left out)")
    try:
        check_checkpoint(cfg.model)
    except CheckpointError as exc:
        return fail(PROG, f"--model: {exc}")

    processor = load_processor(cfg.model)
    try:
        budget = PROTOCOLS[cfg.protocol].pixel_budget(DecodeConfig.for_processor(processor).factor)
        decode_config = DecodeConfig.for_processor(
            processor,
            fps=cfg.fps if cfg.fps is not None else budget["fps"],
            max_frames=cfg.max_frames,
            min_pixels=cfg.min_pixels if cfg.min_pixels is not None else budget["min_pixels"],
            max_pixels=cfg.max_pixels,
            total_pixels=cfg.total_pixels if cfg.total_pixels is not None else budget["total_pixels"],
        )
    except ValueError as exc:
        return fail(PROG, str(exc))
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    inputs = _input_identity(cfg, summary, device)
    if cfg.resume:
        try:
            check_resumable(
                output,
                predictions_identity(
                    decode_config, cfg.effective_prompt_style, cfg.system_prompt_setting, cfg.max_new_tokens, inputs
                ),
            )
        except ValueError as exc:
            return fail(PROG, f"--resume: {exc}")
    model = load_policy(
        cfg.model, device=device, trainable=False, dtype=cfg.dtype, attn_implementation=cfg.attn_implementation
    )
    try:
        result = evaluate(
            model,
            processor,
            records,
            decode_config=decode_config,
            prompt_style=cfg.effective_prompt_style,
            system_prompt=cfg.system_prompt_setting,
            batch_size=cfg.per_device_eval_batch_size,
            max_new_tokens=cfg.max_new_tokens,
            num_workers=cfg.dataloader_num_workers,
            predictions_path=output,
            resume=cfg.resume,
            on_video_error=cfg.on_video_error,
            progress=cfg.progress,
            identity=inputs,
            protocol=cfg.protocol,
            moment_retrieval=summary.format == "qvhighlights",
        )
    except (VideoDecodeError, FileNotFoundError) as exc:  # --on-video-error raise
        return fail(PROG, exc)
    metrics_path = _metrics_path(output)
    metrics_path.write_text(
        json.dumps(
            {
                "protocol": cfg.protocol,
                "overall": result.metrics,
                "per_source": result.per_source,
                "failed_videos": len(result.failed_videos),
                "data_issues": result.data_issue_counts,
                "protocols": result.protocols,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    if result.resumed:
        print(f"resumed {result.resumed} predictions from {output}")
    if result.failed_videos:
        print(f"{len(result.failed_videos)} videos could not be decoded (scored IoU 0):", file=sys.stderr)
        for record_id, error in result.failed_videos[:10]:
            print(f"  {record_id}: {error}", file=sys.stderr)
    if result.data_issues:
        counts = ", ".join(f"{kind}={count}" for kind, count in sorted(result.data_issue_counts.items()))
        print(
            f"{len(result.data_issues)} queries disagree with their videos ({counts}; kept and scored, "
            "flagged in the predictions' data_issue):",
            file=sys.stderr,
        )
        for _, issue in result.data_issues[:10]:
            print(f"  {issue}", file=sys.stderr)
    print(format_metrics_table(result.metrics, result.per_source))
    others = ", ".join(
        f"{name} R1@0.5 {_number(block['overall']['R1@0.5'])}"
        for name, block in result.protocols.items()
        if name != cfg.protocol
    )
    print(f"protocol {cfg.protocol}; the same answers under {others} (metrics.json: protocols)")
    print(f"predictions: {output}\nmetrics: {metrics_path}")
    return 0 if len(result.failed_videos) < len(records) else 1


if __name__ == "__main__":
    sys.exit(main())
