"""The ms-swift / LLaMA-Factory video format: a line per query, the conversation in
``messages`` (``{"role", "content"}``) or ``conversations`` (ShareGPT's ``{"from", "value"}``,
``human`` / ``gpt`` / ``system``, and an optional top-level ``system``), the video in ``videos``
(a list of one path) and the ``<video>`` tag in the user turn, as ms-swift's custom-dataset
docs show it::

    {"messages": [{"role": "system", "content": "You are a video analysis expert."},
                  {"role": "user", "content": "<video>To accurately pinpoint the event ..."},
                  {"role": "assistant", "content": "12.54 to 17.83"}],
     "videos": ["/data/videos/AO8RW.mp4"]}

How a line becomes a query:

- the query: where the user turn (the ``<video>`` tag taken out) is a known prompt
  (:data:`videoopd.grounding.prompts.PROMPT_STYLES`: the paper's, TimeLens', Time-R1's), the
  query inside it; otherwise the user turn is kept as written in
  :attr:`GroundingRecord.prompt` (shown instead of a template: none is applied again) and the
  query is the line's ``query`` field, else that text;
- the span: the explicit ``start`` / ``end`` (and ``windows``) fields when the line has them
  (this module's writer adds them: an answer in a style rounds), else the assistant turn (or
  ms-swift's GRPO ``solution`` field) read by our robust reader
  (:func:`videoopd.grounding.parsing.parse_paper`; the references' own readers are for
  predictions: TimeLens' rounds to whole seconds, which would move the ground truth);
- the system prompt, when given, is kept (:attr:`GroundingRecord.system`), unless it is the
  known prompt's own (the paper's "You are a video analysis expert."), which the style brings;
- ``duration``, ``id``, ``source`` when present; without a duration the video is probed.

A line without a query, a single video and a span is reported (``malformed``, with its line).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from videoopd.data.annotations.jsonl import not_text, video_path_for
from videoopd.data.annotations.records import Candidate, GroundingRecord, Reporter
from videoopd.data.annotations.text import iter_jsonl
from videoopd.grounding.parsing import parse_paper
from videoopd.grounding.prompts import DEFAULT_SYSTEM_PROMPTS, check_style, format_answer, match_prompt, render_prompt

__all__: list[str] = []  # nothing here is promised: docs/api.md

VIDEO_TAG = "<video>"
# ShareGPT speaker names (LLaMA-Factory's defaults) as roles.
_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


def is_swift_object(obj: Any) -> bool:
    """Whether a JSON line has this format's shape (for format detection)."""
    return isinstance(obj, dict) and "videos" in obj and ("messages" in obj or "conversations" in obj)


def _turns(obj: dict) -> list[tuple[str, str]] | str:
    """The conversation as (role, text) pairs, or why it cannot be read."""
    key, role_key, text_key = (
        ("messages", "role", "content") if "messages" in obj else ("conversations", "from", "value")
    )
    turns = obj[key]
    if not isinstance(turns, list):
        return f"'{key}' must be a list of turns, got {type(turns).__name__}"
    pairs = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get(role_key) not in _ROLES or not isinstance(turn.get(text_key), str):
            return (
                f"{key}[{index}] must be an object with '{role_key}' one of {sorted(_ROLES)} and a string "
                f"'{text_key}', got {turn!r}"
            )
        pairs.append((_ROLES[turn[role_key]], turn[text_key]))
    return pairs


def _video(obj: dict) -> str:
    """The line's one video path; ValueError saying what is wrong."""
    videos = obj["videos"]
    if not (isinstance(videos, list) and len(videos) == 1 and isinstance(videos[0], str) and videos[0]):
        raise ValueError(f"'videos' must be a list of one video path (a grounding query has one video), got {videos!r}")
    return videos[0]


def _span(obj: dict, answer: str | None) -> Any:
    """The ground truth: explicit fields, else the answer read; ValueError when neither gives one."""
    if obj.get("windows") is not None:
        return obj["windows"]
    if "start" in obj or "end" in obj:
        return [obj.get("start"), obj.get("end")]
    text = answer if answer is not None else obj.get("solution")
    if not isinstance(text, str):
        raise ValueError("no span: no assistant turn, 'solution' or 'start'/'end' fields")
    span = parse_paper(text)
    if span is None:
        raise ValueError(f"no span in the answer {text!r}")
    return list(span)


def read_swift(path: Path, report: Reporter) -> Iterator[Candidate]:
    per_video: Counter[str] = Counter()
    for line_number, obj in iter_jsonl(path, report):
        location = f"line {line_number}"
        if not is_swift_object(obj):
            report.malformed(location, "expected an object with 'messages' (or 'conversations') and 'videos'")
            continue
        turns = _turns(obj)
        problem = turns if isinstance(turns, str) else not_text(obj, "system", "query")
        if problem is not None:
            report.malformed(location, problem)
            continue
        try:
            video = _video(obj)
            users = [index for index, (role, _) in enumerate(turns) if role == "user"]
            if len(users) != 1:
                raise ValueError(f"{len(users)} user turns: a grounding query has one")
            user = turns[users[0]][1]
            if user.count(VIDEO_TAG) != 1:
                raise ValueError(f"the user turn must hold one {VIDEO_TAG} tag, holds {user.count(VIDEO_TAG)}")
            answer = next((text for role, text in turns[users[0] + 1 :] if role == "assistant"), None)
            span = _span(obj, answer)
        except ValueError as exc:
            report.malformed(location, str(exc))
            continue
        text = user.replace(VIDEO_TAG, "", 1).strip()
        known = match_prompt(text)
        query, prompt = (known[1], None) if known is not None else (obj.get("query") or text, text)
        system = next((text for role, text in turns if role == "system"), obj.get("system"))
        if known is not None and system == DEFAULT_SYSTEM_PROMPTS[known[0]]:
            system = None  # the style's own: it comes with the style, as the writer puts it there
        key = Path(video).stem
        generated_id = f"{key}#{per_video[key]}"
        per_video[key] += 1
        record_id = obj.get("id")
        yield Candidate(
            location,
            video,
            query,
            span,
            obj.get("duration"),
            str(obj.get("source") or path.stem),
            str(record_id) if record_id is not None else generated_id,
            prompt,
            system,
        )


def write_swift_records(records: list[GroundingRecord], path: str | Path, style: str = "paper") -> None:
    """Write records in the ms-swift format: the user turn ``<video>`` + the record's own prompt,
    else its query in ``style``'s template; the assistant turn the span in that style; the
    record's system prompt, else the style's (none for ``timelens``). The explicit ``start``,
    ``end`` (``windows``), ``duration``, ``id``, ``source`` and ``query`` fields make the round
    trip exact (ms-swift passes extra fields through to GRPO reward functions and drops them
    elsewhere)."""
    check_style(style)
    path = Path(path)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            system = record.system if record.system is not None else DEFAULT_SYSTEM_PROMPTS[style]
            user = record.prompt if record.prompt is not None else render_prompt(record.query, style)
            messages = [{"role": "system", "content": system}] if system is not None else []
            messages += [
                {"role": "user", "content": VIDEO_TAG + user},
                {"role": "assistant", "content": format_answer(record.span, style)},
            ]
            row: dict[str, Any] = {
                "messages": messages,
                "videos": [video_path_for(record.video, path)],
                "id": record.id,
                "query": record.query,
                "start": record.span[0],
                "end": record.span[1],
                "duration": record.duration,
                "source": record.source,
            }
            if record.windows is not None:
                row["windows"] = [list(window) for window in record.windows]
            handle.write(json.dumps(row) + "\n")
