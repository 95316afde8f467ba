"""Conversion between annotation formats: any readable format (:data:`FORMATS`) into ours
(``jsonl``) or the ms-swift / LLaMA-Factory one (``swift``), through the loader, so that every
line left out is in the returned report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from videoopd.data.annotations.jsonl import write_jsonl_records
from videoopd.data.annotations.loader import load_annotations
from videoopd.data.annotations.records import LoadSummary
from videoopd.data.annotations.swift import write_swift_records
from videoopd.grounding.prompts import PROMPT_STYLES

__all__ = ["convert_annotations"]

# The formats a set can be written in. The ms-swift writer renders prompts and answers in a style.
WRITERS = ("jsonl", "swift")


def convert_annotations(
    source: str | Path, target: str | Path, to: str = "jsonl", *, style: str = "paper", **load_options: Any
) -> LoadSummary:
    """Read ``source`` (``load_options`` as :func:`load_annotations` takes them: ``format``,
    ``video_root``, ``durations``, ``multi_span``, ...) and write what it keeps to ``target`` in
    the format ``to`` (one of :data:`WRITERS`; ``style``: the prompt style of ``swift`` lines).
    Returns the load's summary: what was read, kept and left out, line by line.

    Raises:
        ValueError: a bad ``to`` or ``style``, ``target`` that is ``source``, or nothing to write
            (the message holds the report).
    """
    if to not in WRITERS:
        raise ValueError(f"to must be one of {', '.join(WRITERS)}, got {to!r}")
    if style not in PROMPT_STYLES:
        raise ValueError(f"style must be one of {', '.join(PROMPT_STYLES)}, got {style!r}")
    source, target = Path(source), Path(target)
    if target.exists() and source.exists() and target.samefile(source):
        raise ValueError(f"the output {target} is the input file: it would be replaced")
    records, summary = load_annotations(source, **load_options)
    if not records:
        raise ValueError(f"{source}: no records to write\n" + summary.report(max_issues=20))
    target.parent.mkdir(parents=True, exist_ok=True)
    if to == "swift":
        write_swift_records(records, target, style=style)
    else:
        write_jsonl_records(records, target)
    return summary
