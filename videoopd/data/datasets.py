"""Datasets of decoded videos (decoding runs in DataLoader workers).

:class:`GroundingVideoDataset` decodes each record's video; :class:`CachedDataset` keeps the
decoded items of a small data set in memory. The collators that turn the items into model
inputs are the model family's: :mod:`videoopd.qwen.collators`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from videoopd.data.annotations import DataIssue, video_duration_issue
from videoopd.data.video import DecodeConfig, VideoDecodeError, decode_video

__all__: list[str] = []  # nothing here is promised: docs/api.md

logger = logging.getLogger(__name__)


class GroundingVideoDataset(torch.utils.data.Dataset):
    """Decodes each record's video. ``on_error="raise"`` propagates VideoDecodeError (naming
    the file); ``"report"`` returns the item with ``video=None``, the error message and the
    exception (``error``, ``exception``), so an evaluation can count the sample as failed
    instead of stopping, or raise it in the main process.

    A decoded video that disagrees with its annotation (span past its end, duration far off:
    :func:`videoopd.data.annotations.video_duration_issue`) is kept, and its
    :class:`~videoopd.data.annotations.DataIssue` (annotation file and line) is logged once,
    counted in :attr:`data_issues` and returned as the item's ``data_issue``. DataLoader
    workers count in their own copies; the items carry the issues to the main process.
    """

    def __init__(self, records: Sequence[Any], config: DecodeConfig | None = None, on_error: str = "raise"):
        if on_error not in ("raise", "report"):
            raise ValueError(f"on_error must be 'raise' or 'report', got {on_error!r}")
        self.records = list(records)
        self.config = config if config is not None else DecodeConfig()
        if not isinstance(self.config, DecodeConfig):
            raise TypeError(f"config must be a DecodeConfig, got {type(self.config).__name__}")
        self.on_error = on_error
        self.data_issues: dict[str, DataIssue] = {}  # by record id, as found in this process

    @property
    def data_issue_counts(self) -> dict[str, int]:
        return dict(Counter(issue.kind for issue in self.data_issues.values()))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        try:
            video = decode_video(record.video, self.config)
        except (VideoDecodeError, FileNotFoundError) as exc:
            if self.on_error == "raise":
                raise
            return {"record": record, "video": None, "error": str(exc), "exception": exc, "data_issue": None}
        issue = video_duration_issue(record, video.source_num_frames / video.source_fps)
        if issue is not None and record.id not in self.data_issues:
            self.data_issues[record.id] = issue
            logger.warning("%s", issue)
        return {"record": record, "video": video, "error": None, "data_issue": issue}


class CachedDataset(torch.utils.data.Dataset):
    """Keeps every decoded item in memory (small datasets: decode once)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.cache: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index not in self.cache:
            self.cache[index] = self.dataset[index]
        return self.cache[index]
