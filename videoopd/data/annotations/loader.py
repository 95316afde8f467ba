"""The entry point: format detection and :func:`load_annotations`, which reads a file with its
format's reader (:data:`READERS`, a ``{format: reader}`` table) and validates every candidate."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from videoopd.data.annotations.activitynet import read_activitynet
from videoopd.data.annotations.charades import CHARADES_LINE, read_charades
from videoopd.data.annotations.jsonl import read_plain_jsonl
from videoopd.data.annotations.qvhighlights import read_qvhighlights
from videoopd.data.annotations.records import AnnotationError, Candidate, LoadResult, LoadSummary, Reporter
from videoopd.data.annotations.swift import is_swift_object, read_swift
from videoopd.data.annotations.text import UTF8_BOM, decode_line, read_durations_csv
from videoopd.data.annotations.timelens import read_timelens_100k, read_timelens_bench
from videoopd.data.annotations.tvgbench import read_tvgbench
from videoopd.data.annotations.validation import (
    MULTI_SPAN_POLICIES,
    SPAN_POLICIES,
    ZERO_LENGTH_POLICIES,
    Validator,
)

__all__: list[str] = []  # nothing here is promised: docs/api.md

logger = logging.getLogger("videoopd.data.annotations")

# A reader yields the file's queries as candidates and reports what it cannot even read.
READERS: dict[str, Callable[[Path, Reporter], Iterator[Candidate]]] = {
    "charades": read_charades,
    "activitynet": read_activitynet,
    "timelens_bench": read_timelens_bench,
    "timelens_100k": read_timelens_100k,
    "jsonl": read_plain_jsonl,
    "qvhighlights": read_qvhighlights,
    "tvgbench": read_tvgbench,
    "swift": read_swift,
}
FORMATS = tuple(READERS)
# A benchmark's own rule for a query with several windows (multi_span="auto"): moment_detr's
# standalone_eval scores a QVHighlights prediction against every window; elsewhere one query
# has one span, and a second one is a problem to report.
OWN_MULTI_SPAN = {"qvhighlights": "any"}
# Formats read as one JSON document: a bad byte makes the whole file unreadable.
JSON_DOCUMENT_FORMATS = ("activitynet", "timelens_bench", "tvgbench")


def _classify_json_object(obj: Any) -> str | None:
    if isinstance(obj, list):
        first = obj[0] if obj else None
        if isinstance(first, dict) and {"path", "question", "answer"} <= first.keys():
            return "tvgbench"
        return None
    if not isinstance(obj, dict):
        return None
    if is_swift_object(obj):
        return "swift"
    if "events" in obj and "video_path" in obj:
        return "timelens_100k"
    if "vid" in obj and "query" in obj and ("relevant_windows" in obj or "qid" in obj):
        return "qvhighlights"
    if "video" in obj and "query" in obj:
        return "jsonl"
    first = next(iter(obj.values()), None)
    if isinstance(first, dict):
        if "timestamps" in first and "sentences" in first:
            return "activitynet"
        if "spans" in first and "queries" in first:
            return "timelens_bench"
    return None


def detect_format(path: str | Path) -> str:
    """The annotation format of ``path`` (one of :data:`FORMATS`), from its content."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    data = path.read_bytes().removeprefix(UTF8_BOM)
    raw_lines = data.split(b"\n")
    first = next((number for number, raw in enumerate(raw_lines, start=1) if raw.strip()), None)
    if first is None:
        raise ValueError(f"cannot detect the format of {path}: the file is empty")
    # Bytes that are not UTF-8 are replaced here, so that the structure shows through; the
    # loader reports them with their line.
    text = data.decode("utf-8", errors="replace")
    first_line = raw_lines[first - 1].decode("utf-8", errors="replace")
    if CHARADES_LINE.match(first_line):
        return "charades"
    first_is_json = True
    try:
        first_object = json.loads(first_line)
        detected = _classify_json_object(first_object)
        line_problem = f"a JSON {_json_shape(first_object)} of no known format"
    except json.JSONDecodeError as exc:
        first_is_json = False
        detected = None
        line_problem = f"not JSON ({exc.msg} at column {exc.colno})"
    document_problem = None
    if detected is None:
        # Not JSON-per-line: a (possibly pretty-printed) JSON document.
        try:
            document = json.loads(text)
            detected = _classify_json_object(document)
        except json.JSONDecodeError as exc:
            if not first_is_json and exc.lineno > first:  # the first line opens a document broken further down
                document_problem = f"invalid JSON document at line {exc.lineno} column {exc.colno}: {exc.msg}"
    if detected is None:
        try:
            decode_line(raw_lines[first - 1], first)
        except ValueError as exc:
            line_problem = str(exc)
        if document_problem is not None:
            reason = document_problem
        else:
            reason = (
                f"line {first} is neither a Charades-STA line ('vid start end##sentence') nor a JSON record "
                f"of a known format: {line_problem}"
            )
        raise ValueError(
            f"cannot detect the format of {path}: {reason}; pass format= one of {', '.join(FORMATS)} "
            "(then every bad line is reported and the rest kept)"
        )
    return detected


def _json_shape(value: Any) -> str:
    if isinstance(value, dict):
        return f"object with keys {sorted(value)[:8]}"
    return type(value).__name__


def load_annotations(
    path: str | Path,
    format: str = "auto",
    *,
    video_root: str | Path | None = None,
    durations: str | Path | dict[str, float] | None = None,
    strict: bool = False,
    check_videos: bool = True,
    span_policy: str = "clip",
    source: str | None = None,
    multi_span: str = "auto",
    zero_length: str = "skip",
) -> LoadResult:
    """Read a grounding annotation file into :class:`GroundingRecord` s.

    Args:
        path: the annotation file.
        format: one of :data:`FORMATS` or ``"auto"``.
        video_root: folder the video paths/ids are relative to (default: ``path``'s folder).
        durations: Charades durations, a CSV path or a ``{vid: seconds}`` dict.
        strict: raise :class:`AnnotationError` on the first problem instead of reporting it.
        check_videos: skip (and report) queries whose video file is missing. Turn off only to
            inspect annotations without the videos.
        span_policy: ``"clip"`` spans reaching outside [0, duration] to it, or ``"skip"`` them.
        source: override the per-record source name.
        multi_span: what a query with several windows becomes: ``"auto"`` (the default: the
            format's own rule, :data:`OWN_MULTI_SPAN`: ``"any"`` for QVHighlights, else
            ``"skip"``), ``"skip"`` (reported), ``"first"``, ``"longest"`` or ``"any"`` (all
            windows; best IoU scores). Counted in ``summary.multi_window`` whatever the policy;
            ``summary.multi_span`` is the policy applied.
        zero_length: ``"skip"`` a zero-length span (start == end) or ``"keep"`` it; reported
            as ``zero_length_span`` either way.

    Returns:
        ``LoadResult(records, summary)``.

    Raises:
        AnnotationError: in strict mode, at the first problem; and when nothing was kept and
            some of the file is not UTF-8 text ("no valid records", naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    if not isinstance(format, str):
        raise TypeError(f"format must be a str, got {type(format).__name__}")
    format = format.replace("-", "_").lower()
    if format == "auto":
        format = detect_format(path)
    if format not in FORMATS:
        raise ValueError(f"format must be 'auto' or one of {', '.join(FORMATS)}, got {format!r}")
    if span_policy not in SPAN_POLICIES:
        raise ValueError(f"span_policy must be one of {SPAN_POLICIES}, got {span_policy!r}")
    if multi_span not in MULTI_SPAN_POLICIES:
        raise ValueError(f"multi_span must be one of {MULTI_SPAN_POLICIES}, got {multi_span!r}")
    if multi_span == "auto":
        multi_span = OWN_MULTI_SPAN.get(format, "skip")
    if zero_length not in ZERO_LENGTH_POLICIES:
        raise ValueError(f"zero_length must be one of {ZERO_LENGTH_POLICIES}, got {zero_length!r}")
    if source is not None and not (isinstance(source, str) and source):
        raise ValueError(f"source must be a non-empty string or None, got {source!r}")
    if video_root is not None and not Path(video_root).is_dir():
        raise FileNotFoundError(f"video_root is not a directory: {video_root}")
    if durations is None:
        duration_table: dict[str, float] = {}
    elif isinstance(durations, dict):
        duration_table = {str(k): float(v) for k, v in durations.items()}
    elif isinstance(durations, (str, Path)):
        duration_table = read_durations_csv(durations)
    else:
        raise TypeError(f"durations must be a CSV path, a dict or None, got {type(durations).__name__}")

    summary = LoadSummary(file=str(path), format=format, multi_span=multi_span)
    report = Reporter(summary, strict)
    candidates = READERS[format](path, report)

    validate = Validator(
        report,
        base=Path(video_root) if video_root is not None else path.parent,
        durations=duration_table,
        check_videos=check_videos,
        span_policy=span_policy,
        strip_prefix="v_" if format == "activitynet" else None,
        source=source,
        multi_span=multi_span,
        zero_length=zero_length,
        durations_name=(
            f"the durations CSV {durations}" if isinstance(durations, (str, Path)) else "the durations table"
        ),
    )
    records = [record for record in map(validate, candidates) if record is not None]
    summary.kept = len(records)
    not_text = [issue for issue in summary.issues if issue.kind == "bad_encoding"]
    if not records and not_text:
        first = not_text[0]
        if format in JSON_DOCUMENT_FORMATS:
            message = f"{path}: no valid records: {first.location}: {first.message}"
        else:
            message = (
                f"{path}: no valid records: {len(not_text)} of {summary.read} lines are not valid UTF-8 text "
                f"(is it a binary file?); the first, {first.location}: {first.message}"
            )
        raise AnnotationError(first, message)
    if summary.issues:
        logger.warning(
            "%s: %d of %d queries kept; %d issues (%s)",
            path,
            summary.kept,
            summary.read,
            len(summary.issues),
            ", ".join(f"{k}={v}" for k, v in sorted(summary.counts.items())),
        )
    return LoadResult(records, summary)
