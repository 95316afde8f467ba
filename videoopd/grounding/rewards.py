"""Rewards of a grounding answer (GRPO): the temporal IoU of the parsed span with the ground
truth, and the exact-format test behind GRPO's optional format bonus."""

from __future__ import annotations

import re
from collections.abc import Sequence

from videoopd.grounding.metrics import parse_span, temporal_iou

__all__ = ["iou_reward", "is_exact_format"]

# The paper's answer format: "12.54 to 17.83" and nothing else.
_EXACT = re.compile(r"^\s*\d+(?:\.\d+)?\s+to\s+\d+(?:\.\d+)?\s*\.?\s*$")


def is_exact_format(answer: str) -> bool:
    """True for an answer that is exactly "start to end" (the format the prompt asks for)."""
    return bool(_EXACT.match(answer))


def iou_reward(answer: str, span: Sequence[float]) -> tuple[float, bool]:
    """(reward, parsed) of ``answer`` against the ground-truth ``span``: the temporal IoU of
    the first span the answer states, 0 when none parses or its start >= end."""
    pred = parse_span(answer)
    return (temporal_iou(pred, span) if pred is not None and pred[0] < pred[1] else 0.0), pred is not None
