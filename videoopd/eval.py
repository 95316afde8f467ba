"""Temporal-grounding evaluation: batched greedy generation, answer parsing, R1@{0.3,0.5,0.7}, mIoU.

Command line::

    python -m videoopd.eval --model PATH --data FILE [--format auto] [--video-root DIR]
        [--limit N] [--resume] [--output FILE] [--batch-size B] [--prompt paper|timelens]

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

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable, NoReturn

import torch

from videoopd.data.annotations import load_annotations
from videoopd.data.video import DecodeConfig, VideoDecodeError
from videoopd.evaluation.evaluate import (
    check_resumable,
    evaluate,
    file_sha256,
    format_metrics_table,
    identity_path,
    predictions_identity,
)
from videoopd.qwen.prompts import PROMPT_STYLES, STYLE_DEFAULT

__all__ = ["main"]

# --------------------------------------------------------------------------------------
# command line


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


class _OneLineErrorParser(argparse.ArgumentParser):
    """Reports a command-line error in one line (no usage block), exit status 2, like the
    other videoopd commands."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(
        prog="python -m videoopd.eval",
        description="Evaluate a local Qwen2.5-VL / Qwen3-VL checkpoint on temporal video grounding.",
    )
    parser.add_argument("--model", required=True, help="local checkpoint folder (never downloaded)")
    parser.add_argument("--data", required=True,
                        help="annotation file: Charades-STA .txt, ActivityNet Captions or TimeLens-Bench JSON, "
                        "TimeLens-100K JSONL or plain JSONL")
    parser.add_argument("--format", default="auto",
                        help="charades, activitynet, timelens_bench, timelens_100k, jsonl or auto "
                        "(default: %(default)s, detected from the file's content)")
    parser.add_argument("--video-root", default=None,
                        help="folder the annotation's videos are in (default: the annotation's folder)")
    parser.add_argument("--durations", default=None,
                        help="Charades-STA: CSV with id and length columns (default: probe each video)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first annotation problem instead of reporting it and going on")
    parser.add_argument("--limit", type=_positive_int, default=None,
                        help="evaluate the first N queries (default: all)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows already in --output and evaluate the rest; refused when --output was "
                        "written for another data file, model or decoding settings (its .meta.json)")
    parser.add_argument("--output", default=None,
                        help="predictions JSONL, with <output>.meta.json and <stem>.metrics.json beside it "
                        "(default: <data stem>.predictions.jsonl in the current folder)")
    parser.add_argument("--batch-size", type=_positive_int, default=1,
                        help="prompts per generate call, left-padded (default: %(default)s)")
    parser.add_argument("--prompt", choices=sorted(PROMPT_STYLES), default="paper",
                        help="prompt style: paper (the Video-OPD template, 'start to end') or timelens "
                        "(default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=64,
                        help="longest answer generated, in tokens; decoding is greedy (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=None,
                        help="frames sampled per second of video (default: the checkpoint's recorded setting, "
                        f"else {DecodeConfig.fps})")
    parser.add_argument("--max-frames", type=_positive_int, default=None,
                        help="most frames sampled from one video (default: the checkpoint's recorded setting, else "
                        f"{DecodeConfig.max_frames})")
    parser.add_argument("--min-pixels", type=_positive_int, default=None,
                        help="smallest frame area in pixels (default: the checkpoint's recorded setting, else "
                        "128*28*28 for Qwen2.5-VL, 128*32*32 for Qwen3-VL)")
    parser.add_argument("--max-pixels", type=_positive_int, default=None,
                        help="largest frame area in pixels (default: the checkpoint's recorded setting, else "
                        "768*28*28 for Qwen2.5-VL, 768*32*32 for Qwen3-VL)")
    parser.add_argument("--total-pixels", type=_positive_int, default=None,
                        help="pixel budget of all frames of a video together (default: the checkpoint's recorded "
                        "setting, else 115200*28*28 for Qwen2.5-VL, 115200*32*32 for Qwen3-VL)")
    parser.add_argument("--num-workers", type=int, default=2,
                        help="DataLoader workers decoding videos; 0 decodes in this process (default: %(default)s)")
    parser.add_argument("--on-video-error", choices=("report", "raise"), default="report",
                        help="report: count an undecodable video as a failed (IoU 0) row; raise: stop "
                        "(default: %(default)s)")
    parser.add_argument("--device", default=None,
                        help="torch device, e.g. cuda:1 or cpu (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
                        help="weights' dtype; auto is bfloat16 on CUDA, float32 elsewhere (default: %(default)s)")
    parser.add_argument("--attn-implementation", default=None,
                        help="transformers attention, e.g. sdpa or flash_attention_2 "
                        "(default: flash_attention_2 on CUDA when flash-attn is installed, else sdpa)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


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


def _input_identity(args: argparse.Namespace, format_name: str, device: str) -> dict[str, Any]:
    """What the predictions answer besides the decoding settings: recorded with them, so
    that --resume never mixes rows of another data file or model (same ids, other queries)."""
    dtype = args.dtype
    if dtype == "auto":  # load_policy's rule: the same "auto" gives other weights on another device
        dtype = "bfloat16" if torch.device(device).type == "cuda" else "float32"
    data = Path(args.data).resolve()
    durations = Path(args.durations).resolve() if args.durations else None
    return {
        "data": str(data),
        "data_sha256": file_sha256(data),
        "format": format_name,
        "video_root": str(Path(args.video_root).resolve() if args.video_root else data.parent),
        "durations": str(durations) if durations else None,
        "durations_sha256": file_sha256(durations) if durations else None,
        "model": str(Path(args.model).resolve()),
        "dtype": dtype,
    }


def main(argv: Iterable[str] | None = None) -> int:
    # Evaluation reads local files only; make any accidental hub lookup fail fast.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = _build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.num_workers < 0:
        parser.error("--num-workers must be >= 0")
    output = Path(args.output) if args.output else Path(f"{Path(args.data).stem}.predictions.jsonl")
    problem = _output_problem(Path(args.data), output)
    if problem is not None:
        parser.error(problem)

    from videoopd.qwen.models import CheckpointError, available_device, check_checkpoint, load_policy
    from videoopd.qwen.processing import load_processor

    if args.device is not None:
        try:
            available_device(args.device)
        except ValueError as exc:
            parser.error(f"--device: {exc}")
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
    try:
        check_checkpoint(args.model)
    except CheckpointError as exc:
        parser.error(f"--model: {exc}")

    processor = load_processor(args.model)
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
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    inputs = _input_identity(args, summary.format, device)
    if args.resume:
        try:
            check_resumable(output, predictions_identity(decode_config, args.prompt, STYLE_DEFAULT,
                                                         args.max_new_tokens, inputs))
        except ValueError as exc:
            parser.error(f"--resume: {exc}")
    model = load_policy(args.model, device=device, trainable=False, dtype=args.dtype,
                        attn_implementation=args.attn_implementation)
    try:
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
            identity=inputs,
        )
    except (VideoDecodeError, FileNotFoundError) as exc:  # --on-video-error raise
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    metrics_path = _metrics_path(output)
    metrics_path.write_text(
        json.dumps({"overall": result.metrics, "per_source": result.per_source, "failed_videos": len(result.failed_videos),
                    "data_issues": result.data_issue_counts}, indent=2)
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
        print(f"{len(result.data_issues)} queries disagree with their videos ({counts}; kept and scored, "
              "flagged in the predictions' data_issue):", file=sys.stderr)
        for _, issue in result.data_issues[:10]:
            print(f"  {issue}", file=sys.stderr)
    print(format_metrics_table(result.metrics, result.per_source))
    print(f"predictions: {output}\nmetrics: {metrics_path}")
    return 0 if len(result.failed_videos) < len(records) else 1


if __name__ == "__main__":
    sys.exit(main())
