"""Inputs of a run checked before any work starts: model folders and annotation pools."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from videoopd.training.config import AnnotationOptions, ConfigError

__all__: list[str] = []  # nothing here is promised: docs/api.md


def check_device(spec: str | None, flag: str) -> None:
    """ConfigError naming ``flag`` when ``spec`` (None: the default device) is no device of
    this machine."""
    from videoopd.qwen.models import available_device

    if spec is None:
        return
    try:
        available_device(spec)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def check_output_dir(path: str | Path, flag: str = "--output-dir") -> None:
    """ConfigError when ``path`` cannot be a folder: it, or a folder it would be in, is a file."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "" if folder == path else f" ({folder} is)"
                raise ConfigError(f"{flag} {path} is a file, not a folder{where}")
            return


def check_model_folder(path: str | Path, flag: str) -> Path:
    """``path`` as a loadable Hugging Face checkpoint folder
    (:func:`videoopd.qwen.models.check_checkpoint`); ConfigError naming ``flag`` otherwise."""
    from videoopd.qwen.models import CheckpointError, check_checkpoint

    try:
        return check_checkpoint(path)
    except CheckpointError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def load_pool(path: str | None, cfg: AnnotationOptions, what: str) -> list[Any]:
    """Records of an annotation file; ConfigError when it is missing, empty or its videos are."""
    from videoopd.data.annotations import load_annotations

    if path is None:
        raise ConfigError(f"--{what.replace('_', '-')} is required with --student/--teacher")
    if not Path(path).is_file():
        raise ConfigError(f"--{what.replace('_', '-')}: annotation file not found: {path}")
    try:
        # A training target is one span: a query with several windows is reported and skipped.
        records, summary = load_annotations(path, cfg.format, video_root=cfg.video_root, multi_span="skip")
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"--{what.replace('_', '-')}: {exc}") from None
    flag = "--" + what.replace("_", "-")
    missing = [i.message for i in summary.issues if i.kind == "missing_video"]
    missing += [f"video file not found: {r.video}" for r in records if not Path(r.video).is_file()]
    if missing:
        raise ConfigError(
            f"{flag}: {len(missing)} queries refer to missing videos (e.g. {missing[0]}); check --video-root"
        )
    if not records:
        raise ConfigError(
            f"--{what.replace('_', '-')}: no usable records in {path} (empty pool)\n" + summary.report(max_issues=10)
        )
    return records
