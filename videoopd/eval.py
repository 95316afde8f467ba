"""Temporal-grounding evaluation: batched greedy generation, answer parsing, R1@{0.3,0.5,0.7}, mIoU.

Command line::

    python -m videoopd.eval --model PATH --data FILE [--format auto] [--video-root DIR]
        [--limit N] [--resume] [--output FILE] [--batch-size B] [--prompt paper|timelens]

The library entry point is :func:`evaluate`, which the training loop calls for held-out
evaluation with its in-memory model and processor.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from videoopd.data import GroundingRecord, load_annotations
from videoopd.metrics import grounding_metrics, parse_span, temporal_iou
from videoopd.prompts import PROMPT_STYLES, STYLE_DEFAULT
from videoopd.video import DecodeConfig, GroundingCollator, GroundingVideoDataset

__all__ = ["EvalResult", "evaluate", "format_metrics_table", "load_model", "main", "read_predictions"]

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Prediction rows (one per record, in record order), overall and per-source metrics."""

    predictions: list[dict[str, Any]]
    metrics: dict[str, float]
    per_source: dict[str, dict[str, float]]
    failed_videos: list[tuple[str, str]] = field(default_factory=list)  # (record id, error)
    resumed: int = 0  # rows taken from an existing predictions file


def _prediction_row(record: GroundingRecord, answer: str | None, error: str | None = None) -> dict[str, Any]:
    pred = parse_span(answer) if answer is not None else None
    return {
        "id": record.id,
        "source": record.source,
        "video": record.video,
        "query": record.query,
        "gt": list(record.span),
        "duration": record.duration,
        "answer": answer,
        "pred": list(pred) if pred is not None else None,
        "iou": temporal_iou(pred, record.span),
        "error": error,
    }


def read_predictions(path: str | Path) -> dict[str, dict[str, Any]]:
    """Rows of a predictions JSONL by id. Unreadable lines (e.g. one cut off by a crash) are
    reported with file and line and left out, so their records are evaluated again."""
    rows: dict[str, dict[str, Any]] = {}
    with Path(path).open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                    raise ValueError("not an object with a string 'id'")
            except ValueError as exc:
                logger.warning("%s: line %d: unreadable prediction row (%s); it will be evaluated again", path, line_number, exc)
                continue
            rows[row["id"]] = row
    return rows


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


@torch.inference_mode()
def _generate(model: Any, processor: Any, inputs: Any, max_new_tokens: int) -> list[str]:
    inputs = inputs.to(_model_device(model))
    tokenizer = processor.tokenizer
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def _metrics_for(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    return grounding_metrics([row["pred"] for row in rows], [row["gt"] for row in rows])


def evaluate(
    model: Any,
    processor: Any,
    records: Sequence[GroundingRecord],
    *,
    decode_config: DecodeConfig | None = None,
    prompt_style: str = "paper",
    system_prompt: Any = STYLE_DEFAULT,
    batch_size: int = 1,
    max_new_tokens: int = 64,
    num_workers: int = 0,
    predictions_path: str | Path | None = None,
    resume: bool = False,
    on_video_error: str = "raise",
    progress: bool = True,
) -> EvalResult:
    """Generate an answer for every record greedily, parse it and score it.

    Args:
        model: a Qwen2.5-VL / Qwen3-VL ``*ForConditionalGeneration`` (any device).
        processor: its processor.
        records: what to evaluate (ids must be unique).
        decode_config: frame sampling; default ``DecodeConfig.for_processor(processor)``.
        prompt_style: ``"paper"`` or ``"timelens"`` (see :mod:`videoopd.prompts`).
        system_prompt: the style's own by default; None for none, or a string.
        batch_size: prompts per ``generate`` call (left-padded).
        num_workers: DataLoader workers that decode videos and run the processor.
        predictions_path: JSONL to write rows to as they are produced.
        resume: keep the rows already in ``predictions_path`` for these records' ids and
            evaluate only the rest (otherwise the file is overwritten).
        on_video_error: ``"raise"`` stops at a video that cannot be decoded (the error names
            the file); ``"report"`` records it as a failed row (no answer, IoU 0, counted).
        progress: show a tqdm progress bar.
    """
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative int, got {num_workers!r}")
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"prompt_style must be one of {sorted(PROMPT_STYLES)}, got {prompt_style!r}")
    if on_video_error not in ("raise", "report"):
        raise ValueError(f"on_video_error must be 'raise' or 'report', got {on_video_error!r}")
    if resume and predictions_path is None:
        raise ValueError("resume=True needs predictions_path")
    records = list(records)
    if not records:
        raise ValueError("records must not be empty")
    ids = [record.id for record in records]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"record ids must be unique, duplicated: {duplicates[:5]}")
    if decode_config is None:
        decode_config = DecodeConfig.for_processor(processor)

    done: dict[str, dict[str, Any]] = {}
    if predictions_path is not None:
        predictions_path = Path(predictions_path)
        predictions_path.parent.mkdir(parents=True, exist_ok=True)
        if resume and predictions_path.is_file():
            wanted = set(ids)
            done = {i: row for i, row in read_predictions(predictions_path).items() if i in wanted}
        elif predictions_path.exists():
            predictions_path.unlink()
    todo = [record for record in records if record.id not in done]

    new_rows: dict[str, dict[str, Any]] = {}
    failed: list[tuple[str, str]] = []
    if todo:
        loader = torch.utils.data.DataLoader(
            GroundingVideoDataset(todo, decode_config, on_error=on_video_error),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=GroundingCollator(processor, prompt_style, system_prompt),
        )
        bar = _progress_bar(len(todo), enabled=progress)
        handle = predictions_path.open("a", encoding="utf-8") if predictions_path is not None else None
        if handle is not None and _ends_mid_line(predictions_path):
            handle.write("\n")  # a crash cut the last row short: start ours on a fresh line
        was_training = getattr(model, "training", False)
        model.eval()
        try:
            for batch in loader:
                rows = []
                if batch["inputs"] is not None:
                    answers = _generate(model, processor, batch["inputs"], max_new_tokens)
                    rows += [_prediction_row(record, answer) for record, answer in zip(batch["records"], answers)]
                for record, error in batch["failed"]:
                    logger.warning("%s: %s", record.id, error)
                    failed.append((record.id, error))
                    rows.append(_prediction_row(record, None, error=error))
                for row in rows:
                    new_rows[row["id"]] = row
                    if handle is not None:
                        handle.write(json.dumps(row) + "\n")
                if handle is not None:
                    handle.flush()
                bar.update(len(rows))
        finally:
            bar.close()
            if handle is not None:
                handle.close()
            if was_training:
                model.train()

    rows = [done.get(record.id) or new_rows[record.id] for record in records]
    by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_source[row["source"]].append(row)
    return EvalResult(
        predictions=rows,
        metrics=_metrics_for(rows),
        per_source={source: _metrics_for(group) for source, group in sorted(by_source.items())},
        failed_videos=failed,
        resumed=len(done),
    )


def _ends_mid_line(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="eval", unit="query", disable=not enabled, dynamic_ncols=True)


def format_metrics_table(metrics: dict[str, float], per_source: dict[str, dict[str, float]] | None = None) -> str:
    """The metrics as a fixed-width table: one row overall, then one per source."""
    columns = ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")
    entries = [("all", metrics)] + sorted((per_source or {}).items())
    width = max(len("source"), *(len(name) for name, _ in entries))
    lines = [f"{'source':<{width}}  {'total':>6}  {'parsed':>6}  " + "  ".join(f"{c:>7}" for c in columns)]
    lines.append("-" * len(lines[0]))
    for name, values in entries:
        lines.append(
            f"{name:<{width}}  {int(values['total']):>6}  {int(values['parsed']):>6}  "
            + "  ".join(f"{values[c]:>7.2f}" for c in columns)
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# command line


def load_model(path: str | Path, device: str | None = None, dtype: str = "auto", attn_implementation: str | None = None) -> Any:
    """A local Qwen-VL checkpoint as ``AutoModelForImageTextToText``, frozen, in eval mode (never downloads).

    ``device`` default: CUDA when available. ``dtype="auto"``: bfloat16 on CUDA, float32 elsewhere.
    ``attn_implementation`` default: flash_attention_2 on CUDA when flash-attn is installed, else sdpa.
    """
    from videoopd.models import load_policy

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load_policy(path, device=device, trainable=False, dtype=dtype, attn_implementation=attn_implementation)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m videoopd.eval",
        description="Evaluate a local Qwen2.5-VL / Qwen3-VL checkpoint on temporal video grounding.",
    )
    parser.add_argument("--model", required=True, help="local checkpoint folder (never downloaded)")
    parser.add_argument("--data", required=True, help="annotation file")
    parser.add_argument("--format", default="auto", help="charades, activitynet, timelens_bench, timelens_100k, jsonl or auto")
    parser.add_argument("--video-root", default=None, help="folder the annotation's videos are in (default: the annotation's folder)")
    parser.add_argument("--durations", default=None, help="Charades-STA: CSV with id and length columns")
    parser.add_argument("--strict", action="store_true", help="stop at the first annotation problem")
    parser.add_argument("--limit", type=_positive_int, default=None, help="evaluate the first N queries")
    parser.add_argument("--resume", action="store_true", help="skip ids already in --output")
    parser.add_argument("--output", default=None, help="predictions JSONL (default: <data stem>.predictions.jsonl)")
    parser.add_argument("--batch-size", type=_positive_int, default=1)
    parser.add_argument("--prompt", choices=sorted(PROMPT_STYLES), default="paper")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=64)
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--max-frames", type=_positive_int, default=768)
    parser.add_argument("--min-pixels", type=_positive_int, default=None)
    parser.add_argument("--max-pixels", type=_positive_int, default=None)
    parser.add_argument("--total-pixels", type=_positive_int, default=None)
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers decoding videos")
    parser.add_argument("--on-video-error", choices=("report", "raise"), default="report",
                        help="report: count an undecodable video as a failed (IoU 0) row; raise: stop")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    parser.add_argument("--attn-implementation", default=None)
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    # Evaluation reads local files only; make any accidental hub lookup fail fast.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = _build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.num_workers < 0:
        parser.error("--num-workers must be >= 0")

    from videoopd.processing import load_processor

    try:
        records, summary = load_annotations(
            args.data, args.format, video_root=args.video_root, durations=args.durations, strict=args.strict
        )
    except (FileNotFoundError, ValueError) as exc:  # AnnotationError is a ValueError
        parser.error(str(exc))
    print(summary.report(max_issues=20))
    if args.limit is not None:
        records = records[: args.limit]
    if not records:
        print("no records to evaluate", file=sys.stderr)
        return 1
    output = Path(args.output) if args.output else Path(f"{Path(args.data).stem}.predictions.jsonl")

    processor = load_processor(args.model)
    model = load_model(args.model, device=args.device, dtype=args.dtype, attn_implementation=args.attn_implementation)
    try:
        decode_config = DecodeConfig.for_processor(
            processor,
            fps=args.fps,
            max_frames=args.max_frames,
            min_pixels=args.min_pixels,
            max_pixels=args.max_pixels,
            total_pixels=args.total_pixels,
        )
    except ValueError as exc:
        parser.error(str(exc))
    result = evaluate(
        model,
        processor,
        records,
        decode_config=decode_config,
        prompt_style=args.prompt,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        num_workers=args.num_workers,
        predictions_path=output,
        resume=args.resume,
        on_video_error=args.on_video_error,
        progress=not args.no_progress,
    )
    metrics_path = output.with_name(output.name.removesuffix(".jsonl") + ".metrics.json")
    metrics_path.write_text(
        json.dumps({"overall": result.metrics, "per_source": result.per_source, "failed_videos": len(result.failed_videos)}, indent=2)
        + "\n",
        encoding="utf-8",
    )
    if result.resumed:
        print(f"resumed {result.resumed} predictions from {output}")
    if result.failed_videos:
        print(f"{len(result.failed_videos)} videos could not be decoded (scored IoU 0):", file=sys.stderr)
        for record_id, error in result.failed_videos[:10]:
            print(f"  {record_id}: {error}", file=sys.stderr)
    print(format_metrics_table(result.metrics, result.per_source))
    print(f"predictions: {output}\nmetrics: {metrics_path}")
    return 0 if len(result.failed_videos) < len(records) else 1


if __name__ == "__main__":
    sys.exit(main())
