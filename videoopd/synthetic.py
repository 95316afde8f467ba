"""``python -m videoopd.synthetic``: write synthetic grounding videos with known event spans
(:func:`videoopd.data.synthetic.generate_dataset`).

    python -m videoopd.synthetic --out DIR --videos N [--seed S] [--events 2] [--duration 8] [--swift-annotations]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from videoopd.data.annotations import load_annotations, write_swift_records
from videoopd.data.synthetic import check_video_codec, generate_dataset
from videoopd.training.config import ConfigError, Options, fail, opt, parse_config
from videoopd.training.setup import check_output_dir

__all__ = ["main"]

PROG = "python -m videoopd.synthetic"
DESCRIPTION = (
    "Write short mp4 videos where coloured shapes appear during known spans, with annotations in the "
    "plain JSONL grounding format."
)


@dataclass
class SyntheticConfig(Options):
    """synthetic videos"""

    out: str | None = opt("output folder (videos/ and annotations.jsonl)", required=True)
    videos: int | None = opt("number of videos", gt=0, required=True)
    seed: int = opt("random seed: the same seed writes the same annotations and frames", 0)
    duration: float = opt("seconds per video", 8.0, gt=0)
    fps: int = opt("source frame rate", 4, gt=0)
    height: int = opt("frame height in pixels", 64, gt=0)
    width: int = opt("frame width in pixels", 96, gt=0)
    events: int = opt("events (queries) per video", 2, gt=0)
    min_event: float = opt("shortest event in seconds", 1.5, gt=0)
    max_event: float = opt("longest event in seconds (at most --duration)", 4.0, gt=0)
    codec: str | None = opt("PyAV video encoder (default: libx264, else mpeg4)")
    swift_annotations: bool = opt(
        "also write annotations.swift.jsonl, the same queries in the ms-swift / "
        "LLaMA-Factory video format (the paper's prompt)",
        False,
    )

    def validate(self) -> None:
        super().validate()
        check_output_dir(self.out, "--out")
        if self.max_event > self.duration:
            raise ConfigError(f"--max-event {self.max_event:g} is longer than --duration {self.duration:g}")
        if self.codec is not None:
            try:
                check_video_codec(self.codec)
            except ValueError as exc:
                raise ConfigError(f"--codec: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = parse_config(SyntheticConfig, argv, prog=PROG, description=DESCRIPTION)
        annotations = generate_dataset(
            cfg.out,
            cfg.videos,
            seed=cfg.seed,
            duration=cfg.duration,
            fps=cfg.fps,
            height=cfg.height,
            width=cfg.width,
            events_per_video=cfg.events,
            min_event=cfg.min_event,
            max_event=cfg.max_event,
            codec=cfg.codec,
        )
    except (ConfigError, ValueError) as exc:
        return fail(PROG, exc)
    count = sum(1 for _ in annotations.open())
    print(f"wrote {cfg.videos} videos and {count} queries: {annotations}")
    if cfg.swift_annotations:
        swift = annotations.with_name("annotations.swift.jsonl")
        write_swift_records(load_annotations(annotations).records, swift)
        print(f"and the same queries in the ms-swift format: {swift}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
