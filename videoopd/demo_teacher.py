"""``python -m videoopd.demo_teacher``: regenerate the CPU demo's tiny teacher and student
(synthetic data, then ``python -m videoopd.sft`` with the shipped recipe, then the export
rule of :mod:`videoopd.demo.teacher`).

    python -m videoopd.demo_teacher --work runs/demo-teacher          # hours on a 2-core CPU
    python -m videoopd.demo_teacher --export-only RUN [--heldout FILE]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from videoopd import sft
from videoopd.demo.teacher import (
    HELDOUT,
    SFT_RECIPE,
    STUDENT_DIR,
    TEACHER_DIR,
    TRAIN_VIDEOS,
    export,
    generate_split,
    mixed_pool,
)

__all__ = ["main", "regenerate"]


def regenerate(work: Path, out: Path = TEACHER_DIR, student_out: Path = STUDENT_DIR, extra_args: Sequence[str] = (),
               train_videos: int | None = None, heldout_videos: int | None = None) -> int:
    """Generate the data, run the SFT recipe (``extra_args`` override it), and copy the best
    held-out checkpoint to ``out`` and the student checkpoint to ``student_out``.

    The student is the recipe's own checkpoint from the last evaluation (step > 0) whose
    held-out mIoU is at least 10 points below the teacher's: the same model, less trained.
    """
    work.mkdir(parents=True, exist_ok=True)
    parts = [generate_split(work / name, train_videos or videos, seed, events=2 if name == "two_events" else 1)
             for name, (videos, seed) in TRAIN_VIDEOS.items()]
    pool = mixed_pool(parts, work / "train.jsonl")
    heldout = generate_split(work / "heldout", heldout_videos or HELDOUT[0], HELDOUT[1])
    run = work / "sft"
    code = sft.main([*SFT_RECIPE, "--train-data", str(pool), "--eval-data", str(heldout), "--output-dir", str(run),
                     *extra_args])
    if code != 0:
        return code
    return export(run, out, student_out, extra_args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m videoopd.demo.teacher",
        description="Regenerate the demo's tiny teacher: synthetic data + python -m videoopd.sft with the "
                    "shipped recipe; the best held-out checkpoint is copied to --out.",
    )
    parser.add_argument("--work", default="runs/demo-teacher", help="folder for the data and the SFT run")
    parser.add_argument("--out", default=str(TEACHER_DIR), help="where the teacher checkpoint goes")
    parser.add_argument("--student-out", default=str(STUDENT_DIR), help="where the student checkpoint goes")
    parser.add_argument("--train-videos", type=int, default=None,
                        help=f"videos per training part (default {TRAIN_VIDEOS['two_events'][0]})")
    parser.add_argument("--heldout-videos", type=int, default=None, help=f"held-out videos (default {HELDOUT[0]})")
    parser.add_argument("--export-only", metavar="RUN", default=None,
                        help="skip training: export teacher and student from an existing SFT run folder")
    parser.add_argument("--heldout", default=None,
                        help="with --export-only: re-evaluate every step checkpoint on this annotation file")
    args, extra = parser.parse_known_args(argv)
    if args.export_only:
        return export(Path(args.export_only), Path(args.out), Path(args.student_out), extra,
                      Path(args.heldout) if args.heldout else None)
    return regenerate(Path(args.work), Path(args.out), Path(args.student_out), extra, args.train_videos,
                      args.heldout_videos)


if __name__ == "__main__":
    sys.exit(main())
