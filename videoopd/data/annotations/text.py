"""Reading annotation files as text: UTF-8 lines with their numbers (a bad byte reported with
its line and column), JSON lines, JSON documents and the items of a JSON list with the line
each starts on, numbers, and the durations CSV."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from videoopd.data.annotations.records import Reporter

__all__: list[str] = []  # nothing here is promised: docs/api.md

UTF8_BOM = b"\xef\xbb\xbf"


def not_utf8(data: bytes, error: UnicodeDecodeError) -> tuple[int, str]:
    """The line (counted from 1) of the first byte of ``data`` that is not UTF-8, and what
    the problem is, naming the byte and its column (in bytes, from 1)."""
    line = data.count(b"\n", 0, error.start) + 1
    column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
    return line, f"not valid UTF-8: byte 0x{data[error.start]:02x} at column {column}"


def decode_line(raw: bytes, line_number: int) -> str:
    """One line of a text file, as str; ValueError naming the byte and column if it is not
    UTF-8. The first line's byte-order mark is dropped."""
    if line_number == 1 and raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(not_utf8(raw, exc)[1]) from None


def text_lines(path: Path, report: Reporter) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line of ``path`` that is UTF-8, newline removed; other
    lines are reported as bad_encoding and left out."""
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                yield line_number, decode_line(raw, line_number).rstrip("\r\n")
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
                lines.append(decode_line(raw, line_number))
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


def as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"not a number: {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return number


def read_json_document(path: Path, report: Reporter, kind: type = dict) -> Any:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, problem = not_utf8(data, exc)
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


def json_list_items(text: str) -> Iterator[tuple[int, Any]]:
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


def iter_jsonl(path: Path, report: Reporter) -> Iterator[tuple[int, Any]]:
    for line_number, line in text_lines(path, report):
        if not line.strip():
            continue
        try:
            yield line_number, json.loads(line)
        except json.JSONDecodeError as exc:
            report.summary.read += 1
            report(f"line {line_number}", "malformed", f"invalid JSON: {exc.msg}", "skipped")
