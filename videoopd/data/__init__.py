"""Grounding data: annotation loaders, video decoding, datasets of decoded videos, synthetic videos."""

from videoopd.data.annotations import (
    AnnotationError,
    DataIssue,
    GroundingRecord,
    LoadResult,
    LoadSummary,
    detect_format,
    load_annotations,
    read_durations_csv,
    video_duration_issue,
    write_jsonl_records,
    write_swift_records,
)

__all__ = [
    "AnnotationError",
    "DataIssue",
    "GroundingRecord",
    "LoadResult",
    "LoadSummary",
    "detect_format",
    "load_annotations",
    "read_durations_csv",
    "video_duration_issue",
    "write_jsonl_records",
    "write_swift_records",
]
