"""QVHighlights (moment_detr's ``highlight_{train,val}_release.jsonl``), a line per query
``{qid, query, duration, vid, relevant_windows: [[s, e], ...], ...}``; the video is
``{vid}.mp4`` under the video root. A query may have several windows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from videoopd.data.annotations.records import Candidate, Reporter
from videoopd.data.annotations.text import iter_jsonl

__all__: list[str] = []  # nothing here is promised: docs/api.md


def read_qvhighlights(path: Path, report: Reporter) -> Iterator[Candidate]:
    for line_number, obj in iter_jsonl(path, report):
        location = f"line {line_number}"
        if not isinstance(obj, dict) or not isinstance(obj.get("vid"), str):
            report.malformed(location, "expected an object with a 'vid' string")
            continue
        if "relevant_windows" not in obj:
            report.malformed(location, "no 'relevant_windows' (the test split does not publish them)")
            continue
        qid = obj.get("qid")
        yield Candidate(
            location,
            obj["vid"],
            obj.get("query"),
            obj["relevant_windows"],
            obj.get("duration"),
            "qvhighlights",
            None if qid is None else str(qid),
        )
