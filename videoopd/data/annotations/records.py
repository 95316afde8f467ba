"""The record types of the annotation loaders: a grounding query, a reported problem, a load's
summary, and what a reader yields before validation (:class:`Candidate`) with the
:class:`Reporter` that counts and logs problems."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

__all__: list[str] = []  # nothing here is promised: docs/api.md

logger = logging.getLogger("videoopd.data.annotations")

MAX_LOGGED_ISSUES = 20


@dataclass(frozen=True)
class GroundingRecord:
    """One grounding query: ``query`` happens during ``span`` (seconds) of ``video``."""

    id: str
    video: str
    query: str
    span: tuple[float, float]
    duration: float
    source: str
    # All windows of a query with several (multi_span="any"; span is the first), else None.
    windows: tuple[tuple[float, float], ...] | None = None
    # The user turn exactly as a data file wrote it (the ms-swift format, when it is no known
    # template): shown instead of a prompt style's template; None renders ``query`` in the style.
    prompt: str | None = None
    # The system prompt a data file gave the query (None: none given), kept and written back.
    system: str | None = None
    # The teacher that scores the query (its --teacher name; None: by source, else the first).
    teacher: str | None = None
    # Where the record was read (for reports); not part of its identity.
    annotation_file: str | None = field(default=None, compare=False, repr=False)
    annotation_location: str | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["span"] = list(self.span)
        data["windows"] = None if self.windows is None else [list(w) for w in self.windows]
        return data

    @property
    def gt(self) -> list[float] | list[list[float]]:
        """The ground truth as the metrics take it: the span, or every window."""
        return list(self.span) if self.windows is None else [list(w) for w in self.windows]


@dataclass(frozen=True)
class DataIssue:
    """A problem found in an annotation file, where it is, and what was done about it."""

    file: str
    location: str
    kind: str
    message: str
    action: str

    def __str__(self) -> str:
        return f"{self.file}: {self.location}: {self.kind} ({self.action}): {self.message}"


class AnnotationError(ValueError):
    """Raised in strict mode for the first problem in an annotation file, and for a file
    with no valid records that is not (all) UTF-8 text; ``issue`` is the (first) problem."""

    def __init__(self, issue: DataIssue, message: str | None = None):
        super().__init__(message or str(issue))
        self.issue = issue


@dataclass
class LoadSummary:
    """What a loader read, kept and reported."""

    file: str
    format: str
    # Queries found in the file, kept or skipped; an entry that cannot be split into queries
    # (unparsable line, unpairable lists) counts once. kept + skipped == read.
    read: int = 0
    kept: int = 0
    issues: list[DataIssue] = field(default_factory=list)
    # Queries with several windows (whatever the multi_span policy did with them).
    multi_window: int = 0
    multi_span: str = "skip"

    @property
    def counts(self) -> dict[str, int]:
        """Issues per kind."""
        return dict(Counter(issue.kind for issue in self.issues))

    @property
    def skipped(self) -> int:
        return sum(issue.action == "skipped" for issue in self.issues)

    @property
    def clipped(self) -> int:
        return sum(issue.action == "clipped" for issue in self.issues)

    def report(self, max_issues: int | None = None) -> str:
        """A human-readable summary, listing up to ``max_issues`` issues (all by default)."""
        lines = [
            f"{self.file} ({self.format}): read {self.read}, kept {self.kept}, "
            f"skipped {self.skipped}, clipped {self.clipped}"
            + (f", multi-window {self.multi_window} (multi_span={self.multi_span})" if self.multi_window else "")
        ]
        if self.issues:
            lines.append("  issues: " + ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())))
        shown = self.issues if max_issues is None else self.issues[:max_issues]
        lines.extend(f"  {issue}" for issue in shown)
        if len(shown) < len(self.issues):
            lines.append(f"  ... and {len(self.issues) - len(shown)} more (counted in the issues line above)")
        return "\n".join(lines)


class LoadResult(NamedTuple):
    records: list[GroundingRecord]
    summary: LoadSummary


@dataclass
class Candidate:
    """A query as read from the file, before validation."""

    location: str
    video: str
    query: Any
    span: Any
    duration: Any
    source: str
    id: str | None = None
    prompt: str | None = None
    system: str | None = None
    teacher: str | None = None


class Reporter:
    def __init__(self, summary: LoadSummary, strict: bool):
        self.summary = summary
        self.strict = strict

    def __call__(self, location: str, kind: str, message: str, action: str) -> None:
        issue = DataIssue(self.summary.file, location, kind, message, action)
        if self.strict:
            raise AnnotationError(issue)
        self.summary.issues.append(issue)
        if len(self.summary.issues) <= MAX_LOGGED_ISSUES:
            logger.warning("%s", issue)

    def malformed(self, location: str, message: str) -> None:
        """An entry that cannot be read as a query: counted as read once, reported, skipped."""
        self.summary.read += 1
        self(location, "malformed", message, "skipped")
