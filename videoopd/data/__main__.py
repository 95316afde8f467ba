"""Data commands. ``python -m videoopd.data convert IN OUT --to jsonl|swift``: read an annotation
file of any format this package reads (``--format auto`` detects it) and write what it keeps in
ours (``jsonl``) or the ms-swift / LLaMA-Factory video format (``swift``, prompts and answers in
``--style``), printing the load report (every line left out, with its line).

A thin command: the work is :func:`videoopd.data.annotations.convert.convert_annotations`. Its
options are a dataclass parsed by transformers' ``HfArgumentParser`` (HF spelling:
``--video_root``, dashes accepted too): the training commands' option machinery lives in
``videoopd.training``, a layer above this package. Exit status 0, or 2 with a one-line error.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from transformers import HfArgumentParser

from videoopd.data.annotations import FORMATS, MULTI_SPAN_POLICIES, ZERO_LENGTH_POLICIES
from videoopd.data.annotations.convert import WRITERS, convert_annotations
from videoopd.grounding.prompts import PROMPT_STYLES

PROG = "python -m videoopd.data"


@dataclass
class ConvertOptions:
    to: Literal[WRITERS] = field(
        default="jsonl",
        metadata={"help": "output format: jsonl (ours) or swift (ms-swift / LLaMA-Factory messages + videos)"},
    )
    format: Literal[("auto", *FORMATS)] = field(default="auto", metadata={"help": "input format (auto: detected)"})
    video_root: str | None = field(default=None, metadata={"help": "folder of the videos (default: IN's folder)"})
    durations: str | None = field(default=None, metadata={"help": "Charades-STA: CSV with id and length columns"})
    multi_span: Literal[MULTI_SPAN_POLICIES] = field(
        default="auto",
        metadata={"help": "a query with several windows: auto (the format's own rule), skip, first, longest or any"},
    )
    zero_length: Literal[ZERO_LENGTH_POLICIES] = field(
        default="skip", metadata={"help": "a zero-length span: skip it (reported) or keep it"}
    )
    style: Literal[tuple(PROMPT_STYLES)] = field(
        default="paper",
        metadata={
            "help": "--to swift: the prompt and answer style of the lines written (a record's own prompt is kept)"
        },
    )
    check_videos: bool = field(
        default=True,
        metadata={
            "help": "leave out (and report) queries whose video is missing; --no_check_videos converts without them"
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = HfArgumentParser(ConvertOptions, prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["convert"])
    parser.add_argument("input", metavar="IN", help="annotation file to read")
    parser.add_argument("output", metavar="OUT", help="file to write")
    try:
        options, paths = parser.parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv))
        summary = convert_annotations(
            paths.input,
            paths.output,
            options.to,
            style=options.style,
            format=options.format,
            video_root=options.video_root,
            durations=options.durations,
            multi_span=options.multi_span,
            zero_length=options.zero_length,
            check_videos=options.check_videos,
        )
    except (FileNotFoundError, ValueError) as exc:  # AnnotationError is a ValueError
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print(summary.report(max_issues=20))
    print(f"wrote {summary.kept} records to {paths.output} ({options.to})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
