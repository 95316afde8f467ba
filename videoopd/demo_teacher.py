"""``python -m videoopd.demo_teacher``: regenerate the CPU demo's tiny teacher and student
(synthetic data, then ``python -m videoopd.sft`` in the two stages of
:mod:`videoopd.demo.teacher`, then its export rule).

    python -m videoopd.demo_teacher --work runs/demo-teacher          # hours on a 2-core CPU
    python -m videoopd.demo_teacher --work runs/demo-teacher --first-stage-model CKPT   # stage 2 only
    python -m videoopd.demo_teacher --export-only RUN [--heldout FILE] [--first-stage RUN1]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from videoopd import sft
from videoopd.demo.teacher import (
    EVENTS,
    HELDOUT,
    QUERY_HELDOUT,
    QUERY_RECIPE,
    QUERY_VIDEOS,
    SFT_RECIPE,
    STUDENT_DIR,
    TEACHER_DIR,
    TRAIN_VIDEOS,
    export,
    generate_split,
    mixed_pool,
)

__all__ = ["main"]


def regenerate(
    work: Path,
    out: Path = TEACHER_DIR,
    student_out: Path = STUDENT_DIR,
    extra_args: Sequence[str] = (),
    train_videos: int | None = None,
    heldout_videos: int | None = None,
    first_stage_model: Path | None = None,
) -> int:
    """Generate the data, run both SFT stages (``extra_args`` override both recipes), and copy
    stage 2's best held-out checkpoint to ``out`` and its student checkpoint to ``student_out``.
    With ``first_stage_model``, stage 1 is skipped and stage 2 starts from that checkpoint.

    The student is stage 2's own checkpoint from the last evaluation (step > 0) whose
    held-out mIoU is at least ``STUDENT_GAP`` points below the teacher's: the same model, less trained.
    """
    work.mkdir(parents=True, exist_ok=True)
    parts = {
        name: generate_split(work / name, train_videos or videos, seed, events=EVENTS[name])
        for name, (videos, seed) in TRAIN_VIDEOS.items()
    }
    first_run = None
    if first_stage_model is None:
        heldout = generate_split(work / "heldout", heldout_videos or HELDOUT[0], HELDOUT[1], events=1)
        first_run = work / "sft"
        code = sft.main(
            [
                *SFT_RECIPE,
                "--train-data",
                str(mixed_pool(list(parts.values()), work / "train.jsonl")),
                "--eval-data",
                str(heldout),
                "--output-dir",
                str(first_run),
                *extra_args,
            ]
        )
        if code != 0:
            return code
        first_stage_model = first_run / "best"
    # Stage 2 draws from stage 1's videos: a seed's first N videos are the same for any count.
    scale = (train_videos / TRAIN_VIDEOS["two_events"][0]) if train_videos else 1.0
    limits = [max(1, round(QUERY_VIDEOS[name][0] * scale)) for name in parts]
    pool = mixed_pool(list(parts.values()), work / "train_query.jsonl", videos=limits)
    heldout = generate_split(
        work / "heldout_two_events", heldout_videos or QUERY_HELDOUT[0], QUERY_HELDOUT[1], events=2
    )
    run = work / "sft_query"
    code = sft.main(
        [
            *QUERY_RECIPE,
            "--model",
            str(first_stage_model),
            "--train-data",
            str(pool),
            "--eval-data",
            str(heldout),
            "--output-dir",
            str(run),
            *extra_args,
        ]
    )
    if code != 0:
        return code
    return export(run, out, student_out, extra_args, first_stage=first_run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m videoopd.demo_teacher",
        description="Regenerate the demo's tiny teacher: synthetic data + python -m videoopd.sft in two stages "
        "(from scratch on one- and two-event videos, then on two-event videos from stage 1's best); "
        "stage 2's best held-out checkpoint is copied to --out, an earlier one to --student-out.",
    )
    parser.add_argument("--work", default="runs/demo-teacher", help="folder for the data and the two SFT runs")
    parser.add_argument("--out", default=str(TEACHER_DIR), help="where the teacher checkpoint goes")
    parser.add_argument("--student-out", default=str(STUDENT_DIR), help="where the student checkpoint goes")
    parser.add_argument(
        "--train-videos",
        type=int,
        default=None,
        help=f"videos per training part (default {TRAIN_VIDEOS['two_events'][0]})",
    )
    parser.add_argument(
        "--heldout-videos",
        type=int,
        default=None,
        help=f"held-out videos of each stage (default {HELDOUT[0]} and {QUERY_HELDOUT[0]})",
    )
    parser.add_argument(
        "--first-stage-model",
        default=None,
        help="skip stage 1: start stage 2 from this checkpoint (e.g. an earlier run's sft/best)",
    )
    parser.add_argument(
        "--export-only",
        metavar="RUN",
        default=None,
        help="skip training: export teacher and student from an existing stage-2 SFT run folder",
    )
    parser.add_argument(
        "--first-stage",
        default=None,
        help="with --export-only: the stage-1 run folder (or a training.json describing it), recorded in training.json",
    )
    parser.add_argument(
        "--heldout", default=None, help="with --export-only: re-evaluate every step checkpoint on this annotation file"
    )
    args, extra = parser.parse_known_args(argv)
    if args.export_only:
        return export(
            Path(args.export_only),
            Path(args.out),
            Path(args.student_out),
            extra,
            Path(args.heldout) if args.heldout else None,
            Path(args.first_stage) if args.first_stage else None,
        )
    return regenerate(
        Path(args.work),
        Path(args.out),
        Path(args.student_out),
        extra,
        args.train_videos,
        args.heldout_videos,
        Path(args.first_stage_model) if args.first_stage_model else None,
    )


if __name__ == "__main__":
    sys.exit(main())
