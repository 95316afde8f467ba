"""Temporal-video-grounding annotations: one record type, five loaders, explicit validation.

Formats (``format=`` name, what one sample looks like):

- ``charades``: Charades-STA text, one query a line: ``AO8RW 0.0 6.9##a person puts a book away.``
  Durations come from ``durations=`` (a Charades CSV with ``id`` and ``length`` or
  ``duration`` columns) or, for videos not in it, are probed from the video file.
- ``activitynet``: ActivityNet Captions JSON ``{vid: {duration, timestamps, sentences}}``.
- ``timelens_bench``: TimeLens-Bench JSON ``{vid: {duration, spans, queries}}``.
- ``timelens_100k``: TimeLens-100K JSONL, a line per video
  ``{source, video_path, duration, events: [{query, span}]}``.
- ``jsonl``: plain JSONL, a line per query ``{video, query, start, end, duration}``
  (optional ``id``, ``source``, and ``windows`` for a query with several: ``start``/``end``
  are then its first, as :func:`write_jsonl_records` writes them).
- ``qvhighlights``: QVHighlights (moment_detr's ``highlight_{train,val}_release.jsonl``), a
  line per query ``{qid, query, duration, vid, relevant_windows: [[s, e], ...], ...}``;
  the video is ``{vid}.mp4`` under ``video_root``. A query may have several windows.
- ``tvgbench``: Time-R1's TVGBench, a JSON list of ``{path, question, answer: "13.4-28.1",
  duration, dataset_name, ...}``; the video is ``path`` (relative paths against
  ``video_root``: for the file as published, the folder its ``./dataset/...`` paths start
  from), the source ``dataset_name``.

Queries with several windows follow ``multi_span=``: ``"skip"`` (the default: reported as
``multi_span`` and skipped), ``"first"`` (the first window), ``"longest"`` (the longest, the
first of equals) or ``"any"`` (all kept in :attr:`GroundingRecord.windows`: a prediction
scores its best IoU against any window; ``span`` is the first). Every such query is counted
in :attr:`LoadSummary.multi_window`, whatever the policy. A zero-length span (start ==
end: Ego4D-NLQ items of TVGBench) is a ``zero_length_span``, skipped, or kept with
``zero_length="keep"`` (metrics then score it by the protocol's rule). A span end past the
duration by float noise (ActivityNet's 95.03999999999999 against 95.04: at most
``FLOAT_NOISE_S``) is within the video, not reported.

``format="auto"`` detects the format from the file's content.

Files are UTF-8; a leading byte-order mark is ignored. A line that is not valid UTF-8 is a
``bad_encoding`` issue (the rest of the file is kept); in a whole-file JSON format the
document cannot be read without it, so the issue names its line and column. A file where
nothing was kept and some of it is not UTF-8 (a binary file, or a JSON document with a bad
byte) raises :class:`AnnotationError` ("no valid records") naming the file.

Video paths are resolved against ``video_root`` (default: the annotation file's folder).
A bare video id (Charades, ActivityNet, TimeLens-Bench) is tried with the extensions in
``VIDEO_EXTENSIONS``; for ActivityNet ids the ``v_`` prefix is also tried without.

Validation rules. Every problem is reported as a :class:`DataIssue` naming the file and the
line (or JSON key), counted in the :class:`LoadSummary`, logged, and then handled as below;
with ``strict=True`` the first problem raises :class:`AnnotationError` instead.

====================  ==========================================================  =========
kind                  condition                                                   action
====================  ==========================================================  =========
``bad_encoding``      a line (a JSON document) that is not valid UTF-8            skipped
``malformed``         unparsable line/JSON, missing field, non-numeric time       skipped
``empty_query``       query missing or only whitespace                            skipped
``multi_span``        more than one span for one query, ``multi_span="skip"``     skipped
``inverted_span``     start > end                                                 skipped
``zero_length_span``  start == end (``zero_length="keep"``: kept)                 skipped
``missing_video``     the video file does not exist (``check_videos=True``)       skipped
``bad_duration``      duration missing/non-positive and not probeable             skipped
                      (probeable: replaced by the probed duration)                probed
``span_out_of_range`` start < 0 or end > duration, ``span_policy="clip"``:        clipped
                      clipped to [0, duration]; skipped if nothing is left, or
                      always with ``span_policy="skip"``                          skipped
``duplicate_id``      an id already loaded from this file                         skipped
====================  ==========================================================  =========

Two more are found when a record's video is decoded (:func:`video_duration_issue`, called by
:class:`videoopd.data.datasets.GroundingVideoDataset` for training and evaluation; the loader
only opens a video whose duration it must probe). They name the annotation's file and line
through :attr:`GroundingRecord.annotation_file` / ``annotation_location``:

====================  ==========================================================  =========
``span_beyond_video`` span end more than ``SPAN_END_SLACK_S`` (1 s) past the       kept
                      decoded video's duration (frames read / fps)
``duration_mismatch`` annotated duration off the decoded one by more than          kept
                      max(``DURATION_TOLERANCE_S`` (1 s), ``DURATION_TOLERANCE_FRACTION``
                      (5%) of it)
====================  ==========================================================  =========

Such records are kept, not skipped: they are reported (logged once per record), counted by
the dataset, carried in the batch (``data_issues``) and flagged in evaluation rows, so that
a benchmark's denominator does not change behind the user's back. The slack absorbs frame
rounding and container/stream duration differences (well under a second); the duration
tolerance absorbs rounded durations in annotation tables and re-encoded downloads.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple

__all__ = [
    "FORMATS",
    "MULTI_SPAN_POLICIES",
    "VIDEO_EXTENSIONS",
    "ZERO_LENGTH_POLICIES",
    "AnnotationError",
    "DataIssue",
    "GroundingRecord",
    "LoadResult",
    "LoadSummary",
    "detect_format",
    "load_annotations",
    "read_durations_csv",
    "video_duration_issue",
    "write_jsonl_records",
]

logger = logging.getLogger(__name__)

FORMATS = ("charades", "activitynet", "timelens_bench", "timelens_100k", "jsonl", "qvhighlights", "tvgbench")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")
SPAN_POLICIES = ("clip", "skip")
MULTI_SPAN_POLICIES = ("skip", "first", "longest", "any")
ZERO_LENGTH_POLICIES = ("skip", "keep")
_JSON_DOCUMENT_FORMATS = ("activitynet", "timelens_bench", "tvgbench")
# Float noise between a span end and the duration (95.03999999999999 vs 95.04), in seconds.
FLOAT_NOISE_S = 1e-6
_MAX_LOGGED_ISSUES = 20
SPAN_END_SLACK_S = 1.0
DURATION_TOLERANCE_S = 1.0
DURATION_TOLERANCE_FRACTION = 0.05
_CHARADES_LINE = re.compile(r"^\s*(?P<vid>\S+)\s+(?P<start>\S+)\s+(?P<end>\S+)\s*##(?P<query>.*)$")


@dataclass(frozen=True)
class GroundingRecord:
    """One grounding query: ``query`` happens during ``span`` (seconds) of ``video``."""

    id: str
    video: str
    query: str
    span: tuple[float, float]
    duration: float
    source: str
    # All windows of a query with several (multi_span="any"; span is the first), else None.
    windows: tuple[tuple[float, float], ...] | None = None
    # Where the record was read (for reports); not part of its identity.
    annotation_file: str | None = field(default=None, compare=False, repr=False)
    annotation_location: str | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["span"] = list(self.span)
        data["windows"] = None if self.windows is None else [list(w) for w in self.windows]
        return data

    @property
    def gt(self) -> list[float] | list[list[float]]:
        """The ground truth as the metrics take it: the span, or every window."""
        return list(self.span) if self.windows is None else [list(w) for w in self.windows]


@dataclass(frozen=True)
class DataIssue:
    """A problem found in an annotation file, where it is, and what was done about it."""

    file: str
    location: str
    kind: str
    message: str
    action: str

    def __str__(self) -> str:
        return f"{self.file}: {self.location}: {self.kind} ({self.action}): {self.message}"


class AnnotationError(ValueError):
    """Raised in strict mode for the first problem in an annotation file, and for a file
    with no valid records that is not (all) UTF-8 text; ``issue`` is the (first) problem."""

    def __init__(self, issue: DataIssue, message: str | None = None):
        super().__init__(message or str(issue))
        self.issue = issue


@dataclass
class LoadSummary:
    """What a loader read, kept and reported."""

    file: str
    format: str
    # Queries found in the file, kept or skipped; an entry that cannot be split into queries
    # (unparsable line, unpairable lists) counts once. kept + skipped == read.
    read: int = 0
    kept: int = 0
    issues: list[DataIssue] = field(default_factory=list)
    # Queries with several windows (whatever the multi_span policy did with them).
    multi_window: int = 0
    multi_span: str = "skip"

    @property
    def counts(self) -> dict[str, int]:
        """Issues per kind."""
        return dict(Counter(issue.kind for issue in self.issues))

    @property
    def skipped(self) -> int:
        return sum(issue.action == "skipped" for issue in self.issues)

    @property
    def clipped(self) -> int:
        return sum(issue.action == "clipped" for issue in self.issues)

    def report(self, max_issues: int | None = None) -> str:
        """A human-readable summary, listing up to ``max_issues`` issues (all by default)."""
        lines = [
            f"{self.file} ({self.format}): read {self.read}, kept {self.kept}, "
            f"skipped {self.skipped}, clipped {self.clipped}"
            + (f", multi-window {self.multi_window} (multi_span={self.multi_span})" if self.multi_window else "")
        ]
        if self.issues:
            lines.append("  issues: " + ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())))
        shown = self.issues if max_issues is None else self.issues[:max_issues]
        lines.extend(f"  {issue}" for issue in shown)
        if len(shown) < len(self.issues):
            lines.append(f"  ... and {len(self.issues) - len(shown)} more (counted in the issues line above)")
        return "\n".join(lines)


class LoadResult(NamedTuple):
    records: list[GroundingRecord]
    summary: LoadSummary


@dataclass
class _Candidate:
    """A query as read from the file, before validation."""

    location: str
    video: str
    query: Any
    span: Any
    duration: Any
    source: str
    id: str | None = None


class _Reporter:
    def __init__(self, summary: LoadSummary, strict: bool):
        self.summary = summary
        self.strict = strict

    def __call__(self, location: str, kind: str, message: str, action: str) -> None:
        issue = DataIssue(self.summary.file, location, kind, message, action)
        if self.strict:
            raise AnnotationError(issue)
        self.summary.issues.append(issue)
        if len(self.summary.issues) <= _MAX_LOGGED_ISSUES:
            logger.warning("%s", issue)

    def malformed(self, location: str, message: str) -> None:
        """An entry that cannot be read as a query: counted as read once, reported, skipped."""
        self.summary.read += 1
        self(location, "malformed", message, "skipped")


# --------------------------------------------------------------------------------------
# format detection


def _classify_json_object(obj: Any) -> str | None:
    if isinstance(obj, list):
        first = obj[0] if obj else None
        if isinstance(first, dict) and {"path", "question", "answer"} <= first.keys():
            return "tvgbench"
        return None
    if not isinstance(obj, dict):
        return None
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
    data = path.read_bytes().removeprefix(_UTF8_BOM)
    raw_lines = data.split(b"\n")
    first = next((number for number, raw in enumerate(raw_lines, start=1) if raw.strip()), None)
    if first is None:
        raise ValueError(f"cannot detect the format of {path}: the file is empty")
    # Bytes that are not UTF-8 are replaced here, so that the structure shows through; the
    # loader reports them with their line.
    text = data.decode("utf-8", errors="replace")
    first_line = raw_lines[first - 1].decode("utf-8", errors="replace")
    if _CHARADES_LINE.match(first_line):
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
            _decode_line(raw_lines[first - 1], first)
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


# --------------------------------------------------------------------------------------
# helpers


_UTF8_BOM = b"\xef\xbb\xbf"


def _not_utf8(data: bytes, error: UnicodeDecodeError) -> tuple[int, str]:
    """The line (counted from 1) of the first byte of ``data`` that is not UTF-8, and what
    the problem is, naming the byte and its column (in bytes, from 1)."""
    line = data.count(b"\n", 0, error.start) + 1
    column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
    return line, f"not valid UTF-8: byte 0x{data[error.start]:02x} at column {column}"


def _decode_line(raw: bytes, line_number: int) -> str:
    """One line of a text file, as str; ValueError naming the byte and column if it is not
    UTF-8. The first line's byte-order mark is dropped."""
    if line_number == 1 and raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(_not_utf8(raw, exc)[1]) from None


def _text_lines(path: Path, report: _Reporter) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line of ``path`` that is UTF-8, newline removed; other
    lines are reported as bad_encoding and left out."""
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                yield line_number, _decode_line(raw, line_number).rstrip("\r\n")
            except ValueError as exc:
                report.summary.read += 1
                report(f"line {line_number}", "bad_encoding", str(exc), "skipped")


def read_durations_csv(path: str | Path) -> dict[str, float]:
    """Video durations from a CSV with an ``id`` column and a ``length`` or ``duration`` column
    (the Charades ``Charades_v1_{train,test}.csv`` files qualify)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"durations CSV not found: {path}")
    durations: dict[str, float] = {}
    lines = []
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                lines.append(_decode_line(raw, line_number))
            except ValueError as exc:
                raise ValueError(f"{path}: line {line_number}: {exc}") from None
    reader = csv.DictReader(lines)
    columns = reader.fieldnames or []
    length_column = next((c for c in ("length", "duration") if c in columns), None)
    if "id" not in columns or length_column is None:
        raise ValueError(
            f"durations CSV {path} needs an 'id' column and a 'length' or 'duration' column, has {columns}"
        )
    for line_number, row in enumerate(reader, start=2):
        try:
            durations[row["id"]] = float(row[length_column])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: line {line_number}: bad {length_column} {row[length_column]!r}") from exc
    return durations


def _resolve_video(name: str, base: Path, strip_prefix: str | None = None) -> tuple[Path, bool]:
    """The video file for ``name`` under ``base`` and whether it exists."""
    raw = Path(name)
    root = raw if raw.is_absolute() else base / raw
    if raw.suffix.lower() in VIDEO_EXTENSIONS:
        return root, root.is_file()
    stems = [root]
    if strip_prefix and raw.name.startswith(strip_prefix):
        stems.append(root.with_name(raw.name[len(strip_prefix) :]))
    candidates = [stem.with_name(stem.name + ext) for stem in stems for ext in VIDEO_EXTENSIONS]
    for candidate in candidates:
        if candidate.is_file():
            return candidate, True
    return candidates[0], False


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"not a number: {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return number


def _normalize_query(query: Any) -> str:
    if not isinstance(query, str):
        return ""
    return re.sub(r"\s+", " ", query).strip()


# --------------------------------------------------------------------------------------
# per-format readers: yield candidates; report what cannot even be read


def _read_charades(path: Path, report: _Reporter, source: str) -> Iterator[_Candidate]:
    per_video: Counter[str] = Counter()
    for line_number, line in _text_lines(path, report):
        if not line.strip():
            continue
        location = f"line {line_number}"
        match = _CHARADES_LINE.match(line)
        if match is None:
            report.summary.read += 1
            report(location, "malformed", f"expected 'vid start end##sentence', got {line.strip()!r}", "skipped")
            continue
        vid = match["vid"]
        index = per_video[vid]
        per_video[vid] += 1
        yield _Candidate(
            location, vid, match["query"], [match["start"], match["end"]], None, source, f"{vid}#{index}"
        )


def _read_json_document(path: Path, report: _Reporter, kind: type = dict) -> Any:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, problem = _not_utf8(data, exc)
        report.summary.read += 1
        report(f"line {line}", "bad_encoding", f"{problem}; the JSON document cannot be read", "skipped")
        return None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        report.summary.read += 1
        report(f"line {exc.lineno}", "malformed", f"invalid JSON: {exc.msg} (column {exc.colno})", "skipped")
        return None
    if not isinstance(document, kind):
        expected = "a JSON object keyed by video id" if kind is dict else "a JSON list of items"
        report("top level", "malformed", f"expected {expected}, got {type(document).__name__}", "skipped")
        return None
    return text if kind is list else document


def _json_list_items(text: str) -> Iterator[tuple[int, Any]]:
    """(line the item starts on, item) of every item of a JSON list (``text`` is known to be
    one), so that a bad item is reported with its line."""
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    while True:
        while text[position] in " \t\r\n,":
            position += 1
        if text[position] == "]":
            return
        item, end = decoder.raw_decode(text, position)
        yield text.count("\n", 0, position) + 1, item
        position = end


def _read_keyed_json(
    path: Path, report: _Reporter, source: str, spans_key: str, queries_key: str
) -> Iterator[_Candidate]:
    document = _read_json_document(path, report)
    if document is None:
        return
    for vid, entry in document.items():
        location = f"key {vid!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get(spans_key), list) or not isinstance(
            entry.get(queries_key), list
        ):
            report.summary.read += 1
            report(location, "malformed", f"expected an object with '{spans_key}' and '{queries_key}' lists", "skipped")
            continue
        spans, queries = entry[spans_key], entry[queries_key]
        if len(spans) != len(queries):
            report.summary.read += 1
            report(
                location,
                "malformed",
                f"{len(spans)} {spans_key} but {len(queries)} {queries_key}: cannot pair them",
                "skipped",
            )
            continue
        for index, (span, query) in enumerate(zip(spans, queries)):
            yield _Candidate(
                f"key {vid!r} {queries_key}[{index}]",
                vid,
                query,
                span,
                entry.get("duration"),
                source,
                f"{vid}#{index}",
            )


def _iter_jsonl(path: Path, report: _Reporter) -> Iterator[tuple[int, Any]]:
    for line_number, line in _text_lines(path, report):
        if not line.strip():
            continue
        try:
            yield line_number, json.loads(line)
        except json.JSONDecodeError as exc:
            report.summary.read += 1
            report(f"line {line_number}", "malformed", f"invalid JSON: {exc.msg}", "skipped")


def _read_timelens_100k(path: Path, report: _Reporter) -> Iterator[_Candidate]:
    per_video: Counter[str] = Counter()
    for line_number, obj in _iter_jsonl(path, report):
        location = f"line {line_number}"
        if not isinstance(obj, dict) or not isinstance(obj.get("events"), list) or not isinstance(
            obj.get("video_path"), str
        ):
            report.summary.read += 1
            report(location, "malformed", "expected an object with 'video_path' and an 'events' list", "skipped")
            continue
        video = obj["video_path"]
        for index, event in enumerate(obj["events"]):
            event_location = f"line {line_number} events[{index}]"
            if not isinstance(event, dict):
                report.summary.read += 1
                report(event_location, "malformed", f"expected an object, got {event!r}", "skipped")
                continue
            key = Path(video).stem
            count = per_video[key]
            per_video[key] += 1
            yield _Candidate(
                event_location,
                video,
                event.get("query"),
                event.get("span"),
                obj.get("duration"),
                str(obj.get("source") or "timelens_100k"),
                f"{key}#{count}",
            )


def _read_plain_jsonl(path: Path, report: _Reporter, source: str) -> Iterator[_Candidate]:
    per_video: Counter[str] = Counter()
    for line_number, obj in _iter_jsonl(path, report):
        location = f"line {line_number}"
        if not isinstance(obj, dict) or not isinstance(obj.get("video"), str):
            report.malformed(location, "expected an object with a 'video' string")
            continue
        if "start" not in obj or "end" not in obj:
            report.malformed(location, "missing 'start' or 'end'")
            continue
        video = obj["video"]
        key = Path(video).stem
        generated_id = f"{key}#{per_video[key]}"
        per_video[key] += 1
        record_id = obj.get("id")
        yield _Candidate(
            location,
            video,
            obj.get("query"),
            obj["windows"] if obj.get("windows") is not None else [obj["start"], obj["end"]],
            obj.get("duration"),
            str(obj.get("source") or source),
            str(record_id) if record_id is not None else generated_id,
        )


def _read_qvhighlights(path: Path, report: _Reporter) -> Iterator[_Candidate]:
    for line_number, obj in _iter_jsonl(path, report):
        location = f"line {line_number}"
        if not isinstance(obj, dict) or not isinstance(obj.get("vid"), str):
            report.malformed(location, "expected an object with a 'vid' string")
            continue
        if "relevant_windows" not in obj:
            report.malformed(location, "no 'relevant_windows' (the test split does not publish them)")
            continue
        qid = obj.get("qid")
        yield _Candidate(location, obj["vid"], obj.get("query"), obj["relevant_windows"], obj.get("duration"),
                         "qvhighlights", None if qid is None else str(qid))


def _tvgbench_span(answer: Any) -> list[str] | None:
    if not isinstance(answer, str):
        return None
    parts = answer.split("-")
    return parts if len(parts) == 2 else None


def _read_tvgbench(path: Path, report: _Reporter) -> Iterator[_Candidate]:
    text = _read_json_document(path, report, kind=list)
    if text is None:
        return
    per_video: Counter[str] = Counter()
    for index, (line_number, item) in enumerate(_json_list_items(text)):
        location = f"line {line_number} item[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            report.malformed(location, "expected an object with a 'path' string")
            continue
        span = _tvgbench_span(item.get("answer"))
        if span is None:
            report.malformed(location, f"answer must be 'start-end', got {item.get('answer')!r}")
            continue
        key = Path(item["path"]).stem
        generated_id = f"{key}#{per_video[key]}"
        per_video[key] += 1
        qid = item.get("qid")
        yield _Candidate(location, item["path"], item.get("question"), span, item.get("duration"),
                         str(item.get("dataset_name") or "tvgbench"), str(qid) if qid is not None else generated_id)


# --------------------------------------------------------------------------------------
# validation


def _parse_windows(raw: Any) -> list[tuple[float, float]] | None:
    """The (start, end) windows of a query (TimeLens writes single spans as [[start, end]],
    QVHighlights several), or None when they are not pairs of numbers."""
    windows = raw if isinstance(raw, (list, tuple)) and raw and all(isinstance(s, (list, tuple)) for s in raw) \
        else [raw]
    parsed = []
    for window in windows:
        if not isinstance(window, (list, tuple)) or len(window) != 2:
            return None
        try:
            parsed.append((_as_float(window[0]), _as_float(window[1])))
        except ValueError:
            return None
    return parsed


class _Validator:
    def __init__(
        self,
        report: _Reporter,
        base: Path,
        durations: dict[str, float],
        check_videos: bool,
        span_policy: str,
        strip_prefix: str | None,
        source: str | None,
        multi_span: str = "skip",
        zero_length: str = "skip",
        durations_name: str = "the durations table",
    ):
        self.report = report
        self.base = base
        self.durations = durations
        self.durations_name = durations_name
        self.check_videos = check_videos
        self.span_policy = span_policy
        self.multi_span = multi_span
        self.zero_length = zero_length
        self.strip_prefix = strip_prefix
        self.source = source  # overrides the file's own source names
        self.seen_ids: set[str] = set()
        self.probed: dict[Path, float | None] = {}

    def _probe(self, video: Path) -> float | None:
        if video not in self.probed:
            from videoopd.data.video import VideoDecodeError, probe_video  # decoding libraries load lazily

            try:
                self.probed[video] = probe_video(video).duration
            except (VideoDecodeError, FileNotFoundError):
                self.probed[video] = None
        return self.probed[video]

    def __call__(self, candidate: _Candidate) -> GroundingRecord | None:
        report, location = self.report, candidate.location
        report.summary.read += 1
        query = _normalize_query(candidate.query)
        if not query:
            report(location, "empty_query", f"query is {candidate.query!r}", "skipped")
            return None
        windows = _parse_windows(candidate.span)
        if windows is None:
            report(location, "malformed", f"span must be two numbers, got {candidate.span!r}", "skipped")
            return None
        if len(windows) > 1:
            report.summary.multi_window += 1
            if self.multi_span == "skip":
                report(location, "multi_span", f"{len(windows)} spans {candidate.span!r} for one query", "skipped")
                return None
            if self.multi_span == "first":
                windows = windows[:1]
            elif self.multi_span == "longest":
                windows = [max(windows, key=lambda w: w[1] - w[0])]  # max keeps the first of equals
        for start, end in windows:
            if start > end:
                report(location, "inverted_span", f"start {start} > end {end}", "skipped")
                return None
            if start == end:
                if self.zero_length == "skip":
                    report(location, "zero_length_span", f"start {start} == end {end}", "skipped")
                    return None
                report(location, "zero_length_span", f"start {start} == end {end}", "kept")
        video, exists = _resolve_video(candidate.video, self.base, self.strip_prefix)
        if self.check_videos and not exists:
            report(location, "missing_video", f"video file not found: {video}", "skipped")
            return None
        duration = self._duration(candidate, video, exists)
        if duration is None:
            return None
        kept_windows = []
        for window in windows:
            window = self._within(location, window, duration)
            if window is None:
                return None
            kept_windows.append(window)
        start, end = kept_windows[0]
        record_id = candidate.id or f"{Path(candidate.video).stem}@{location}"
        if record_id in self.seen_ids:
            report(location, "duplicate_id", f"id {record_id!r} was already loaded", "skipped")
            return None
        self.seen_ids.add(record_id)
        source = self.source or candidate.source
        return GroundingRecord(record_id, str(video), query, (start, end), duration, source,
                               windows=tuple(kept_windows) if len(kept_windows) > 1 else None,
                               annotation_file=report.summary.file, annotation_location=location)

    def _within(self, location: str, window: tuple[float, float], duration: float) -> tuple[float, float] | None:
        """``window`` inside [0, duration] (float noise absorbed silently, more clipped and
        reported), or None when it is skipped."""
        start, end = window
        if -FLOAT_NOISE_S <= start < 0:
            start = 0.0
        if duration < end <= duration + FLOAT_NOISE_S:
            end = duration
        if not (start < 0 or end > duration):
            return start, end
        clipped = (max(0.0, start), min(duration, end))
        if self.span_policy == "skip" or clipped[0] >= clipped[1]:
            self.report(location, "span_out_of_range", f"span ({start}, {end}) outside [0, {duration}]", "skipped")
            return None
        self.report(location, "span_out_of_range",
                    f"span ({start}, {end}) outside [0, {duration}], clipped to ({clipped[0]}, {clipped[1]})",
                    "clipped")
        return clipped

    def _duration(self, candidate: _Candidate, video: Path, exists: bool) -> float | None:
        report, location = self.report, candidate.location
        raw = candidate.duration
        if raw is None and candidate.video in self.durations:
            raw = self.durations[candidate.video]
        if raw is not None:
            try:
                duration = _as_float(raw)
            except ValueError:
                duration = -1.0
            if duration > 0:
                return duration
        # No usable duration in the file: the video is the authority. A missing duration
        # (Charades without a CSV) is the documented path, not an issue; a bad one is.
        probed = self._probe(video) if exists else None
        if probed is not None and probed > 0:
            if raw is not None:
                report(location, "bad_duration", f"duration {raw!r} replaced by the probed {probed:.3f}", "probed")
            return probed
        if raw is not None:
            reason = f"duration {raw!r} is not a positive number"
        elif self.durations:
            reason = f"video id {candidate.video!r} is not in {self.durations_name}"
        else:
            reason = "no duration given"
        report(location, "bad_duration", f"{reason} and the video {video} cannot be probed", "skipped")
        return None


def video_duration_issue(record: GroundingRecord, video_duration: float) -> DataIssue | None:
    """The problem, if any, between ``record``'s span and duration and the duration of its
    video as decoded (see the module docstring: ``span_beyond_video``, ``duration_mismatch``;
    both are kept)."""
    file = record.annotation_file or "(records built in code)"
    location = record.annotation_location or f"id {record.id!r}"
    end = record.span[1]
    if end > video_duration + SPAN_END_SLACK_S:
        return DataIssue(
            file, location, "span_beyond_video",
            f"span ends at {end:g} s but the video {record.video} lasts {video_duration:.1f} s "
            f"(annotated duration {record.duration:g} s)", "kept",
        )
    tolerance = max(DURATION_TOLERANCE_S, DURATION_TOLERANCE_FRACTION * video_duration)
    if abs(record.duration - video_duration) > tolerance:
        return DataIssue(
            file, location, "duration_mismatch",
            f"annotated duration {record.duration:g} s but the video {record.video} lasts {video_duration:.1f} s "
            f"(tolerance {tolerance:.1f} s)", "kept",
        )
    return None


# --------------------------------------------------------------------------------------
# entry point


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
    multi_span: str = "skip",
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
        multi_span: what a query with several windows becomes: ``"skip"`` (reported),
            ``"first"``, ``"longest"`` or ``"any"`` (all windows; best IoU scores). Counted in
            ``summary.multi_window`` whatever the policy.
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
    report = _Reporter(summary, strict)
    if format == "charades":
        candidates = _read_charades(path, report, "charades_sta")
    elif format == "activitynet":
        candidates = _read_keyed_json(path, report, "activitynet", "timestamps", "sentences")
    elif format == "timelens_bench":
        candidates = _read_keyed_json(path, report, path.stem, "spans", "queries")
    elif format == "timelens_100k":
        candidates = _read_timelens_100k(path, report)
    elif format == "qvhighlights":
        candidates = _read_qvhighlights(path, report)
    elif format == "tvgbench":
        candidates = _read_tvgbench(path, report)
    else:
        candidates = _read_plain_jsonl(path, report, path.stem)

    validate = _Validator(
        report,
        base=Path(video_root) if video_root is not None else path.parent,
        durations=duration_table,
        check_videos=check_videos,
        span_policy=span_policy,
        strip_prefix="v_" if format == "activitynet" else None,
        source=source,
        multi_span=multi_span,
        zero_length=zero_length,
        durations_name=f"the durations CSV {durations}" if isinstance(durations, (str, Path)) else "the durations table",
    )
    records = [record for record in map(validate, candidates) if record is not None]
    summary.kept = len(records)
    not_text = [issue for issue in summary.issues if issue.kind == "bad_encoding"]
    if not records and not_text:
        first = not_text[0]
        if format in _JSON_DOCUMENT_FORMATS:
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


def write_jsonl_records(records: list[GroundingRecord], path: str | Path) -> None:
    """Write records in the plain ``jsonl`` format. A relative video path (as a record loaded
    through a relative annotation path holds it: relative to the working folder) is written
    relative to ``path``'s folder, where the loader resolves it; an absolute one as it is."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            video = record.video
            if not os.path.isabs(video):
                video = os.path.relpath(os.path.abspath(video), os.path.abspath(path.parent))
            row = {
                "id": record.id,
                "video": video,
                "query": record.query,
                "start": record.span[0],
                "end": record.span[1],
                "duration": record.duration,
                "source": record.source,
            }
            if record.windows is not None:
                row["windows"] = [list(window) for window in record.windows]
            handle.write(json.dumps(row) + "\n")
