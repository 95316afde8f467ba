"""Answer parsing and temporal-grounding metrics (R1@{0.3,0.5,0.7}, mIoU), under a protocol.

Conventions (DESIGN.md section 6): IoU = max(0, min(e1, e2) - max(s1, s2)) /
(max(e1, e2) - min(s1, s2)); an answer that does not parse scores IoU 0 and is counted,
never dropped; a parsed span with start > end is kept as parsed and scores 0.

``protocol=`` (:mod:`videoopd.grounding.protocols`: ``paper``, ``timelens``, ``time-r1``)
chooses how an answer is read, whether a hit is IoU >= m or IoU > m, and what a zero-length
ground truth does; ``paper`` (ours) is the default everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from videoopd.grounding.parsing import parse_time
from videoopd.grounding.protocols import Protocol, get_protocol

__all__ = [
    "THRESHOLDS",
    "grounding_metrics",
    "moment_retrieval_metrics",
    "parse_span",
    "parse_time",
    "sample_iou",
    "temporal_iou",
]

THRESHOLDS = (0.3, 0.5, 0.7)
# moment_detr's standalone_eval: mAP over tIoU 0.5:0.05:0.95, reported at 0.5, 0.75 and on average.
MR_AP_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


def parse_span(text: str, protocol: str | Protocol = "paper") -> tuple[float, float] | None:
    """The (start, end) span ``protocol`` reads in a model answer, in seconds, or None.

    ``paper`` (the default): :func:`videoopd.grounding.parsing.parse_paper`, which reads
    "12.54 to 17.83", "12.5 - 17.8", "from 12.5s to 17.8s", mm:ss and hh:mm:ss pairs,
    ``\\boxed{[00:12, 00:17]}``, "between 3 and 5", "it starts at 3 seconds and ends at 5",
    "happens at 39.2 seconds and ends at 46.9 seconds", "from second 33 to second 40", a bare
    pair when it is the whole answer, ...; ``<think>`` blocks are skipped (an unclosed one
    yields None) and when ``<answer>`` tags are present only the last answer is read.
    ``timelens`` / ``time-r1``: what those evaluations read (see their parsers). A span with
    start > end is returned as parsed, not swapped: the metric scores it 0.
    """
    return get_protocol(protocol).parse(text)


def _as_span(value: object, name: str) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a (start, end) pair, got {value!r}")
    try:
        start, end = float(value[0]), float(value[1])
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must hold two numbers, got {value!r}") from exc
    if math.isnan(start) or math.isnan(end):
        raise ValueError(f"{name} must not contain NaN, got {value!r}")
    return start, end


def temporal_iou(pred: Sequence[float] | None, gt: Sequence[float]) -> float:
    """Temporal IoU of ``pred`` against ``gt`` in [0, 1].

    ``pred`` None (unparsed) or inverted (start > end) scores 0. ``gt`` must satisfy
    start < end.
    """
    gt_start, gt_end = _as_span(gt, "gt")
    if not gt_start < gt_end:
        raise ValueError(f"gt must have start < end, got {gt!r}")
    if pred is None:
        return 0.0
    start, end = _as_span(pred, "pred")
    if start > end:
        return 0.0
    intersection = max(0.0, min(end, gt_end) - max(start, gt_start))
    union = max(end, gt_end) - min(start, gt_start)
    return intersection / union if union > 0 else 0.0


def _windows(gt: Any, name: str) -> list[tuple[float, float]]:
    """``gt`` as its list of windows: one (start, end) pair, or a sequence of them (a query
    with several windows: a prediction scores its best IoU against any of them)."""
    if isinstance(gt, (tuple, list)) and gt and all(isinstance(w, (tuple, list)) for w in gt):
        windows = [_as_span(w, name) for w in gt]
    else:
        windows = [_as_span(gt, name)]
    for start, end in windows:
        if start > end:
            raise ValueError(f"{name} must have start <= end, got {gt!r}")
    return windows


def sample_iou(pred: Sequence[float] | None, gt: Any) -> float:
    """The IoU one prediction scores: its best over ``gt``'s windows (a pair, or a sequence
    of pairs), a zero-length window scoring 0."""
    return max(temporal_iou(pred, w) if w[0] < w[1] else 0.0 for w in _windows(gt, "gt"))


def grounding_metrics(
    preds: Sequence[Sequence[float] | None],
    gts: Sequence[Any],
    protocol: str | Protocol = "paper",
    moment_retrieval: bool = False,
) -> dict[str, Any]:
    """R1@0.3/0.5/0.7 and mIoU in percent, plus ``parsed`` and ``total`` counts, under
    ``protocol``'s rules.

    Every prediction counts in the denominator: None (unparsed) and inverted spans score
    IoU 0. ``parsed`` is the number of scored predictions that are not None. A ground truth
    is a (start, end) pair or a sequence of them (best IoU over the windows). A hit at R1@m
    is IoU >= m (``paper``, ``timelens``) or IoU > m (``time-r1``). A zero-length ground truth
    (start == end) scores 0 and counts (``timelens``, ``time-r1``) or is left out of the
    denominator (``paper``: its IoU is undefined), counted as ``zero_length_excluded``; when
    nothing is left, R1 and mIoU are None. ``moment_retrieval``: also QVHighlights' own
    metrics (:func:`moment_retrieval_metrics`) over the same predictions.
    """
    rules = get_protocol(protocol)
    if len(preds) != len(gts):
        raise ValueError(f"preds and gts must have the same length, got {len(preds)} and {len(gts)}")
    if len(gts) == 0:
        raise ValueError("gts must not be empty: metrics over no samples are undefined")
    ious, parsed, excluded = [], 0, 0
    for index, (pred, gt) in enumerate(zip(preds, gts)):
        windows = [w for w in _windows(gt, f"gts[{index}]") if w[0] < w[1] or rules.zero_length == "score_zero"]
        if not windows:
            excluded += 1
            continue
        parsed += pred is not None
        ious.append(sample_iou(pred, windows))
    total = len(ious)
    metrics: dict[str, Any] = {
        f"R1@{t}": 100.0 * sum(rules.hit(iou, t) for iou in ious) / total if total else None for t in THRESHOLDS
    }
    metrics["mIoU"] = 100.0 * sum(ious) / total if total else None
    metrics["parsed"] = parsed
    metrics["total"] = total
    if excluded:
        metrics["zero_length_excluded"] = excluded
    if moment_retrieval:
        metrics.update(moment_retrieval_metrics(preds, gts))
    return metrics


def moment_retrieval_metrics(preds: Sequence[Sequence[float] | None], gts: Sequence[Any]) -> dict[str, float]:
    """QVHighlights' moment-retrieval metrics as moment_detr's ``standalone_eval`` defines
    them, for one predicted window per query, in percent: ``MR-R1@0.5`` / ``MR-R1@0.7`` (the
    IoU with the window it overlaps most, >= the threshold) and ``MR-mAP@0.5``,
    ``MR-mAP@0.75``, ``MR-mAP`` (the mean over :data:`MR_AP_THRESHOLDS`) of the per-query
    average precision. With one prediction a query's interpolated AP at threshold t is
    1 / (its number of windows) when the best IoU reaches t, else 0. An unparsed answer is a
    query without a prediction (AP 0, no hit); moment_detr asks for one per query. Unrounded
    (moment_detr prints two decimals)."""
    if len(preds) != len(gts):
        raise ValueError(f"preds and gts must have the same length, got {len(preds)} and {len(gts)}")
    if len(gts) == 0:
        raise ValueError("gts must not be empty: metrics over no samples are undefined")
    best, counts = [], []
    for index, (pred, gt) in enumerate(zip(preds, gts)):
        windows = _windows(gt, f"gts[{index}]")
        best.append(sample_iou(pred, windows))
        counts.append(len(windows))
    total = len(best)
    ap = {t: 100.0 * sum(1.0 / n for iou, n in zip(best, counts) if iou >= t) / total for t in MR_AP_THRESHOLDS}
    return {
        "MR-R1@0.5": 100.0 * sum(iou >= 0.5 for iou in best) / total,
        "MR-R1@0.7": 100.0 * sum(iou >= 0.7 for iou in best) / total,
        "MR-mAP@0.5": ap[0.5],
        "MR-mAP@0.75": ap[0.75],
        "MR-mAP": sum(ap.values()) / len(ap),
    }
