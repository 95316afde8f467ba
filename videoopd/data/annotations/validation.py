"""Validation of what the readers yield: the rules of the package docstring's table, applied
one candidate at a time (:class:`Validator`), and the check of a record against its decoded
video (:func:`video_duration_issue`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from videoopd.data.annotations.records import Candidate, DataIssue, GroundingRecord, Reporter
from videoopd.data.annotations.text import as_float

__all__: list[str] = []  # nothing here is promised: docs/api.md

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")
SPAN_POLICIES = ("clip", "skip")
# "auto": the format's own rule (loader.OWN_MULTI_SPAN: QVHighlights "any", every other format "skip").
MULTI_SPAN_POLICIES = ("auto", "skip", "first", "longest", "any")
ZERO_LENGTH_POLICIES = ("skip", "keep")
# Float noise between a span end and the duration (95.03999999999999 vs 95.04), in seconds.
FLOAT_NOISE_S = 1e-6
SPAN_END_SLACK_S = 1.0
DURATION_TOLERANCE_S = 1.0
DURATION_TOLERANCE_FRACTION = 0.05


def resolve_video(name: str, base: Path, strip_prefix: str | None = None) -> tuple[Path, bool]:
    """The video file for ``name`` under ``base`` and whether it exists."""
    raw = Path(name)
    root = raw if raw.is_absolute() else base / raw
    if raw.suffix.lower() in VIDEO_EXTENSIONS:
        return root, root.is_file()
    stems = [root]
    if strip_prefix and raw.name.startswith(strip_prefix):
        stems.append(root.with_name(raw.name[len(strip_prefix) :]))
    candidates = [stem.with_name(stem.name + ext) for stem in stems for ext in VIDEO_EXTENSIONS]
    for candidate in candidates:
        if candidate.is_file():
            return candidate, True
    return candidates[0], False


def normalize_query(query: Any) -> str:
    if not isinstance(query, str):
        return ""
    return re.sub(r"\s+", " ", query).strip()


def parse_windows(raw: Any) -> list[tuple[float, float]] | None:
    """The (start, end) windows of a query (TimeLens writes single spans as [[start, end]],
    QVHighlights several), or None when they are not pairs of numbers."""
    windows = (
        raw if isinstance(raw, (list, tuple)) and raw and all(isinstance(s, (list, tuple)) for s in raw) else [raw]
    )
    parsed = []
    for window in windows:
        if not isinstance(window, (list, tuple)) or len(window) != 2:
            return None
        try:
            parsed.append((as_float(window[0]), as_float(window[1])))
        except ValueError:
            return None
    return parsed


class Validator:
    def __init__(
        self,
        report: Reporter,
        base: Path,
        durations: dict[str, float],
        check_videos: bool,
        span_policy: str,
        strip_prefix: str | None,
        source: str | None,
        multi_span: str = "skip",
        zero_length: str = "skip",
        durations_name: str = "the durations table",
    ):
        self.report = report
        self.base = base
        self.durations = durations
        self.durations_name = durations_name
        self.check_videos = check_videos
        self.span_policy = span_policy
        self.multi_span = multi_span
        self.zero_length = zero_length
        self.strip_prefix = strip_prefix
        self.source = source  # overrides the file's own source names
        self.seen_ids: set[str] = set()
        self.probed: dict[Path, float | None] = {}

    def _probe(self, video: Path) -> float | None:
        if video not in self.probed:
            from videoopd.data.video import VideoDecodeError, probe_video  # decoding libraries load lazily

            try:
                self.probed[video] = probe_video(video).duration
            except (VideoDecodeError, FileNotFoundError):
                self.probed[video] = None
        return self.probed[video]

    def __call__(self, candidate: Candidate) -> GroundingRecord | None:
        report, location = self.report, candidate.location
        report.summary.read += 1
        query = normalize_query(candidate.query)
        if not query:
            report(location, "empty_query", f"query is {candidate.query!r}", "skipped")
            return None
        windows = parse_windows(candidate.span)
        if windows is None:
            report(location, "malformed", f"span must be two numbers, got {candidate.span!r}", "skipped")
            return None
        if len(windows) > 1:
            report.summary.multi_window += 1
            if self.multi_span == "skip":
                report(location, "multi_span", f"{len(windows)} spans {candidate.span!r} for one query", "skipped")
                return None
            if self.multi_span == "first":
                windows = windows[:1]
            elif self.multi_span == "longest":
                windows = [max(windows, key=lambda w: w[1] - w[0])]  # max keeps the first of equals
        for start, end in windows:
            if start > end:
                report(location, "inverted_span", f"start {start} > end {end}", "skipped")
                return None
            if start == end:
                if self.zero_length == "skip":
                    report(location, "zero_length_span", f"start {start} == end {end}", "skipped")
                    return None
                report(location, "zero_length_span", f"start {start} == end {end}", "kept")
        video, exists = resolve_video(candidate.video, self.base, self.strip_prefix)
        if self.check_videos and not exists:
            report(location, "missing_video", f"video file not found: {video}", "skipped")
            return None
        duration = self._duration(candidate, video, exists)
        if duration is None:
            return None
        kept_windows = []
        for window in windows:
            window = self._within(location, window, duration)
            if window is None:
                return None
            kept_windows.append(window)
        start, end = kept_windows[0]
        record_id = candidate.id or f"{Path(candidate.video).stem}@{location}"
        if record_id in self.seen_ids:
            report(location, "duplicate_id", f"id {record_id!r} was already loaded", "skipped")
            return None
        self.seen_ids.add(record_id)
        source = self.source or candidate.source
        return GroundingRecord(
            record_id,
            str(video),
            query,
            (start, end),
            duration,
            source,
            windows=tuple(kept_windows) if len(kept_windows) > 1 else None,
            prompt=candidate.prompt,
            system=candidate.system,
            teacher=candidate.teacher,
            annotation_file=report.summary.file,
            annotation_location=location,
        )

    def _within(self, location: str, window: tuple[float, float], duration: float) -> tuple[float, float] | None:
        """``window`` inside [0, duration] (float noise absorbed silently, more clipped and
        reported), or None when it is skipped."""
        start, end = window
        if -FLOAT_NOISE_S <= start < 0:
            start = 0.0
        if duration < end <= duration + FLOAT_NOISE_S:
            end = duration
        if not (start < 0 or end > duration):
            return start, end
        clipped = (max(0.0, start), min(duration, end))
        if self.span_policy == "skip" or clipped[0] >= clipped[1]:
            self.report(location, "span_out_of_range", f"span ({start}, {end}) outside [0, {duration}]", "skipped")
            return None
        self.report(
            location,
            "span_out_of_range",
            f"span ({start}, {end}) outside [0, {duration}], clipped to ({clipped[0]}, {clipped[1]})",
            "clipped",
        )
        return clipped

    def _duration(self, candidate: Candidate, video: Path, exists: bool) -> float | None:
        report, location = self.report, candidate.location
        raw = candidate.duration
        if raw is None and candidate.video in self.durations:
            raw = self.durations[candidate.video]
        if raw is not None:
            try:
                duration = as_float(raw)
            except ValueError:
                duration = -1.0
            if duration > 0:
                return duration
        # No usable duration in the file: the video is the authority. A missing duration
        # (Charades without a CSV) is the documented path, not an issue; a bad one is.
        probed = self._probe(video) if exists else None
        if probed is not None and probed > 0:
            if raw is not None:
                report(location, "bad_duration", f"duration {raw!r} replaced by the probed {probed:.3f}", "probed")
            return probed
        if raw is not None:
            reason = f"duration {raw!r} is not a positive number"
        elif self.durations:
            reason = f"video id {candidate.video!r} is not in {self.durations_name}"
        else:
            reason = "no duration given"
        report(location, "bad_duration", f"{reason} and the video {video} cannot be probed", "skipped")
        return None


def video_duration_issue(record: GroundingRecord, video_duration: float) -> DataIssue | None:
    """The problem, if any, between ``record``'s span and duration and the duration of its
    video as decoded (see the module docstring: ``span_beyond_video``, ``duration_mismatch``;
    both are kept)."""
    file = record.annotation_file or "(records built in code)"
    location = record.annotation_location or f"id {record.id!r}"
    end = record.span[1]
    if end > video_duration + SPAN_END_SLACK_S:
        return DataIssue(
            file,
            location,
            "span_beyond_video",
            f"span ends at {end:g} s but the video {record.video} lasts {video_duration:.1f} s "
            f"(annotated duration {record.duration:g} s)",
            "kept",
        )
    tolerance = max(DURATION_TOLERANCE_S, DURATION_TOLERANCE_FRACTION * video_duration)
    if abs(record.duration - video_duration) > tolerance:
        return DataIssue(
            file,
            location,
            "duration_mismatch",
            f"annotated duration {record.duration:g} s but the video {record.video} lasts {video_duration:.1f} s "
            f"(tolerance {tolerance:.1f} s)",
            "kept",
        )
    return None
