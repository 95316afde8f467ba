"""Time-R1's TVGBench, a JSON list of ``{path, question, answer: "13.4-28.1", duration,
dataset_name, ...}``; a bad item is reported with the line it starts on."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from videoopd.data.annotations.records import Candidate, Reporter
from videoopd.data.annotations.text import json_list_items, read_json_document

__all__: list[str] = []  # nothing here is promised: docs/api.md


def _tvgbench_span(answer: Any) -> list[str] | None:
    if not isinstance(answer, str):
        return None
    parts = answer.split("-")
    return parts if len(parts) == 2 else None


def read_tvgbench(path: Path, report: Reporter) -> Iterator[Candidate]:
    text = read_json_document(path, report, kind=list)
    if text is None:
        return
    per_video: Counter[str] = Counter()
    for index, (line_number, item) in enumerate(json_list_items(text)):
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
        yield Candidate(
            location,
            item["path"],
            item.get("question"),
            span,
            item.get("duration"),
            str(item.get("dataset_name") or "tvgbench"),
            str(qid) if qid is not None else generated_id,
        )
