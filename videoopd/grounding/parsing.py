"""Reading a (start, end) span out of a model's answer: our robust reader and the readers of
the published evaluations our protocols reproduce (:mod:`videoopd.grounding.protocols`).

- :func:`parse_paper`: ours. Many phrasings, the first span stated after any reasoning; a bare
  pair ("33.54 and 37.89", "Timestamps: 61.4, 94.7") only when it is the whole answer.
- :func:`parse_timelens`: TimeLens' ``extract_time`` as its evaluation applies it: the first
  pair of clock times, else the first "a - b", else the first "a to b", else the first two
  numbers; rounded to whole seconds (its inference script's ``round(x / UNIT) * UNIT``, UNIT 1:
  ``evaluation/eval_dataloader.py`` lines 137-145, whose rounded "timestamps"
  ``evaluation/compute_metrics.py`` line 53 scores).
- :func:`parse_time_r1`: Time-R1's ``extract_answer``: the last "a to b" / "a and b" (one
  literal space each side) anywhere in the output, thinking included.

Each returns None where nothing is read. The reference readers are reproduced rule for rule,
quirks included (docs/data-and-evaluation.md names them); none of their code is used.
"""

from __future__ import annotations

import re

__all__: list[str] = []  # nothing here is promised: docs/api.md

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
_START_WORD = r"(?:start(?:s|ed|ing)?|begin(?:s|ning)?|happen(?:s|ed|ing)?|occur(?:s|red|ring)?)"
_END_WORD = (
    r"(?:(?:end|finish|stop|conclude)(?:s|es|ed|ing|ping|ped)?"
    r"|last(?:s|ed|ing)?\s+(?:until|till|to))"
)
# "from the 63.2 second mark", "from second 33"
_MARK_BEFORE = r"(?:the\s+)?(?:second\s+)?"
_MARK_AFTER = r"(?:\s+mark)?"


def _time(name: str) -> str:
    return rf"{_BEFORE}(?P<{name}>{_HMS}|{_MS}|{_NUM}){_UNIT}{_AFTER}"


# Alternatives, tried at each position left to right (the first span in the text wins):
#   "12.5 to 17.8", "12.5 - 17.8", "12.5s until 17.8s", "00:12 ~ 00:17"
#   "[00:12, 00:17]" / "(12.5, 17.8)" (a comma only inside brackets: bare "2, 3" is prose)
#   "between 12.5 and 17.8"
#   "start time: 12.5, end time: 17.8", "it starts at 12.5 seconds and ends at 17.8",
#   "begins at 00:12 and finishes at 00:17", "happens at 39.2 seconds and ends at 46.9",
#   "begins at 1.7s and lasts until 16.5s" (how a policy writes while it learns the format)
#   "from the 63.2 second mark to the 84.7 second mark", "from second 33 to second 40"
_SPAN_RE = re.compile(
    "|".join(
        [
            rf"{_time('s0')}\s*(?:to|until|till|-|–|—|~)\s*{_time('e0')}",
            rf"[\[(]\s*{_time('s1')}\s*,\s*{_time('e1')}\s*[\])]",
            rf"\bbetween\s+{_time('s2')}\s+and\s+{_time('e2')}",
            rf"\b{_START_WORD}(?:\s+time)?\s*{_LINK}{_time('s3')}[^\d]{{0,40}}?"
            rf"\b{_END_WORD}(?:\s+time)?\s*{_LINK}{_time('e3')}",
            rf"\bfrom\s+{_MARK_BEFORE}{_time('s4')}{_MARK_AFTER}\s*(?:to|until|till|-|–|—|~)\s*"
            rf"{_MARK_BEFORE}{_time('e4')}",
        ]
    ),
    flags=re.IGNORECASE,
)
_GROUPS = 5

# A bare pair counts only as the whole answer, optionally labelled ("Timestamps: 61.4, 94.7"):
# inside prose "I count 2, 3 people" is no span.
_BARE_PAIR_RE = re.compile(
    rf"(?:[a-z][a-z ]{{0,30}}:\s*)?{_time('s')}\s*(?:,|and|&)\s*{_time('e')}\s*\.?",
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


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return text


def parse_paper(text: str) -> tuple[float, float] | None:
    """The first (start, end) time span a model answer states, in seconds, or None.

    Understands "12.54 to 17.83", "12.5 - 17.8", "from 12.5s to 17.8s", "12.5 seconds to
    17.8 seconds", mm:ss and hh:mm:ss pairs, ``\\boxed{[00:12, 00:17]}``, "between 3 and 5",
    "start time: 3, end time: 5", "it starts at 3 seconds and ends at 5", "begins at 00:03 and
    finishes at 00:05", "happens at 39.2 seconds and ends at 46.9 seconds", "begins at 1.7s
    and lasts until 16.5s", "from the 63.2 second mark to the 84.7 second mark", "from second
    33 to second 40"; and a bare pair ("33.54 and 37.89", "50.87, 79.83", "Timestamps: 61.4,
    94.7") when it is the whole answer. ``<think>...</think>`` blocks are skipped (an unclosed
    one yields None) and when ``<answer>`` tags are present only the last answer is read.
    A span with start > end is returned as parsed, not swapped: the metric scores it 0.
    """
    region = _answer_region(_check_text(text))
    if region is None:
        return None
    match = _SPAN_RE.search(region)
    if match is not None:
        groups = match.groupdict()
        k = next(k for k in range(_GROUPS) if groups[f"s{k}"] is not None)
        return parse_time(groups[f"s{k}"]), parse_time(groups[f"e{k}"])
    bare = _BARE_PAIR_RE.fullmatch(region.strip())
    if bare is not None:
        return parse_time(bare["s"]), parse_time(bare["e"])
    return None


# TimeLens' rules, in the order it tries them. \b and the greedy "\d+\.?\d*" are the rules'
# own: "12.5s" reads as 12 where a lone number is taken (no word boundary between "5" and "s").
_TL_CLOCK = re.compile(r"\b(\d{1,2}:\d{2}:\d{2}(?:\.\d+)?|\d{1,2}:\d{2}(?:\.\d+)?)\b")
_TL_PAIRS = (re.compile(r"(\d+\.?\d*)\s*-\s*(\d+\.?\d*)"), re.compile(r"(\d+\.?\d*)\s+to\s+(\d+\.?\d*)"))
_TL_NUMBER = re.compile(r"\b(\d+\.\d+|\d+)\b")


def _clock_seconds(token: str) -> float:
    *whole, seconds = token.split(":")
    value = 0.0
    for part in whole:
        value = value * 60 + int(part)
    return value * 60 + float(seconds)


def parse_timelens(text: str) -> tuple[float, float] | None:
    """The span TimeLens' evaluation scores for ``text``: its ``extract_time``'s first pair,
    rounded to whole seconds (Python's round, halves to even), or None."""
    lowered = _check_text(text).lower()
    clocks = _TL_CLOCK.findall(lowered)
    if len(clocks) >= 2:
        pair = (_clock_seconds(clocks[0]), _clock_seconds(clocks[1]))
    else:
        pair = None
        for pattern in _TL_PAIRS:
            found = pattern.search(lowered)
            if found is not None:
                pair = (float(found[1]), float(found[2]))
                break
        if pair is None:
            numbers = _TL_NUMBER.findall(lowered)
            if len(numbers) < 2:
                return None
            pair = (float(numbers[0]), float(numbers[1]))
    return float(round(pair[0])), float(round(pair[1]))


_R1_PAIR = re.compile(r"(\d+\.?\d*) (?:to|and) (\d+\.?\d*)")


def parse_time_r1(text: str) -> tuple[float, float] | None:
    """The span Time-R1's evaluation scores for ``text``: the last "a to b" / "a and b" in the
    whole output (case-sensitive, exactly one space each side), or None. Its fallback to the
    ``<answer>`` block can never find what the whole output lacks, so it adds nothing."""
    found = _R1_PAIR.findall(_check_text(text))
    if not found:
        return None
    start, end = found[-1]
    return float(start), float(end)
