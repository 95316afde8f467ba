"""Command-line configuration shared by ``videoopd.train`` and ``videoopd.sft``.

A run is configured by a dataclass whose fields carry their help text (:func:`opt`).
:class:`RunOptions` holds what every training command shares (models' device and dtype,
optimisation, evaluation, output); a command changes only their defaults
(``command_defaults``). Precedence: field defaults < command defaults < ``--preset`` <
``--config`` YAML < command-line flags. Every field is a ``--flag-with-dashes``; booleans
take true/false. The resolved config is saved with the run (:func:`save_config`).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

__all__ = ["ConfigError", "DataOptions", "RunOptions", "build_parser", "check_run_options", "opt", "parse_config",
           "save_config"]

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


@dataclass
class RunOptions(DataOptions):
    """What every training command (OPD, SFT) shares: one loop reads these."""

    device: str | None = opt("device (default: cuda if available, else cpu; under accelerate launch, the "
                             "process's device)", default=None)
    dtype: str = opt("auto (bf16 on CUDA, fp32 on CPU), bfloat16, float16 or float32", default="auto")
    gradient_checkpointing: bool = opt("activation checkpointing of the trained model", default=True)
    train_vision: bool = opt("also train the vision tower (frozen by default)", default=False)
    # optimisation
    lr: float = opt("peak AdamW learning rate", default=1e-6)
    vision_lr: float | None = opt("peak learning rate of the vision tower when trained (default: --lr)", default=None)
    lr_schedule: str = opt("constant, or cosine (linear warm-up then cosine decay to lr * min_lr_ratio)",
                           default="constant")
    warmup_steps: int = opt("linear warm-up steps", default=0)
    min_lr_ratio: float = opt("cosine decay floor as a fraction of --lr", default=0.1)
    adam_beta2: float = opt("AdamW beta2", default=0.999)
    weight_decay: float = opt("AdamW weight decay (matrices only)", default=0.0)
    max_grad_norm: float = opt("gradient clipping (0: off)", default=1.0)
    master_weights: str = opt("fp32 master copies of the trainable weights for the optimizer, one process or DDP: "
                              "auto (when the model is bf16/fp16, so that updates of lr ~1e-6 are not rounded "
                              "away), fp32 or none. Under FSDP2 its mixed-precision policy keeps fp32 sharded "
                              "masters instead", default="auto")
    batch_size: int = opt("prompts per micro-batch and process", default=1)
    grad_accum: int = opt("micro-batches per optimizer step (effective batch = batch_size * grad_accum * "
                          "processes)", default=1)
    max_steps: int = opt("optimizer steps", default=100)
    seed: int = opt("random seed", default=0)
    # evaluation / output
    eval_every: int = opt("evaluate on --eval-data every K steps (0: only at the end)", default=0)
    eval_before: bool = opt("also evaluate on --eval-data before the first step (step 0)", default=True)
    eval_limit: int | None = opt("evaluate the first N held-out queries", default=None)
    eval_batch_size: int = opt("prompts per evaluation generate call (per process)", default=4)
    max_new_tokens: int = opt("max answer tokens per generation", default=64)
    output_dir: str = opt("run folder: config.yaml, metrics.jsonl, eval_*.json, final/", default="runs/opd")
    save_final: bool = opt("save the trained model (and processor) to OUTPUT_DIR/final", default=True)
    save_best: bool = opt("save the model with the best held-out mIoU so far to OUTPUT_DIR/best", default=False)
    save_every: int = opt("also save the model to OUTPUT_DIR/step{K} every K steps (0: never)", default=0)
    progress: bool = opt("show progress bars", default=True)


RUN_CHOICES: dict[str, tuple[Any, ...]] = {
    "dtype": ("auto", "bfloat16", "float16", "float32"),
    "master_weights": ("auto", "fp32", "none"),
    "prompt_style": ("paper", "timelens"),
    "lr_schedule": ("constant", "cosine"),
}
RUN_POSITIVE = ("max_frames", "batch_size", "grad_accum", "max_steps", "eval_batch_size", "max_new_tokens")


def check_run_options(cfg: RunOptions) -> None:
    """Range checks of the shared options; ConfigError names the option and the value."""
    for name in ("lr", "fps"):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{name} must be > 0, got {getattr(cfg, name)!r}")
    if cfg.vision_lr is not None and not cfg.vision_lr > 0:
        raise ConfigError(f"vision_lr must be > 0, got {cfg.vision_lr!r}")
    if not 0 <= cfg.min_lr_ratio <= 1:
        raise ConfigError(f"min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio!r}")
    if not 0 <= cfg.adam_beta2 < 1:
        raise ConfigError(f"adam_beta2 must be in [0, 1), got {cfg.adam_beta2!r}")
    for name in ("warmup_steps", "eval_every", "save_every", "num_workers", "max_grad_norm", "weight_decay"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(cfg, name)!r}")


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
                 presets: Mapping[str, Mapping[str, Any]] | None = None, preset_help: str = "",
                 command_defaults: Mapping[str, Any] | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of ``config_class`` (defaults suppressed, so
    that only the flags actually given override the YAML/preset values)."""
    command_defaults = command_defaults or {}
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
                                  "help": f"{f.metadata['help']} (default: {command_defaults.get(f.name, f.default)})"}
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
                 presets: Mapping[str, Mapping[str, Any]] | None = None, preset_help: str = "",
                 command_defaults: Mapping[str, Any] | None = None) -> T:
    """Parse flags, apply preset, YAML and overrides; raise ConfigError on a bad value.

    The chosen preset (or None) is recorded as ``cfg.preset``. ``positive`` names integer
    fields that must be > 0; ``choices`` the allowed values of a field; ``command_defaults``
    the command's own defaults for inherited fields.
    """
    import yaml

    choices = choices or {}
    parser = build_parser(config_class, prog=prog, description=description, choices=choices, presets=presets,
                          preset_help=preset_help, command_defaults=command_defaults)
    args = vars(parser.parse_args(list(argv) if argv is not None else None))
    names = {f.name: f for f in dataclasses.fields(config_class)}
    values: dict[str, Any] = dict(command_defaults or {})
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
