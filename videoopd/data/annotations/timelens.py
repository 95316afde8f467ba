"""TimeLens's two formats: TimeLens-Bench JSON ``{vid: {duration, spans, queries}}`` (the
source is the file's stem) and TimeLens-100K JSONL, a line per video
``{source, video_path, duration, events: [{query, span}]}``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from videoopd.data.annotations.activitynet import read_keyed_json
from videoopd.data.annotations.records import Candidate, Reporter
from videoopd.data.annotations.text import iter_jsonl

__all__: list[str] = []  # nothing here is promised: docs/api.md


def read_timelens_bench(path: Path, report: Reporter) -> Iterator[Candidate]:
    return read_keyed_json(path, report, path.stem, "spans", "queries")


def read_timelens_100k(path: Path, report: Reporter) -> Iterator[Candidate]:
    per_video: Counter[str] = Counter()
    for line_number, obj in iter_jsonl(path, report):
        location = f"line {line_number}"
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("events"), list)
            or not isinstance(obj.get("video_path"), str)
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
            yield Candidate(
                event_location,
                video,
                event.get("query"),
                event.get("span"),
                obj.get("duration"),
                str(obj.get("source") or "timelens_100k"),
                f"{key}#{count}",
            )
