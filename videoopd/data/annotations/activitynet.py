"""ActivityNet Captions JSON ``{vid: {duration, timestamps, sentences}}``, and the keyed-JSON
reader it shares with TimeLens-Bench (:func:`read_keyed_json`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from videoopd.data.annotations.records import Candidate, Reporter
from videoopd.data.annotations.text import read_json_document

__all__: list[str] = []  # nothing here is promised: docs/api.md


def read_keyed_json(path: Path, report: Reporter, source: str, spans_key: str, queries_key: str) -> Iterator[Candidate]:
    document = read_json_document(path, report)
    if document is None:
        return
    for vid, entry in document.items():
        location = f"key {vid!r}"
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get(spans_key), list)
            or not isinstance(entry.get(queries_key), list)
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
            yield Candidate(
                f"key {vid!r} {queries_key}[{index}]",
                vid,
                query,
                span,
                entry.get("duration"),
                source,
                f"{vid}#{index}",
            )


def read_activitynet(path: Path, report: Reporter) -> Iterator[Candidate]:
    return read_keyed_json(path, report, "activitynet", "timestamps", "sentences")
