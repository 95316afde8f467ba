"""Video decoding the way Qwen-VL models expect it.

Sampling follows qwen-vl-utils (the code Qwen2.5-VL and Qwen3-VL were trained with):

- frames are sampled at ``fps`` (default 2) over the window [video_start, video_end]
  (default: the whole video): ``n = window_frames / source_fps * fps``, clamped to
  [min_frames, max_frames] (default 4 and 768) and to the frames the window has, rounded
  down to a multiple of the temporal patch size (2), then
  ``indices = round(linspace(first_frame, last_frame, n))``;
- each frame's timestamp is ``index / source_fps`` (absolute time in the file);
- the sampled rate is ``n / window_frames * source_fps``; Qwen2.5-VL's temporal positions
  need ``second_per_grid_ts = temporal_patch_size / sampled_fps``, Qwen3-VL's processor
  writes ``<t seconds>`` stamps from the frame indices and the source fps. Both are in
  :attr:`DecodedVideo.metadata` (a ``transformers.VideoMetadata`` dict);
- frames are resized (bicubic, antialiased) to the ``smart_resize`` size for the pixel
  budget: each side a multiple of ``factor`` (28 for Qwen2.5-VL, 32 for Qwen3-VL), area in
  [min_pixels, max_pixels] where max_pixels is also capped by an even share of
  ``total_pixels`` over the sampled frames. Defaults, in units of factor**2 pixels:
  min 128, max 768, total 128000 * 0.9.

The processor must then be called with ``do_resize=False`` and ``do_sample_frames=False``
(:meth:`DecodedVideo.processor_kwargs`; :func:`videoopd.qwen.processing.processor_inputs`
does it): the frames are final. :mod:`videoopd.data.datasets` runs decoding and the
processor in DataLoader workers.

decord decodes when it is installed; PyAV otherwise (``backend=`` forces either).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DecodeConfig", "DecodedVideo", "VideoDecodeError", "VideoInfo", "decode_video", "probe_video"]

QWEN25_VL_FACTOR = 28  # patch 14 x spatial merge 2
QWEN3_VL_FACTOR = 32  # patch 16 x spatial merge 2
MAX_ASPECT_RATIO = 200
# The video processor attribute (saved with it in processor_config.json) holding the frame
# sampling a checkpoint was trained with, and the DecodeConfig fields it holds.
PREPROCESSING_RECORD = "videoopd_preprocessing"
RECORDED_SETTINGS = ("fps", "max_frames", "min_frames", "min_pixels", "max_pixels", "total_pixels")
_DECODE_CHUNK = 32  # frames decoded at native size at once: bounds peak memory on long videos


class VideoDecodeError(RuntimeError):
    """A video file that cannot be opened or decoded. ``path`` names it."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"cannot decode video {path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        # so that it crosses from a DataLoader worker (pickled) with its own arguments
        return type(self), (self.path, self.reason)


# --------------------------------------------------------------------------------------
# sizes and sampling (pure functions)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) with both sides multiples of ``factor``, area in [min_pixels, max_pixels],
    and the aspect ratio kept as closely as possible (the Qwen-VL rule)."""
    for name, value in (("height", height), ("width", width), ("factor", factor)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio must be at most {MAX_ASPECT_RATIO}, got {height}x{width}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class DecodeConfig:
    """How to sample and size frames. Pixel limits left as None take the Qwen defaults
    for ``factor`` (min 128, max 768 and total 115200 tokens' worth of factor**2 pixels)."""

    fps: float = 2.0
    max_frames: int = 768
    min_frames: int = 4
    factor: int = QWEN25_VL_FACTOR
    temporal_patch_size: int = 2
    min_pixels: int | None = None
    max_pixels: int | None = None
    total_pixels: int | None = None
    backend: str = "auto"

    def __post_init__(self) -> None:
        if not (isinstance(self.fps, (int, float)) and self.fps > 0):
            raise ValueError(f"fps must be a positive number, got {self.fps!r}")
        for name in ("max_frames", "min_frames", "factor", "temporal_patch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.max_frames < self.temporal_patch_size:
            raise ValueError(
                f"max_frames must be at least temporal_patch_size={self.temporal_patch_size}, got {self.max_frames}"
            )
        for name in ("min_pixels", "max_pixels", "total_pixels"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if self.resolved_min_pixels > self.resolved_max_pixels:
            raise ValueError(
                f"min_pixels ({self.resolved_min_pixels}) must not exceed max_pixels ({self.resolved_max_pixels})"
            )
        if self.backend not in ("auto", "decord", "pyav"):
            raise ValueError(f"backend must be 'auto', 'decord' or 'pyav', got {self.backend!r}")

    @property
    def resolved_min_pixels(self) -> int:
        return self.min_pixels if self.min_pixels is not None else 128 * self.factor**2

    @property
    def resolved_max_pixels(self) -> int:
        return self.max_pixels if self.max_pixels is not None else 768 * self.factor**2

    @property
    def resolved_total_pixels(self) -> int:
        return self.total_pixels if self.total_pixels is not None else int(128000 * 0.9 * self.factor**2)

    @classmethod
    def for_run(cls, processor: Any, options: Any) -> DecodeConfig:
        """:meth:`for_processor` with a run's frame options (``options.fps``, ``max_frames``,
        ``min_pixels``, ``max_pixels``, ``total_pixels``; None: what the processor records, else
        the defaults)."""
        return cls.for_processor(
            processor,
            fps=options.fps,
            max_frames=options.max_frames,
            min_pixels=options.min_pixels,
            max_pixels=options.max_pixels,
            total_pixels=options.total_pixels,
        )

    @classmethod
    def for_processor(cls, processor: Any, **overrides: Any) -> DecodeConfig:
        """The config matching ``processor``'s video patching (factor and temporal patch size).

        Settings left out of ``overrides`` or given as None take the values the processor's
        checkpoint was trained with when it records them (:data:`PREPROCESSING_RECORD`,
        written by :func:`videoopd.qwen.processing.record_preprocessing`), else the defaults.
        """
        video_processor = getattr(processor, "video_processor", processor)
        try:
            factor = int(video_processor.patch_size) * int(video_processor.merge_size)
            temporal_patch_size = int(video_processor.temporal_patch_size)
        except AttributeError as exc:
            raise TypeError(
                f"processor must be a Qwen-VL processor or video processor, got {type(processor).__name__}"
            ) from exc
        recorded = getattr(video_processor, PREPROCESSING_RECORD, None)
        settings = {
            name: value
            for name, value in (recorded if isinstance(recorded, dict) else {}).items()
            if name in RECORDED_SETTINGS and value is not None
        }
        settings.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**{"factor": factor, "temporal_patch_size": temporal_patch_size, **settings})

    def recorded_settings(self) -> dict[str, Any]:
        """The settings a checkpoint trained with this config records (:data:`RECORDED_SETTINGS`)."""
        return {name: getattr(self, name) for name in RECORDED_SETTINGS}


def _round_down(value: float, multiple: int) -> int:
    return int(math.floor(value / multiple)) * multiple


def _round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple)) * multiple


def sample_frame_indices(
    num_frames: int,
    source_fps: float,
    config: DecodeConfig,
    video_start: float | None = None,
    video_end: float | None = None,
) -> tuple[list[int], int]:
    """Source-frame indices to decode and the number of source frames in the window."""
    if not isinstance(num_frames, int) or num_frames <= 0:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    if not source_fps > 0:
        raise ValueError(f"source_fps must be positive, got {source_fps!r}")
    first = 0
    last = num_frames - 1
    if video_start is not None:
        if video_start < 0:
            raise ValueError(f"video_start must be >= 0, got {video_start}")
        first = min(math.ceil(video_start * source_fps), last)
    if video_end is not None:
        if video_start is not None and video_end <= video_start:
            raise ValueError(f"video_end ({video_end}) must be greater than video_start ({video_start})")
        last = max(min(math.floor(video_end * source_fps), num_frames - 1), first)
    window_frames = last - first + 1
    factor = config.temporal_patch_size
    min_frames = _round_up(config.min_frames, factor)
    max_frames = _round_down(min(config.max_frames, window_frames), factor)
    wanted = window_frames / source_fps * config.fps
    count = _round_down(min(max(wanted, min_frames), max_frames, window_frames), factor)
    if count < factor:
        raise ValueError(f"the window has {window_frames} frame(s); at least temporal_patch_size={factor} are needed")
    indices = np.linspace(first, last, count).round().astype(int).tolist()
    return indices, window_frames


def frame_size(height: int, width: int, num_frames: int, config: DecodeConfig) -> tuple[int, int]:
    """The (height, width) frames are resized to, for ``num_frames`` sampled frames."""
    min_pixels = config.resolved_min_pixels
    # qwen-vl-utils: each frame gets at most an even share of the total budget (a
    # temporal patch of frames shares one set of tokens), but never less than ~min_pixels.
    share = config.resolved_total_pixels / num_frames * config.temporal_patch_size
    max_pixels = max(min(config.resolved_max_pixels, share), int(min_pixels * 1.05))
    if config.max_pixels is not None:
        max_pixels = min(max_pixels, config.max_pixels)
    max_pixels = max(int(max_pixels), min_pixels)
    return smart_resize(height, width, factor=config.factor, min_pixels=min_pixels, max_pixels=max_pixels)


# --------------------------------------------------------------------------------------
# backends


@dataclass(frozen=True)
class VideoInfo:
    """What a video file says about itself."""

    num_frames: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


def _pick_backend(backend: str) -> str:
    if backend == "auto":
        return "decord" if importlib.util.find_spec("decord") is not None else "pyav"
    if backend == "decord" and importlib.util.find_spec("decord") is None:
        raise ImportError("backend='decord' needs the decord package (pip install decord)")
    return backend


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "the file is empty")


class _DecordReader:
    def __init__(self, path: Path):
        import decord

        self.path = path
        try:
            self.reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
            num_frames = len(self.reader)
            fps = float(self.reader.get_avg_fps())
            height, width = self.reader[0].shape[:2] if num_frames else (0, 0)
        except Exception as exc:  # decord raises its own DECORDError (and RuntimeError)
            raise VideoDecodeError(path, f"decord: {exc}".splitlines()[0]) from exc
        self.info = VideoInfo(num_frames, fps, int(width), int(height))

    def chunks(self, indices: Sequence[int], size: int) -> Iterator[np.ndarray]:
        for begin in range(0, len(indices), size):
            try:
                yield self.reader.get_batch(list(indices[begin : begin + size])).asnumpy()
            except Exception as exc:
                raise VideoDecodeError(self.path, f"decord: {exc}".splitlines()[0]) from exc


class _PyAVReader:
    """Sequential decoding with PyAV: slower than decord for sparse sampling of long videos,
    but exact (frame k is the k-th decoded frame)."""

    def __init__(self, path: Path):
        import av

        self.path = path
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise VideoDecodeError(path, "no video stream")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                if not rate:
                    raise VideoDecodeError(path, "the video stream has no frame rate")
                num_frames = stream.frames
                if not num_frames:  # containers without a frame count: count packets
                    num_frames = sum(1 for packet in container.demux(stream) if packet.size)
                info = VideoInfo(int(num_frames), float(rate), int(stream.width), int(stream.height))
        except VideoDecodeError:
            raise
        except Exception as exc:  # av.error.FFmpegError and friends
            raise VideoDecodeError(path, f"PyAV: {exc}") from exc
        if info.num_frames <= 0:
            raise VideoDecodeError(path, "the video has no frames")
        self.info = info

    def chunks(self, indices: Sequence[int], size: int) -> Iterator[np.ndarray]:
        import av

        if list(indices) != sorted(indices):
            raise ValueError("indices must be sorted for sequential decoding")
        wanted = list(indices)
        position = -1
        pending: list[np.ndarray] = []
        cursor = 0  # next entry of `wanted` to fill
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for position, frame in enumerate(container.decode(stream)):
                    if wanted[cursor] != position:
                        continue
                    array = frame.to_ndarray(format="rgb24")
                    while cursor < len(wanted) and wanted[cursor] == position:  # repeated indices
                        pending.append(array)
                        cursor += 1
                    if len(pending) >= size:
                        yield np.stack(pending)
                        pending = []
                    if cursor == len(wanted):
                        break
        except VideoDecodeError:
            raise
        except Exception as exc:  # av.error.FFmpegError and friends
            raise VideoDecodeError(self.path, f"PyAV: {exc}") from exc
        if cursor < len(wanted):
            raise VideoDecodeError(
                self.path,
                f"the stream ended after {position + 1} frames, before frame {wanted[cursor]} "
                f"(the header says {self.info.num_frames} frames)",
            )
        if pending:
            yield np.stack(pending)


def _open(path: Path, backend: str) -> _DecordReader | _PyAVReader:
    _check_file(path)
    return _DecordReader(path) if _pick_backend(backend) == "decord" else _PyAVReader(path)


def probe_video(path: str | Path, backend: str = "auto") -> VideoInfo:
    """Frame count, fps and size of ``path``. Raises VideoDecodeError if it cannot be read."""
    return _open(Path(path), backend).info


# --------------------------------------------------------------------------------------
# decoding


@dataclass
class DecodedVideo:
    """Frames ready for a Qwen-VL processor, and the timing the model needs."""

    path: str
    frames: torch.Tensor  # uint8 [T, 3, H, W]
    frame_indices: list[int]
    timestamps: list[float]  # seconds, absolute in the file
    source_fps: float
    source_num_frames: int
    window_num_frames: int  # source frames in [video_start, video_end]
    source_size: tuple[int, int]  # (height, width) in the file
    backend: str
    temporal_patch_size: int = 2
    video_start: float | None = None
    video_end: float | None = None

    @property
    def sampled_fps(self) -> float:
        """Frames per second actually sampled (transformers' ``VideoMetadata.sampled_fps``)."""
        return len(self.frame_indices) / self.window_num_frames * self.source_fps

    @property
    def second_per_grid_ts(self) -> float:
        """Seconds per temporal grid step: Qwen2.5-VL's temporal position scale."""
        return self.temporal_patch_size / self.sampled_fps

    @property
    def metadata(self) -> dict[str, Any]:
        """``transformers.VideoMetadata`` fields for the processor.

        ``total_num_frames`` and ``duration`` describe the decoded window, so that
        ``VideoMetadata.sampled_fps`` (which Qwen2.5-VL's processor turns into
        ``second_per_grid_ts``) is the rate actually sampled; ``frames_indices`` are absolute
        source-frame indices and ``fps`` the source rate, so Qwen3-VL's ``<t seconds>``
        stamps are absolute times in the file.
        """
        return {
            "total_num_frames": self.window_num_frames,
            "fps": self.source_fps,
            "width": self.source_size[1],
            "height": self.source_size[0],
            "duration": self.window_num_frames / self.source_fps,
            "video_backend": self.backend,
            "frames_indices": list(self.frame_indices),
        }

    def processor_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the processor call (besides ``videos=[self.frames]``)."""
        return {"video_metadata": [self.metadata], "do_resize": False, "do_sample_frames": False}


def decode_video(
    path: str | Path,
    config: DecodeConfig | None = None,
    video_start: float | None = None,
    video_end: float | None = None,
) -> DecodedVideo:
    """Sample and resize the frames of ``path`` per ``config`` (see the module docstring)."""
    if config is None:
        config = DecodeConfig()
    if not isinstance(config, DecodeConfig):
        raise TypeError(f"config must be a DecodeConfig, got {type(config).__name__}")
    path = Path(path)
    backend = _pick_backend(config.backend)
    reader = _open(path, backend)
    info = reader.info
    if info.num_frames <= 0 or info.fps <= 0 or info.height <= 0 or info.width <= 0:
        raise VideoDecodeError(path, f"unusable stream: {info}")
    try:
        indices, window_frames = sample_frame_indices(info.num_frames, info.fps, config, video_start, video_end)
    except ValueError as exc:
        raise VideoDecodeError(path, str(exc)) from exc
    height, width = frame_size(info.height, info.width, len(indices), config)
    chunks = []
    for array in reader.chunks(indices, _DECODE_CHUNK):
        native = torch.from_numpy(array)  # [t, h, w, 3]
        if native.ndim != 4 or native.shape[-1] != 3:
            raise VideoDecodeError(path, f"unexpected frame array shape {tuple(native.shape)}")
        chunks.append(_resize(native.permute(0, 3, 1, 2), height, width))
    return DecodedVideo(
        path=str(path),
        frames=torch.cat(chunks).contiguous(),
        frame_indices=indices,
        timestamps=[index / info.fps for index in indices],
        source_fps=info.fps,
        source_num_frames=info.num_frames,
        window_num_frames=window_frames,
        source_size=(info.height, info.width),
        backend=backend,
        temporal_patch_size=config.temporal_patch_size,
        video_start=video_start,
        video_end=video_end,
    )


def _resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [T, 3, h, w] -> uint8 [T, 3, height, width], bicubic with antialiasing
    (what torchvision's resize does for qwen-vl-utils)."""
    if frames.shape[-2:] == (height, width):
        return frames.contiguous()
    resized = F.interpolate(frames.float(), size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return resized.round_().clamp_(0, 255).to(torch.uint8)
