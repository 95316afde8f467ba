"""The plain JSONL format, a line per query ``{video, query, start, end, duration}`` (optional
``id``, ``source`` and ``windows``): its reader and its writer."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Iterator

from videoopd.data.annotations.records import Candidate, GroundingRecord, Reporter
from videoopd.data.annotations.text import iter_jsonl

__all__ = ["read_plain_jsonl", "write_jsonl_records"]


def read_plain_jsonl(path: Path, report: Reporter) -> Iterator[Candidate]:
    per_video: Counter[str] = Counter()
    for line_number, obj in iter_jsonl(path, report):
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
        yield Candidate(
            location,
            video,
            obj.get("query"),
            obj["windows"] if obj.get("windows") is not None else [obj["start"], obj["end"]],
            obj.get("duration"),
            str(obj.get("source") or path.stem),
            str(record_id) if record_id is not None else generated_id,
        )


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
