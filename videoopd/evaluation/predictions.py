"""An evaluation's predictions file: its rows (JSONL, one per record, read back on resume with each
unreadable line reported by file and line), and the identity sidecar recording what they answer."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from videoopd.data.video import DecodeConfig
from videoopd.qwen.prompts import DATA_SYSTEM, DEFAULT_SYSTEM_PROMPTS, STYLE_DEFAULT

__all__: list[str] = []  # nothing here is promised: docs/api.md

logger = logging.getLogger(__name__)


def read_predictions(path: str | Path) -> dict[str, dict[str, Any]]:
    """Rows of a predictions JSONL by id. Unreadable lines (e.g. one cut off by a crash) are
    reported with file and line and left out, so their records are evaluated again."""
    rows: dict[str, dict[str, Any]] = {}
    with Path(path).open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                    raise ValueError("not an object with a string 'id'")
            except ValueError as exc:
                logger.warning(
                    "%s: line %d: unreadable prediction row (%s); it will be evaluated again", path, line_number, exc
                )
                continue
            rows[row["id"]] = row
    return rows


IDENTITY_VERSION = 1


def identity_path(predictions_path: str | Path) -> Path:
    """The sidecar recording what the rows of ``predictions_path`` answer."""
    path = Path(predictions_path)
    return path.with_name(path.name + ".meta.json")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def predictions_identity(
    decode_config: DecodeConfig,
    prompt_style: str,
    system_prompt: Any,
    max_new_tokens: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything that changes an answer, as recorded next to a predictions file: the
    decoding settings :func:`evaluate` knows, plus ``extra`` (the data and model, which only
    the caller knows). JSON values, so that a recorded identity compares equal to a new one."""
    if system_prompt is STYLE_DEFAULT:
        system_prompt = DEFAULT_SYSTEM_PROMPTS[prompt_style]
    elif system_prompt is DATA_SYSTEM:  # each record's own (the data file is in the identity), else the style's
        system_prompt = {"from_data": True, "else": DEFAULT_SYSTEM_PROMPTS[prompt_style]}
    identity = {
        "prompt_style": prompt_style,
        "system_prompt": system_prompt,
        "decoding": "greedy",
        "max_new_tokens": max_new_tokens,
        "fps": decode_config.fps,
        "max_frames": decode_config.max_frames,
        "min_frames": decode_config.min_frames,
        "factor": decode_config.factor,
        "temporal_patch_size": decode_config.temporal_patch_size,
        "min_pixels": decode_config.resolved_min_pixels,
        "max_pixels": decode_config.resolved_max_pixels,
        "total_pixels": decode_config.resolved_total_pixels,
        **(extra or {}),
    }
    return json.loads(json.dumps(identity))


def check_resumable(predictions_path: str | Path, identity: Mapping[str, Any]) -> None:
    """Raise ValueError unless the rows in ``predictions_path`` were produced for ``identity``
    (nothing to check when the file is missing or empty)."""
    path = Path(predictions_path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    sidecar = identity_path(path)
    if not sidecar.is_file():
        raise ValueError(
            f"cannot resume {path}: it has no recorded identity ({sidecar.name} is missing; the file was written "
            "before identities were recorded), so nothing says which data and model its rows belong to; "
            "evaluate without resume to start it over, or write to another file"
        )
    try:
        recorded = json.loads(sidecar.read_text(encoding="utf-8"))["identity"]
        if not isinstance(recorded, dict):
            raise TypeError(f"identity is a {type(recorded).__name__}")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot resume {path}: its identity file {sidecar} is unreadable ({exc})") from None
    current = json.loads(json.dumps(dict(identity)))
    differing = sorted(key for key in recorded.keys() | current.keys() if recorded.get(key) != current.get(key))
    if differing:
        details = ", ".join(f"{key} (recorded {recorded.get(key)!r}, now {current.get(key)!r})" for key in differing)
        raise ValueError(f"cannot resume {path}: its rows were produced for other inputs; these differ: {details}")


def _write_identity(predictions_path: Path, identity: Mapping[str, Any]) -> None:
    sidecar = identity_path(predictions_path)
    partial = sidecar.with_name(sidecar.name + ".partial")
    partial.write_text(
        json.dumps({"version": IDENTITY_VERSION, "identity": identity}, indent=2) + "\n", encoding="utf-8"
    )
    partial.replace(sidecar)  # never a half-written identity next to rows


def open_predictions(
    path: Path, recorded: dict[str, Any], resume: bool, wanted: set[str], main: bool
) -> dict[str, dict[str, Any]]:
    """Make ``path`` ready for this evaluation's rows: checked and kept on ``resume`` (its rows
    for the ``wanted`` ids returned), removed otherwise; the identity sidecar (re)written by
    the main process."""
    if resume:
        check_resumable(path, recorded)
    done: dict[str, dict[str, Any]] = {}
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
    if resume and path.is_file():
        done = {i: row for i, row in read_predictions(path).items() if i in wanted}
    elif path.exists() and main:
        path.unlink()
    if main:
        _write_identity(path, recorded)
    return done


def ends_mid_line(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"
