"""The plain JSONL format, a line per query ``{video, query, start, end, duration}`` (optional
``id``, ``source``, ``windows``, ``prompt``, ``system`` and ``teacher``: the name of the teacher that
scores the query when a run has several): its reader and its writer."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from videoopd.data.annotations.records import Candidate, GroundingRecord, Reporter
from videoopd.data.annotations.text import iter_jsonl

__all__: list[str] = []  # nothing here is promised: docs/api.md


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
        problem = not_text(obj, "prompt", "system", "teacher")
        if problem is not None:
            report.malformed(location, problem)
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
            obj.get("prompt"),
            obj.get("system"),
            obj.get("teacher"),
        )


def not_text(obj: dict, *keys: str) -> str | None:
    """Why one of the optional text fields ``keys`` of ``obj`` is bad (present, not null and
    not a string), or None."""
    for key in keys:
        if obj.get(key) is not None and not isinstance(obj[key], str):
            return f"'{key}' must be a string, got {obj[key]!r}"
    return None


def video_path_for(video: str, path: Path) -> str:
    """``video`` as a file written at ``path`` names it: a relative path (relative to the working
    folder, as a record loaded through a relative annotation path holds it) becomes relative to
    ``path``'s folder, where the loader resolves it; an absolute one stays as it is."""
    if os.path.isabs(video):
        return video
    return os.path.relpath(os.path.abspath(video), os.path.abspath(path.parent))


def write_jsonl_records(records: list[GroundingRecord], path: str | Path) -> None:
    """Write records in the plain ``jsonl`` format. A relative video path (as a record loaded
    through a relative annotation path holds it: relative to the working folder) is written
    relative to ``path``'s folder, where the loader resolves it; an absolute one as it is."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            video = video_path_for(record.video, path)
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
            row.update(
                {
                    key: getattr(record, key)
                    for key in ("prompt", "system", "teacher")
                    if getattr(record, key) is not None
                }
            )
            handle.write(json.dumps(row) + "\n")
