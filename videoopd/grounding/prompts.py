"""The prompt texts of temporal video grounding, one per style, with the system prompt each
style was trained / evaluated with and the answer a perfect model gives in it: the Video-OPD
paper's (``paper``), TimeLens' evaluation prompt (``timelens``) and Time-R1's ``r1`` prompt
(``time-r1``); :mod:`videoopd.qwen.prompts` renders them as chat messages.

They live here, beneath the data package, so that a data file written with one of them (the
ms-swift / LLaMA-Factory format) can be read back to its query, and written, without a model.
"""

from __future__ import annotations

import re

__all__: list[str] = []  # nothing here is promised: docs/api.md

SYSTEM_PROMPT = "You are a video analysis expert."

PAPER_PROMPT = (
    'To accurately pinpoint the event "{query}" in the video, determine the precise time period of the event. '
    "Provide the start and end times (in seconds, precise to two decimal places) in the format "
    '"start time to end time", For example: "12.54 to 17.83".'
)

TIMELENS_PROMPT = (
    "Please find the visual event described by the sentence '{query}', determining its starting and ending times. "
    "The format should be: 'The event happens in <start time> - <end time> seconds'."
)

TIME_R1_PROMPT = (
    'To accurately pinpoint the event "{query}" in the video, determine the precise time period of the event.\n\n'
    "Output your thought process within the <think> </think> tags, including analysis with either specific time "
    "ranges (xx.xx to xx.xx) in <timestep> </timestep> tags.\n\n"
    "Then, provide the start and end times (in seconds, precise to two decimal places) in the format "
    '"start time to end time" within the <answer> </answer> tags. For example: "12.54 to 17.83".'
)

PROMPT_STYLES: dict[str, str] = {"paper": PAPER_PROMPT, "timelens": TIMELENS_PROMPT, "time-r1": TIME_R1_PROMPT}

# The system prompt each style was trained/evaluated with; None means "no system message".
DEFAULT_SYSTEM_PROMPTS: dict[str, str | None] = {
    "paper": SYSTEM_PROMPT,
    "timelens": None,
    "time-r1": "You are a helpful assistant.",
}


def check_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise ValueError(f"style must be one of {sorted(PROMPT_STYLES)}, got {style!r}")


def render_prompt(query: str, style: str = "paper") -> str:
    """The user instruction for ``query`` in the given prompt ``style``."""
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")
    if not query.strip():
        raise ValueError("query must be a non-empty string")
    check_style(style)
    return PROMPT_STYLES[style].format(query=query.strip())


def format_answer(span: tuple[float, float], style: str = "paper") -> str:
    """The answer a perfect model would give for ``span`` in the given style."""
    check_style(style)
    if not (isinstance(span, (tuple, list)) and len(span) == 2):
        raise TypeError(f"span must be a (start, end) pair, got {span!r}")
    start, end = float(span[0]), float(span[1])
    if style == "paper":
        return f"{start:.2f} to {end:.2f}"
    if style == "time-r1":
        return f"<answer>{start:.2f} to {end:.2f}</answer>"
    return f"The event happens in {start:.1f} - {end:.1f} seconds."


def match_prompt(text: str) -> tuple[str, str] | None:
    """``(style, query)`` when ``text`` is one of :data:`PROMPT_STYLES` rendered for a query
    (surrounding whitespace ignored), else None: the inverse of :func:`render_prompt`."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    for style, template in PROMPT_STYLES.items():
        before, after = template.split("{query}")
        found = re.fullmatch(re.escape(before) + "(.+?)" + re.escape(after), text.strip(), flags=re.DOTALL)
        if found is not None and found[1].strip():
            return style, found[1]
    return None
