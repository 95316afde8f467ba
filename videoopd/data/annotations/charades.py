"""Charades-STA text, one query a line: ``AO8RW 0.0 6.9##a person puts a book away.``"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from videoopd.data.annotations.records import Candidate, Reporter
from videoopd.data.annotations.text import text_lines

__all__: list[str] = []  # nothing here is promised: docs/api.md

CHARADES_LINE = re.compile(r"^\s*(?P<vid>\S+)\s+(?P<start>\S+)\s+(?P<end>\S+)\s*##(?P<query>.*)$")


def read_charades(path: Path, report: Reporter) -> Iterator[Candidate]:
    per_video: Counter[str] = Counter()
    for line_number, line in text_lines(path, report):
        if not line.strip():
            continue
        location = f"line {line_number}"
        match = CHARADES_LINE.match(line)
        if match is None:
            report.summary.read += 1
            report(location, "malformed", f"expected 'vid start end##sentence', got {line.strip()!r}", "skipped")
            continue
        vid = match["vid"]
        index = per_video[vid]
        per_video[vid] += 1
        yield Candidate(
            location, vid, match["query"], [match["start"], match["end"]], None, "charades_sta", f"{vid}#{index}"
        )
