"""Command-line configuration shared by ``videoopd.train`` and ``videoopd.sft``.

A run is configured by a dataclass whose fields carry their help text (:func:`opt`).
:class:`RunOptions` holds what every training command shares (models' device and dtype,
optimisation, evaluation, output); a command changes only their defaults
(``command_defaults``). Precedence: field defaults < command defaults < ``--preset`` <
``--config`` YAML < command-line flags. Every field is a ``--flag-with-dashes``; booleans
take true/false (a boolean flag alone means true). The resolved config is saved with the run (:func:`save_config`).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

__all__ = ["ConfigError", "DataOptions", "RunOptions", "build_parser", "check_run_options", "help_with_defaults", "opt",
           "parse_config", "save_config", "schedule_warning", "typed_value"]

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
    # None: what the (student) checkpoint records it was trained with (DecodeConfig.for_processor), else Qwen's
    fps: float | None = opt("frames sampled per second (default: the model's recorded setting, else 2)", default=None)
    max_frames: int | None = opt("at most this many frames per video (default: the model's recorded setting, else "
                                 "768)", default=None)
    min_pixels: int | None = opt("min pixels per frame (default: the model's recorded setting, else 128 x "
                                 "(patch x merge)^2)", default=None)
    max_pixels: int | None = opt("max pixels per frame (default: the model's recorded setting, else 768 x "
                                 "(patch x merge)^2)", default=None)
    num_workers: int = opt("DataLoader workers decoding videos", default=0)


@dataclass
class RunOptions(DataOptions):
    """What every training command (OPD, SFT) shares: one loop reads these."""

    device: str | None = opt("device (default: cuda if available, else cpu; under accelerate launch, the "
                             "process's device)", default=None)
    dtype: str = opt("auto (bf16 on CUDA, fp32 on CPU), bfloat16, float16 or float32", default="auto")
    gradient_checkpointing: bool = opt("activation checkpointing of the trained model", default=True)
    train_vision: bool = opt("also train the vision tower (otherwise frozen)", default=False)
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
    time_budget_s: float = opt("also stop after the optimizer step during which the run's training time (steps, "
                               "not evaluations) reaches this many seconds, evaluating and saving as at the end "
                               "(0: no limit)", default=0.0)
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
    save_every: int = opt("write a resumable checkpoint to OUTPUT_DIR/checkpoints/step-{K} every K steps, and one "
                          "at the end (0: only when stopped by SIGTERM/SIGINT)", default=0)
    keep_checkpoints: int = opt("keep the newest N checkpoints (0: all)", default=0)
    resume: str | None = opt("continue from a checkpoint folder, or 'auto': the newest complete checkpoint in "
                             "OUTPUT_DIR (a fresh start when there is none)", default=None)
    resume_override: bool = opt("resume even where the config differs from the checkpoint's on what changes the "
                                "run (models, lr, batch, objective, ...)", default=False)
    overwrite: bool = opt("start fresh in a non-empty OUTPUT_DIR, replacing what is there", default=False)
    # LoRA (peft)
    lora_r: int = opt("LoRA rank (0: train the full weights)", default=0)
    lora_alpha: float | None = opt("LoRA alpha (default: 2 * --lora-r)", default=None)
    lora_dropout: float = opt("LoRA dropout", default=0.0)
    lora_targets: str = opt("comma-separated module names given adapters, inside the language model only (the "
                            "vision tower and LM head stay frozen)",
                            default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    merge_lora: bool = opt("with LoRA: write merged weights (a plain HF model) to final/ and best/ instead of "
                           "the adapter", default=False)
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
        if getattr(cfg, name) is not None and not getattr(cfg, name) > 0:
            raise ConfigError(f"{name} must be > 0, got {getattr(cfg, name)!r}")
    if cfg.vision_lr is not None and not cfg.vision_lr > 0:
        raise ConfigError(f"vision_lr must be > 0, got {cfg.vision_lr!r}")
    if not 0 <= cfg.min_lr_ratio <= 1:
        raise ConfigError(f"min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio!r}")
    if not 0 <= cfg.adam_beta2 < 1:
        raise ConfigError(f"adam_beta2 must be in [0, 1), got {cfg.adam_beta2!r}")
    for name in ("warmup_steps", "eval_every", "save_every", "keep_checkpoints", "num_workers", "max_grad_norm",
                 "weight_decay", "lora_r", "time_budget_s"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(cfg, name)!r}")
    for name in ("lr", "max_grad_norm", "weight_decay", "fps", "time_budget_s"):
        if getattr(cfg, name) is not None and not math.isfinite(getattr(cfg, name)):
            raise ConfigError(f"{name} must be finite, got {getattr(cfg, name)!r}")
    if cfg.lora_r:
        if cfg.lora_alpha is not None and not (math.isfinite(cfg.lora_alpha) and cfg.lora_alpha > 0):
            raise ConfigError(f"lora_alpha must be > 0, got {cfg.lora_alpha!r}")
        if not 0 <= cfg.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {cfg.lora_dropout!r}")
        if not [t for t in cfg.lora_targets.split(",") if t.strip()]:
            raise ConfigError("lora_targets names no module")
        if cfg.train_vision:
            raise ConfigError("--train-vision with LoRA is not supported: adapters go into the language model only")
    elif cfg.merge_lora:
        raise ConfigError("--merge-lora needs --lora-r > 0")
    if cfg.resume is not None and cfg.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: choose one")


def schedule_warning(cfg: RunOptions) -> str | None:
    """Why the learning rate never reaches its peak ``--lr`` (the run ends inside the warm-up),
    or None."""
    if cfg.warmup_steps <= cfg.max_steps:
        return None
    return (f"--max-steps {cfg.max_steps} ends inside --warmup-steps {cfg.warmup_steps}: the learning rate rises to "
            f"{cfg.lr * cfg.max_steps / cfg.warmup_steps:g} and never reaches --lr {cfg.lr:g}")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def typed_value(name: str, kind: type, value: Any) -> Any:
    """``value`` (from YAML, a preset or a flag) as option ``name`` of type ``kind``: strings are
    parsed as their flags are (``"false"`` is False, ``"3"`` is 3); a float for an int option,
    or a number for a bool, is a ConfigError rather than a truncation or a truthy string."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return _bool(value)
            except argparse.ArgumentTypeError:
                pass
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def _field_type(f: dataclasses.Field) -> type:
    t = str(f.type)
    return int if t.startswith("int") else float if t.startswith("float") else bool if t.startswith("bool") else str


def help_with_defaults(text: str, default: Any, mode_defaults: Mapping[str, Any]) -> str:
    """``text`` with ``(default: X; MODE: Y)`` stated once: where ``text`` already says its
    default in a closing ``(default ...)``, the modes' values go inside it; a default of None
    is left unsaid (the text says what leaving the option out means)."""
    modes = [f"{mode}: {value}" for mode, value in mode_defaults.items()]
    if text.endswith(")") and "(default" in text:
        return text[:-1] + "".join(f"; {m}" for m in modes) + ")" if modes else text
    parts = ([] if default is None else [f"default: {default}"]) + modes
    return f"{text} ({'; '.join(parts)})" if parts else text


def build_parser(config_class: type, *, prog: str, description: str,
                 choices: Mapping[str, Sequence[Any]] | None = None,
                 presets: Mapping[str, Mapping[str, Any]] | None = None, preset_help: str = "",
                 command_defaults: Mapping[str, Any] | None = None,
                 mode_defaults: Mapping[str, Mapping[str, Any]] | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of ``config_class`` (defaults suppressed, so
    that only the flags actually given override the YAML/preset values). ``mode_defaults``
    ({mode: {field: value}}): the defaults of a mode of the command (the train demo), shown in
    each field's help beside the default."""
    command_defaults = command_defaults or {}
    mode_defaults = mode_defaults or {}
    choices = choices or {}
    parser = argparse.ArgumentParser(prog=prog, description=description + " Precedence: defaults < "
                                     + ("--preset < " if presets else "") + "--config YAML < flags.")
    parser.add_argument("--config", default=argparse.SUPPRESS, help="YAML file of options (keys as below, with _ or -)")
    if presets:
        parser.add_argument("--preset", choices=sorted(presets), default=argparse.SUPPRESS, help=preset_help)
    for f in dataclasses.fields(config_class):
        kind = _field_type(f)
        modes = {mode: values[f.name] for mode, values in mode_defaults.items() if f.name in values}
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                                  "help": help_with_defaults(f.metadata["help"], command_defaults.get(f.name, f.default),
                                                             modes)}
        if kind is bool:  # --flag alone means true
            kwargs.update(type=_bool, metavar="BOOL", nargs="?", const=True)
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
                 command_defaults: Mapping[str, Any] | None = None,
                 mode_defaults: Mapping[str, Mapping[str, Any]] | None = None) -> T:
    """Parse flags, apply preset, YAML and overrides; raise ConfigError on a bad value.

    The chosen preset (or None) is recorded as ``cfg.preset``. ``positive`` names integer
    fields that must be > 0; ``choices`` the allowed values of a field; ``command_defaults``
    the command's own defaults for inherited fields; ``mode_defaults`` those of its modes, for
    ``--help`` only (:func:`build_parser`).
    """
    import yaml

    choices = choices or {}
    parser = build_parser(config_class, prog=prog, description=description, choices=choices, presets=presets,
                          preset_help=preset_help, command_defaults=command_defaults, mode_defaults=mode_defaults)
    args = vars(parser.parse_args(list(argv) if argv is not None else None))
    names = {f.name: f for f in dataclasses.fields(config_class)}
    values: dict[str, Any] = dict(command_defaults or {})
    file_values: dict[str, Any] = {}
    if "config" in args:
        path = Path(args.pop("config"))
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise ConfigError(f"{where}: YAML syntax error: {getattr(exc, 'problem', None) or exc}") from None
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
    for name, f in names.items():  # YAML and presets type values their own way: check them as flags are
        value = getattr(cfg, name)
        if value is not None:
            setattr(cfg, name, typed_value(name, _field_type(f), value))
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"{name} must be one of {tuple(allowed)}, got {getattr(cfg, name)!r}")
    for name in positive:
        value = getattr(cfg, name)
        if value is None and names[name].default is None:  # unset: resolved later
            continue
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
