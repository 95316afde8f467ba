"""Synthetic temporal-grounding data: short videos where coloured shapes appear during known spans.

``python -m videoopd.synthetic --out DIR --videos N [--seed S]`` writes ``DIR/videos/*.mp4``
and ``DIR/annotations.jsonl`` (the plain ``jsonl`` format of :mod:`videoopd.data`, video
paths relative to DIR). Each video has ``--events`` events; each event is a shape of a
named colour ("a red circle appears"; colours differ within a video) visible exactly on the frames whose time t
satisfies start <= t < end, with start and end on the source frame grid. Everything
(spans, shapes, colours, positions, background) is drawn from ``random.Random(seed)``,
so a seed reproduces the same annotations and the same frames.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["generate_dataset"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "cyan": (40, 220, 230),
    "magenta": (220, 50, 220),
    "white": (245, 245, 245),
    "orange": (250, 140, 20),
}
SHAPES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class SyntheticEvent:
    colour: str
    shape: str
    start: float
    end: float
    center: tuple[float, float]  # (y, x) as fractions of the frame
    size: float  # half-extent as a fraction of the shorter side

    @property
    def query(self) -> str:
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.colour} {self.shape} appears"


def _shape_mask(shape: str, height: int, width: int, center: tuple[float, float], size: float) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = center[0] * height, center[1] * width
    radius = size * min(height, width)
    if shape == "circle":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    if shape == "square":
        return (np.abs(yy - cy) <= radius) & (np.abs(xx - cx) <= radius)
    if shape == "triangle":  # apex up: inside when below the apex and within the widening sides
        top, bottom = cy - radius, cy + radius
        half_width = (yy - top) / (2 * radius) * radius
        return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half_width)
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def render_frames(
    events: Sequence[SyntheticEvent],
    num_frames: int,
    fps: float,
    height: int,
    width: int,
    background: tuple[int, int, int] = (30, 30, 30),
) -> np.ndarray:
    """uint8 [num_frames, height, width, 3]: ``background`` plus each event's shape on the
    frames whose time ``k / fps`` lies in [start, end)."""
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    frames[:] = np.asarray(background, dtype=np.uint8)
    times = np.arange(num_frames) / fps
    for event in events:
        mask = _shape_mask(event.shape, height, width, event.center, event.size)
        visible = (times >= event.start - 1e-9) & (times < event.end - 1e-9)
        for k in np.flatnonzero(visible):
            frames[k][mask] = COLOURS[event.colour]
    return frames


def _pick_codec(codec: str | None) -> str:
    import av

    if codec is not None:
        check_video_codec(codec)
        return codec
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def check_video_codec(codec: str) -> None:
    """ValueError unless PyAV has a video encoder named ``codec``."""
    import av

    try:
        kind = av.Codec(codec, "w").type
    except ValueError:  # PyAV's UnknownCodecError: no encoder of that name
        kind = None
    if kind != "video":
        found = f"an {kind} encoder" if kind else "no encoder PyAV has"
        raise ValueError(f"codec must be a video encoder PyAV has (e.g. libx264 or mpeg4), got {codec!r} ({found})")


def write_video(path: str | Path, frames: np.ndarray, fps: int, codec: str | None = None) -> Path:
    """Encode uint8 [T, H, W, 3] ``frames`` to an mp4 at integer ``fps`` with PyAV.

    The same frames give the same bytes: single-threaded, and libx264's macroblock-tree rate
    control off (``mbtree=0``). With it on, some clips encoded differently from one encode to
    the next (one of the demo's 16-video split 1 time in 4, ~1 in 8 demo processes), so the
    demo's regenerated videos, and its losses, differed from process to process.
    """
    import av

    if not (isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3):
        raise TypeError("frames must be a uint8 numpy array of shape [T, H, W, 3]")
    if not isinstance(fps, int) or fps <= 0:
        raise ValueError(f"fps must be a positive int, got {fps!r}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"frame height and width must be even for yuv420p, got {height}x{width}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = _pick_codec(codec)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.thread_count = 1
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _draw_events(
    rng: random.Random, num_events: int, duration: float, fps: int, min_event: float, max_event: float
) -> list[SyntheticEvent]:
    total = round(duration * fps)
    min_frames = max(1, round(min_event * fps))
    max_frames = max(min_frames, min(round(max_event * fps), total))
    # Distinct colours within a video, so that a query's colour alone identifies its shape.
    colours = rng.sample(sorted(COLOURS), num_events)
    events = []
    for slot, colour in enumerate(colours):
        shape = rng.choice(SHAPES)
        length = rng.randint(min_frames, max_frames)
        first = rng.randint(0, total - length)
        # Events sit in separate horizontal slots so overlapping ones stay visible.
        center = (rng.uniform(0.3, 0.7), (slot + 0.5) / num_events)
        size = min(0.22, 0.45 / num_events)
        events.append(SyntheticEvent(colour, shape, first / fps, (first + length) / fps, center, size))
    return events


def generate_dataset(
    out: str | Path,
    num_videos: int,
    seed: int = 0,
    duration: float = 8.0,
    fps: int = 4,
    height: int = 64,
    width: int = 96,
    events_per_video: int = 2,
    min_event: float = 1.5,
    max_event: float = 4.0,
    codec: str | None = None,
) -> Path:
    """Write ``num_videos`` videos and their annotations under ``out``; return the annotation path."""
    if not isinstance(num_videos, int) or num_videos <= 0:
        raise ValueError(f"num_videos must be a positive int, got {num_videos!r}")
    if not isinstance(fps, int) or fps <= 0:
        raise ValueError(f"fps must be a positive int, got {fps!r}")
    for name, value in (("duration", duration), ("min_event", min_event), ("max_event", max_event)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    if not duration > 0 or round(duration * fps) < 2:
        raise ValueError(f"duration must give at least 2 frames at fps={fps}, got {duration!r}")
    if not isinstance(events_per_video, int) or not 1 <= events_per_video <= len(COLOURS):
        raise ValueError(f"events_per_video must be an int in [1, {len(COLOURS)}], got {events_per_video!r}")
    if not 0 < min_event <= max_event:
        raise ValueError(f"need 0 < min_event <= max_event, got {min_event} and {max_event}")
    if min_event > duration:
        raise ValueError(f"min_event ({min_event}) must not exceed duration ({duration})")
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value < 16 or value % 2:
            raise ValueError(f"{name} must be an even int >= 16, got {value!r}")
    if codec is not None:
        check_video_codec(codec)
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    num_frames = round(duration * fps)
    rows = []
    for index in range(num_videos):
        events = _draw_events(rng, events_per_video, duration, fps, min_event, max_event)
        shade = rng.randint(15, 60)
        frames = render_frames(events, num_frames, fps, height, width, background=(shade, shade, shade))
        relative = Path("videos") / f"synth_{index:05d}.mp4"
        write_video(out / relative, frames, fps, codec)
        for number, event in enumerate(events):
            rows.append(
                {
                    "id": f"synth_{index:05d}#{number}",
                    "video": relative.as_posix(),
                    "query": event.query,
                    "start": event.start,
                    "end": event.end,
                    "duration": num_frames / fps,
                    "source": "synthetic",
                }
            )
    annotations = out / "annotations.jsonl"
    with annotations.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return annotations
