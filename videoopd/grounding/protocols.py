"""Evaluation protocols: what each published evaluation does, declared once, so that our
numbers on its benchmark compare with its tables.

A :class:`Protocol` fixes the prompt, the query's normalisation, the frame budget, how an
answer is read, how an IoU is compared with a threshold and what a zero-length ground truth
does. :data:`PROTOCOLS` holds them:

- ``paper``: ours (the Video-OPD paper's prompt, our robust reader :func:`parse_paper`,
  IoU >= threshold, frame budget: what the checkpoint records, else Qwen's defaults;
  zero-length ground truth cannot be scored and is left out of the denominator, counted).
- ``timelens``: TencentARC/TimeLens' ``evaluation/`` (its prompt, no system message, the
  query's surrounding periods stripped, fps 2 with 64 min / 14336 total visual tokens, its
  ``extract_time`` first pair rounded to whole seconds, IoU >= threshold).
- ``time-r1``: xiaomi-research/time-r1's ``evaluate.py`` + ``eval_all.py`` (its r1 prompt
  and system prompt, fps 2 with 16 min / 3584 total visual tokens, the last "a to b" /
  "a and b" of the output, IoU > threshold, zero-length ground truth kept and scoring 0).

The prompt text lives in :mod:`videoopd.grounding.prompts` (a protocol names its style there);
a token budget becomes pixels as tokens x factor^2 (factor 28 for Qwen2.5-VL, 32 for Qwen3-VL).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from videoopd.grounding.parsing import parse_paper, parse_time_r1, parse_timelens

__all__ = ["PROTOCOL_NAMES", "Protocol", "get_protocol"]

# What a zero-length ground truth (start == end) does in the metrics: "exclude" it from the
# denominator (counted as zero_length_excluded), or "score_zero": kept, IoU 0.
ZERO_LENGTH_RULES = ("exclude", "score_zero")


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol (see the module docstring)."""

    name: str
    prompt_style: str  # a style of videoopd.grounding.prompts.PROMPT_STYLES
    strip_query_periods: bool  # "a person opens the door." -> "a person opens the door"
    fps: float | None  # None: the checkpoint's recorded setting, else Qwen's default
    min_tokens: int | None  # per-frame minimum, in visual tokens (None: as fps)
    total_tokens: int | None  # all frames of a video together, in visual tokens (None: as fps)
    parse: Callable[[str], tuple[float, float] | None]
    comparison: Literal[">=", ">"]  # a hit at R1@m: IoU >= m, or IoU > m
    zero_length: Literal["exclude", "score_zero"]

    def normalize_query(self, query: str) -> str:
        """The query as this protocol's prompt shows it."""
        query = re.sub(r"\s+", " ", query).strip()
        return query.strip(".").strip() if self.strip_query_periods else query

    def hit(self, iou: float, threshold: float) -> bool:
        return iou > threshold if self.comparison == ">" else iou >= threshold

    def pixel_budget(self, factor: int) -> dict[str, int | float | None]:
        """``fps``, ``min_pixels`` and ``total_pixels`` for a model of patch ``factor``
        (None where the protocol leaves the setting to the checkpoint)."""
        return {
            "fps": self.fps,
            "min_pixels": None if self.min_tokens is None else self.min_tokens * factor**2,
            "total_pixels": None if self.total_tokens is None else self.total_tokens * factor**2,
        }


PROTOCOLS: dict[str, Protocol] = {
    "paper": Protocol("paper", "paper", False, None, None, None, parse_paper, ">=", "exclude"),
    "timelens": Protocol("timelens", "timelens", True, 2.0, 64, 14336, parse_timelens, ">=", "score_zero"),
    "time-r1": Protocol("time-r1", "time-r1", False, 2.0, 16, 3584, parse_time_r1, ">", "score_zero"),
}
PROTOCOL_NAMES = tuple(PROTOCOLS)


def get_protocol(protocol: str | Protocol) -> Protocol:
    """The :class:`Protocol` named ``protocol`` (a Protocol is returned as it is)."""
    if isinstance(protocol, Protocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOL_NAMES)}, got {protocol!r}")
    return PROTOCOLS[protocol]
