"""Prompts for temporal video grounding, rendered as chat messages for Qwen-VL processors.

Three styles:

- ``paper``: the Video-OPD paper's template (its Figure 7) with the system prompt
  "You are a video analysis expert." The model is asked for "start time to end time",
  e.g. "12.54 to 17.83".
- ``timelens``: the TimeLens evaluation prompt, answered as
  "The event happens in <start> - <end> seconds". TimeLens uses no system message, so
  the chat template's default system prompt applies.
- ``time-r1``: Time-R1's evaluation prompt (its ``r1`` prompt: reasoning in ``<think>``,
  the answer "start to end" in ``<answer>`` tags) with its system prompt "You are a helpful
  assistant.", and its answer started with an empty ``<think>\n</think>\n`` (its
  ``scripts/test.sh`` passes ``--use_nothink``): :data:`ANSWER_PREFIXES`.

Each evaluation protocol (:mod:`videoopd.grounding.protocols`) names its style here.

The messages contain one ``{"type": "video"}`` item; the frames themselves are handed to
the processor separately (see :mod:`videoopd.data.video`), so rendering never touches a file.
"""
from __future__ import annotations

from typing import Any

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
    "paper": SYSTEM_PROMPT, "timelens": None, "time-r1": "You are a helpful assistant."}

# Text the assistant turn starts with, after the chat template's generation prompt; the
# model's answer is what it generates after it.
ANSWER_PREFIXES: dict[str, str] = {"time-r1": "<think>\n</think>\n"}


class _StyleDefault:
    def __repr__(self) -> str:
        return "STYLE_DEFAULT"


# Pass as ``system_prompt`` to use the prompt style's own system prompt (None means "none").
STYLE_DEFAULT: Any = _StyleDefault()


def _check_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise ValueError(f"style must be one of {sorted(PROMPT_STYLES)}, got {style!r}")


def render_prompt(query: str, style: str = "paper") -> str:
    """The user instruction for ``query`` in the given prompt ``style``."""
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")
    if not query.strip():
        raise ValueError("query must be a non-empty string")
    _check_style(style)
    return PROMPT_STYLES[style].format(query=query.strip())


def build_messages(
    query: str,
    style: str = "paper",
    system_prompt: Any = STYLE_DEFAULT,
    answer: str | None = None,
) -> list[dict[str, Any]]:
    """Chat messages for one grounding question, ready for ``processor.apply_chat_template``.

    ``system_prompt`` defaults to the style's own (``SYSTEM_PROMPT`` for ``paper``, none for
    ``timelens``); pass ``None`` to omit it or a string to override it. ``answer``, when
    given, is appended as the assistant turn (for teacher scoring or SFT-style inputs).
    """
    _check_style(style)
    if system_prompt is STYLE_DEFAULT:
        system_prompt = DEFAULT_SYSTEM_PROMPTS[style]
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise TypeError(f"system_prompt must be a str or None, got {type(system_prompt).__name__}")
    messages: list[dict[str, Any]] = []
    if system_prompt is not None:
        # A plain string renders the same way in the Qwen2.5-VL and Qwen3-VL templates.
        messages.append({"role": "system", "content": system_prompt})
    messages.append(
        {
            "role": "user",
            "content": [{"type": "video"}, {"type": "text", "text": render_prompt(query, style)}],
        }
    )
    if answer is not None:
        if not isinstance(answer, str):
            raise TypeError(f"answer must be a str or None, got {type(answer).__name__}")
        messages.append({"role": "assistant", "content": answer})
    return messages


def format_answer(span: tuple[float, float], style: str = "paper") -> str:
    """The answer a perfect model would give for ``span`` in the given style."""
    _check_style(style)
    if not (isinstance(span, (tuple, list)) and len(span) == 2):
        raise TypeError(f"span must be a (start, end) pair, got {span!r}")
    start, end = float(span[0]), float(span[1])
    if style == "paper":
        return f"{start:.2f} to {end:.2f}"
    if style == "time-r1":
        return f"<answer>{start:.2f} to {end:.2f}</answer>"
    return f"The event happens in {start:.1f} - {end:.1f} seconds."


def render_chat(processor: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    """The prompt text from ``processor``'s chat template (Qwen2.5-VL or Qwen3-VL)."""
    if not hasattr(processor, "apply_chat_template"):
        raise TypeError(f"processor must have apply_chat_template, got {type(processor).__name__}")
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
