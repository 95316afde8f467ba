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

Each evaluation protocol (:mod:`videoopd.grounding.protocols`) names its style here. The texts,
:func:`render_prompt` and :func:`format_answer` live in :mod:`videoopd.grounding.prompts` (a data
file's prompts are read back there) and are re-exported here; this module builds the messages.

The messages contain one ``{"type": "video"}`` item; the frames themselves are handed to
the processor separately (see :mod:`videoopd.data.video`), so rendering never touches a file.
"""

from __future__ import annotations

from typing import Any

# the texts live beneath the data package (grounding); re-exported here ("X as X": an explicit re-export)
from videoopd.grounding.prompts import DEFAULT_SYSTEM_PROMPTS as DEFAULT_SYSTEM_PROMPTS
from videoopd.grounding.prompts import PAPER_PROMPT as PAPER_PROMPT
from videoopd.grounding.prompts import PROMPT_STYLES as PROMPT_STYLES
from videoopd.grounding.prompts import SYSTEM_PROMPT as SYSTEM_PROMPT
from videoopd.grounding.prompts import TIME_R1_PROMPT as TIME_R1_PROMPT
from videoopd.grounding.prompts import TIMELENS_PROMPT as TIMELENS_PROMPT
from videoopd.grounding.prompts import check_style, render_prompt
from videoopd.grounding.prompts import format_answer as format_answer

# Text the assistant turn starts with, after the chat template's generation prompt; the
# model's answer is what it generates after it.
ANSWER_PREFIXES: dict[str, str] = {"time-r1": "<think>\n</think>\n"}


class _Sentinel:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


# Pass as ``system_prompt`` to use the prompt style's own system prompt (None means "none").
STYLE_DEFAULT: Any = _Sentinel("STYLE_DEFAULT")
# Pass as ``system_prompt`` (to the collators) to use each record's own system prompt, the one
# its data file gave (GroundingRecord.system: the ms-swift format's), else the style's own.
DATA_SYSTEM: Any = _Sentinel("DATA_SYSTEM")


def record_system_prompt(system_prompt: Any, record: Any) -> Any:
    """The system prompt ``record`` is shown under the run's ``system_prompt`` setting."""
    if system_prompt is not DATA_SYSTEM:
        return system_prompt
    own = getattr(record, "system", None)
    return STYLE_DEFAULT if own is None else own


def build_messages(
    query: str,
    style: str = "paper",
    system_prompt: Any = STYLE_DEFAULT,
    answer: str | None = None,
    prompt: str | None = None,
) -> list[dict[str, Any]]:
    """Chat messages for one grounding question, ready for ``processor.apply_chat_template``.

    ``system_prompt`` defaults to the style's own (``SYSTEM_PROMPT`` for ``paper``, none for
    ``timelens``); pass ``None`` to omit it or a string to override it. ``answer``, when
    given, is appended as the assistant turn (for teacher scoring or SFT-style inputs).
    ``prompt``, when given, is the user text exactly as a data file wrote it
    (:attr:`videoopd.data.annotations.GroundingRecord.prompt`): shown instead of ``query`` in
    the style's template, no template applied again.
    """
    check_style(style)
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
            "content": [{"type": "video"}, {"type": "text", "text": _user_text(query, style, prompt)}],
        }
    )
    if answer is not None:
        if not isinstance(answer, str):
            raise TypeError(f"answer must be a str or None, got {type(answer).__name__}")
        messages.append({"role": "assistant", "content": answer})
    return messages


def _user_text(query: str, style: str, prompt: str | None) -> str:
    if prompt is None:
        return render_prompt(query, style)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be None or a non-empty string, got {prompt!r}")
    return prompt


def render_chat(processor: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    """The prompt text from ``processor``'s chat template (Qwen2.5-VL or Qwen3-VL)."""
    if not hasattr(processor, "apply_chat_template"):
        raise TypeError(f"processor must have apply_chat_template, got {type(processor).__name__}")
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
