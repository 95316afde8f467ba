"""Command-line configuration shared by ``videoopd.train`` and ``videoopd.sft``.

A run is configured by a dataclass whose fields carry their help text (:func:`opt`).
Precedence: field defaults < ``--preset`` < ``--config`` YAML < command-line flags. Every
field is a ``--flag-with-dashes``; booleans take true/false. The resolved config is saved
with the run (:func:`save_config`).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

__all__ = ["ConfigError", "DataOptions", "build_parser", "opt", "parse_config", "save_config"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad option value, file or combination, reported before any work starts."""


def opt(help: str, **kw: Any) -> Any:
    """A dataclass field with its ``--help`` text."""
    return field(metadata={"help": help}, **kw)


@dataclass
class DataOptions:
    """Annotation and frame-sampling options shared by every command that reads a pool."""

    train_data: str | None = opt("training annotation file (Charades-STA, ActivityNet, TimeLens, jsonl)", default=None)
    eval_data: str | None = opt("held-out annotation file, scored with videoopd.eval's code", default=None)
    format: str = opt("annotation format or auto", default="auto")
    video_root: str | None = opt("folder of the videos (default: the annotation's folder)", default=None)
    prompt_style: str = opt("paper or timelens", default="paper")
    fps: float = opt("frames sampled per second", default=2.0)
    max_frames: int = opt("at most this many frames per video", default=768)
    min_pixels: int | None = opt("min pixels per frame (default: the processor's)", default=None)
    max_pixels: int | None = opt("max pixels per frame (default: the processor's)", default=None)
    num_workers: int = opt("DataLoader workers decoding videos", default=0)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _field_type(f: dataclasses.Field) -> type:
    t = str(f.type)
    return int if t.startswith("int") else float if t.startswith("float") else bool if t.startswith("bool") else str


def build_parser(config_class: type, *, prog: str, description: str,
                 choices: Mapping[str, Sequence[Any]] | None = None,
                 presets: Mapping[str, Mapping[str, Any]] | None = None, preset_help: str = "") -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of ``config_class`` (defaults suppressed, so
    that only the flags actually given override the YAML/preset values)."""
    choices = choices or {}
    parser = argparse.ArgumentParser(prog=prog, description=description + " Precedence: defaults < "
                                     + ("--preset < " if presets else "") + "--config YAML < flags.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=argparse.SUPPRESS, help="YAML file of options (keys as below, with _ or -)")
    if presets:
        parser.add_argument("--preset", choices=sorted(presets), default=argparse.SUPPRESS, help=preset_help)
    for f in dataclasses.fields(config_class):
        kind = _field_type(f)
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                                  "help": f"{f.metadata['help']} (default: {f.default})"}
        if kind is bool:
            kwargs.update(type=_bool, metavar="BOOL")
        else:
            kwargs["type"] = kind
            if f.name in choices:
                kwargs["choices"] = [c for c in choices[f.name] if c is not None]
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)
    if any(f.name == "progress" for f in dataclasses.fields(config_class)):
        parser.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                            help="no progress bars")
    return parser


def parse_config(config_class: type[T], argv: Sequence[str] | None, *, prog: str, description: str,
                 choices: Mapping[str, Sequence[Any]] | None = None, positive: Sequence[str] = (),
                 presets: Mapping[str, Mapping[str, Any]] | None = None, preset_help: str = "") -> T:
    """Parse flags, apply preset, YAML and overrides; raise ConfigError on a bad value.

    The chosen preset (or None) is recorded as ``cfg.preset``. ``positive`` names integer
    fields that must be > 0; ``choices`` the allowed values of a field.
    """
    import yaml

    choices = choices or {}
    parser = build_parser(config_class, prog=prog, description=description, choices=choices, presets=presets,
                          preset_help=preset_help)
    args = vars(parser.parse_args(list(argv) if argv is not None else None))
    names = {f.name: f for f in dataclasses.fields(config_class)}
    values: dict[str, Any] = {}
    file_values: dict[str, Any] = {}
    if "config" in args:
        path = Path(args.pop("config"))
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of options, got {type(loaded).__name__}")
        for key, value in loaded.items():
            name = str(key).replace("-", "_")
            if name != "preset" and name not in names:
                raise ConfigError(f"{path}: unknown option {key!r}")
            file_values[name] = value
    preset = args.pop("preset", None) or file_values.pop("preset", None)
    if preset is not None:
        if not presets or preset not in presets:
            raise ConfigError(f"unknown preset {preset!r}; choose from {sorted(presets or {})}")
        values.update(presets[preset])
    values.update(file_values)
    values.update(args)
    cfg = config_class(**values)
    for name, f in names.items():  # YAML values are typed by YAML; coerce numbers
        value = getattr(cfg, name)
        kind = _field_type(f)
        if value is not None and kind in (int, float) and not isinstance(value, bool):
            try:
                setattr(cfg, name, kind(value))
            except (TypeError, ValueError):
                raise ConfigError(f"{name} must be a {kind.__name__}, got {value!r}") from None
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"{name} must be one of {tuple(allowed)}, got {getattr(cfg, name)!r}")
    for name in positive:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    cfg.preset = preset  # type: ignore[attr-defined]
    return cfg


def save_config(cfg: Any, out_dir: Path) -> Path:
    """Write the resolved ``cfg`` (and its preset) to ``out_dir/config.yaml``; return the path."""
    import yaml

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = dataclasses.asdict(cfg)
    data["preset"] = getattr(cfg, "preset", None)
    path = out_dir / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path
