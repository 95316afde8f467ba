"""Answer parsing and temporal-grounding metrics (R1@{0.3,0.5,0.7}, mIoU).

Conventions (DESIGN.md section 6): IoU = max(0, min(e1, e2) - max(s1, s2)) /
(max(e1, e2) - min(s1, s2)); an answer that does not parse scores IoU 0 and is counted,
never dropped; a parsed span with start > end is kept as parsed and scores 0.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

__all__ = ["parse_span", "parse_time", "temporal_iou", "grounding_metrics", "THRESHOLDS"]

THRESHOLDS = (0.3, 0.5, 0.7)

# One time value: hh:mm:ss, mm:ss (both with optional fractional seconds) or plain seconds.
_HMS = r"\d+:[0-5]?\d:[0-5]?\d(?:\.\d+)?"
_MS = r"\d+:[0-5]?\d(?:\.\d+)?"
_NUM = r"\d+(?:\.\d+)?|\.\d+"
_UNIT = r"(?:\s*(?:seconds?|secs?|s)\b)?"
# A time must not continue a word or a number ("Qwen2.5", "v1.2.3") and must not stop in
# the middle of one ("17.83" is not "17.8" followed by "3").
_BEFORE = r"(?<![\w.:])"
_AFTER = r"(?![\w:]|\.\d)"


# Words between "starts"/"ends" and the time: "at", "is", ":", "around", "approximately", ...
_LINK = r"(?:(?:is|:|=|at|around|about|approximately|roughly|from|by|on)\s*){0,3}"


def _time(name: str) -> str:
    return rf"{_BEFORE}(?P<{name}>{_HMS}|{_MS}|{_NUM}){_UNIT}{_AFTER}"


# Alternatives, tried at each position left to right (the first span in the text wins):
#   "12.5 to 17.8", "12.5 - 17.8", "12.5s until 17.8s", "00:12 ~ 00:17"
#   "[00:12, 00:17]" / "(12.5, 17.8)" (a comma only inside brackets: bare "2, 3" is prose)
#   "between 12.5 and 17.8"
#   "start time: 12.5, end time: 17.8", "it starts at 12.5 seconds and ends at 17.8",
#   "begins at 00:12 and finishes at 00:17" (how a policy writes while it learns the format)
_SPAN_RE = re.compile(
    "|".join(
        [
            rf"{_time('s0')}\s*(?:to|until|till|-|–|—|~)\s*{_time('e0')}",
            rf"[\[(]\s*{_time('s1')}\s*,\s*{_time('e1')}\s*[\])]",
            rf"\bbetween\s+{_time('s2')}\s+and\s+{_time('e2')}",
            rf"\b(?:start|begin)(?:s|ning|ing)?(?:\s+time)?\s*{_LINK}{_time('s3')}[^\d]{{0,40}}?"
            rf"\b(?:end|finish|stop|conclude)(?:s|es|ed|ing|ping|ped)?(?:\s+time)?\s*{_LINK}{_time('e3')}",
        ]
    ),
    flags=re.IGNORECASE,
)


def parse_time(token: str) -> float:
    """Seconds in ``token``: "12.5", "12.5s", "00:12", "1:02:03.5"."""
    if not isinstance(token, str):
        raise TypeError(f"token must be a str, got {type(token).__name__}")
    value = re.sub(r"\s*(?:seconds?|secs?|s)$", "", token.strip(), flags=re.IGNORECASE)
    if not re.fullmatch(rf"{_HMS}|{_MS}|{_NUM}", value):
        raise ValueError(f"token is not a time value: {token!r}")
    seconds = 0.0
    for part in value.split(":"):
        seconds = seconds * 60.0 + float(part)
    return seconds


def _answer_region(text: str) -> str | None:
    # Reasoning comes first: the answer is what follows the last closed <think> block.
    # An unclosed <think> means generation stopped mid-reasoning: there is no answer.
    lowered = text.lower()
    if "</think>" in lowered:
        text = text[lowered.rindex("</think>") + len("</think>") :]
    elif "<think>" in lowered:
        return None
    # The last <answer> wins (models sometimes restate); it may be cut off before </answer>.
    lowered = text.lower()
    if "<answer>" not in lowered:
        return text
    answer = text[lowered.rindex("<answer>") + len("<answer>") :]
    close = answer.lower().find("</answer>")
    return answer if close < 0 else answer[:close]


def parse_span(text: str) -> tuple[float, float] | None:
    """The first (start, end) time span a model answer states, in seconds, or None.

    Understands "12.54 to 17.83", "12.5 - 17.8", "from 12.5s to 17.8s", "12.5 seconds to
    17.8 seconds", mm:ss and hh:mm:ss pairs, ``\\boxed{[00:12, 00:17]}``, "between 3 and 5",
    "start time: 3, end time: 5", "it starts at 3 seconds and ends at 5", "begins at 00:03 and
    finishes at 00:05". ``<think>...</think>`` blocks are skipped (an unclosed one
    yields None) and when ``<answer>`` tags are present only the last answer is read.
    A span with start > end is returned as parsed, not swapped: the metric scores it 0.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    region = _answer_region(text)
    if region is None:
        return None
    match = _SPAN_RE.search(region)
    if match is None:
        return None
    groups = match.groupdict()
    for k in range(4):
        if groups[f"s{k}"] is not None:
            return parse_time(groups[f"s{k}"]), parse_time(groups[f"e{k}"])
    raise AssertionError("unreachable: the span regex matched without a start group")  # pragma: no cover


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


def grounding_metrics(
    preds: Sequence[Sequence[float] | None], gts: Sequence[Sequence[float]]
) -> dict[str, float]:
    """R1@0.3/0.5/0.7 and mIoU in percent, plus ``parsed`` and ``total`` counts.

    Every prediction counts in the denominator: None (unparsed) and inverted spans score
    IoU 0. ``parsed`` is the number of predictions that are not None.
    """
    if len(preds) != len(gts):
        raise ValueError(f"preds and gts must have the same length, got {len(preds)} and {len(gts)}")
    if len(gts) == 0:
        raise ValueError("gts must not be empty: metrics over no samples are undefined")
    ious = [temporal_iou(p, g) for p, g in zip(preds, gts)]
    total = len(ious)
    metrics = {f"R1@{t}": 100.0 * sum(iou >= t for iou in ious) / total for t in THRESHOLDS}
    metrics["mIoU"] = 100.0 * sum(ious) / total
    metrics["parsed"] = sum(p is not None for p in preds)
    metrics["total"] = total
    return metrics
