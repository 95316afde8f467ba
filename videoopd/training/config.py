"""Command-line configuration: every option declared once, as a dataclass field.

A field carries everything about its option (:func:`opt`): the type (a ``Literal`` built from
the library's own constants is its choice list), the default, the help text, its bounds
(``gt``/``ge``/``lt``/``le``) and whether it defines a run (a resume must agree on it). An
:class:`Options` dataclass checks its fields against those declarations when it is built
(``__post_init__``) and then its cross-field rules (:meth:`Options.validate`), so a config is
valid however it was made: flags, YAML, presets or code.

The option groups (one dataclass each: data, frames and decoding, model, optimisation,
evaluation, checkpointing, LoRA, logging) are shared by ``videoopd.train``, ``videoopd.sft``
and ``videoopd.eval`` where the option is the same; a command adds its own groups and its own
defaults (``command_defaults``). One precedence rule holds everywhere (:func:`parse_config`):
field defaults < command defaults < ``--preset`` < ``--config`` YAML < command-line flags.
Every field is a ``--flag-with-dashes``; booleans take true/false (a boolean flag alone means
true). The resolved config is saved with the run (:func:`save_config`).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, NoReturn, Sequence, TypeVar, get_args, get_origin

from videoopd.data.annotations import FORMATS
from videoopd.qwen.prompts import PROMPT_STYLES

__all__: list[str] = []  # nothing here is promised: docs/api.md

T = TypeVar("T")

DTYPES = ("auto", "bfloat16", "float16", "float32")
BOUND_KEYS = ("gt", "ge", "lt", "le")


class ConfigError(ValueError):
    """A bad option value, file or combination, reported before any work starts."""


def opt(help: str, default: Any = None, *, gt: float | None = None, ge: float | None = None,
        lt: float | None = None, le: float | None = None, run_defining: bool = False, required: bool = False,
        aliases: Sequence[str] = ()) -> Any:
    """A dataclass field for an option: its ``--help`` text, default and bounds (a value of None
    is "unset" and not bounded; a float must also be finite); ``run_defining``: a resumed run
    must agree on it (:func:`run_defining_options`); ``required``: None is refused (by flag,
    YAML or code alike); ``aliases``: further flag spellings."""
    bounds = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    return field(default=default, metadata={"help": help, "bounds": bounds, "run_defining": run_defining,
                                            "required": required, "aliases": tuple(aliases)})


@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(annotation: Any) -> tuple[Any, tuple[Any, ...] | None]:
    """(bool/int/float/str, the Literal's choices or None) of a field's annotation, Optional
    removed."""
    origin = get_origin(annotation)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation, origin = args[0], get_origin(args[0])
    if origin is Literal:
        choices = get_args(annotation)
        return type(choices[0]), choices
    return annotation, None


def flag_name(name: str) -> str:
    """The command-line spelling of option ``name`` (``batch_size`` -> ``--batch-size``), as
    error messages name it (a YAML key may be spelt either way)."""
    return "--" + name.replace("_", "-")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def coerce(name: str, kind: type, value: Any) -> Any:
    """``value`` (from YAML, a preset or a flag) as option ``name`` of type ``kind``: strings are
    parsed as their flags are (``"false"`` is False, ``"3"`` is 3); a float for an int option,
    or a number for a bool, is a ConfigError rather than a truncation or a truthy string."""
    if value is None:
        return None
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


def describe_bounds(bounds: Mapping[str, float], kind: type) -> str:
    """The bounds as the error message and ``--help`` say them: ``> 0``, ``in [0, 1)``..."""
    low = ("(", bounds["gt"]) if "gt" in bounds else ("[", bounds["ge"]) if "ge" in bounds else None
    high = (")", bounds["lt"]) if "lt" in bounds else ("]", bounds["le"]) if "le" in bounds else None
    if low and high:
        return f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    text = (f"{'>' if low[0] == '(' else '>='} {low[1]:g}" if low
            else f"{'<' if high[0] == ')' else '<='} {high[1]:g}" if high else "")
    return f"{text} and finite" if kind is float else text


def _within(value: float, bounds: Mapping[str, float]) -> bool:
    return (("gt" not in bounds or value > bounds["gt"]) and ("ge" not in bounds or value >= bounds["ge"])
            and ("lt" not in bounds or value < bounds["lt"]) and ("le" not in bounds or value <= bounds["le"]))


@dataclass
class Options:
    """Base of the option groups: checks every field against its declaration when built, then
    the cross-field rules of :meth:`validate`."""

    # The preset a parsed config was built from (set by parse_config; not an option).
    preset: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                if f.metadata.get("required"):
                    raise ConfigError(f"{flag_name(f.name)} is required")
                continue
            kind, choices = _base_type(_field_types(type(self))[f.name])
            flag = flag_name(f.name)
            value = coerce(flag, kind, value)
            setattr(self, f.name, value)
            if choices is not None and value not in choices:
                raise ConfigError(f"{flag} must be one of {choices}, got {value!r}")
            bounds = f.metadata.get("bounds", {})
            if kind is float and not math.isfinite(value):
                raise ConfigError(f"{flag} must be {describe_bounds(bounds, kind) or 'finite'}, got {value!r}")
            if bounds and not _within(value, bounds):
                raise ConfigError(f"{flag} must be {describe_bounds(bounds, kind)}, got {value!r}")
        self.validate()

    def validate(self) -> None:
        """Rules across fields; ConfigError names the options. Subclasses extend it (call super)."""


# --------------------------------------------------------------------------------------
# option groups shared by the commands


@dataclass
class AnnotationOptions(Options):
    """data"""

    format: Literal[("auto", *FORMATS)] = opt("annotation format, or auto: detected from the file's content",
                                              "auto", run_defining=True)
    video_root: str | None = opt("folder of the videos (default: the annotation's folder)")


@dataclass
class DecodeOptions(Options):
    """frames and decoding"""

    prompt_style: Literal[tuple(PROMPT_STYLES)] = opt(
        "prompt: paper (the Video-OPD template, 'start to end'), timelens or time-r1 (those evaluations' own)", "paper", run_defining=True,
        aliases=("--prompt",))
    # None: what the (student) checkpoint records it was trained with (DecodeConfig.for_processor), else Qwen's
    fps: float | None = opt("frames sampled per second (default: the model's recorded setting, else 2)", gt=0,
                            run_defining=True)
    max_frames: int | None = opt("at most this many frames per video (default: the model's recorded setting, else "
                                 "768)", gt=0, run_defining=True)
    min_pixels: int | None = opt("min pixels per frame (default: the model's recorded setting, else 128 x "
                                 "(patch x merge)^2)", gt=0, run_defining=True)
    max_pixels: int | None = opt("max pixels per frame (default: the model's recorded setting, else 768 x "
                                 "(patch x merge)^2)", gt=0, run_defining=True)
    total_pixels: int | None = opt("pixel budget of all frames of a video together (default: the model's recorded "
                                   "setting, else 115200 x (patch x merge)^2)", gt=0, run_defining=True)
    max_new_tokens: int = opt("max answer tokens per generation (decoding of evaluations is greedy)", 64, gt=0,
                              run_defining=True)
    num_workers: int = opt("DataLoader workers decoding videos (0: in this process)", 0, ge=0)


@dataclass
class ModelOptions(Options):
    """model"""

    device: str | None = opt("device (default: cuda if available, else cpu; under accelerate launch, the "
                             "process's device)")
    dtype: Literal[DTYPES] = opt("weights' dtype: auto (bf16 on CUDA, fp32 on CPU), bfloat16, float16 or float32",
                                 "auto", run_defining=True)
    attn_implementation: str | None = opt("transformers attention, e.g. sdpa or flash_attention_2 (default: "
                                          "flash_attention_2 on CUDA when flash-attn is installed, else sdpa)")


@dataclass
class LoggingOptions(Options):
    """logging"""

    progress: bool = opt("show progress bars", True)


@dataclass
class OptimOptions(Options):
    """optimisation"""

    gradient_checkpointing: bool = opt("activation checkpointing of the trained model", True)
    train_vision: bool = opt("also train the vision tower (otherwise frozen)", False, run_defining=True)
    lr: float = opt("peak AdamW learning rate", 1e-6, gt=0, run_defining=True)
    vision_lr: float | None = opt("peak learning rate of the vision tower when trained (default: --lr)", gt=0,
                                  run_defining=True)
    lr_schedule: Literal["constant", "cosine"] = opt(
        "constant, or cosine (linear warm-up then cosine decay to lr * min_lr_ratio)", "constant", run_defining=True)
    warmup_steps: int = opt("linear warm-up steps", 0, ge=0, run_defining=True)
    min_lr_ratio: float = opt("cosine decay floor as a fraction of --lr", 0.1, ge=0, le=1, run_defining=True)
    adam_beta2: float = opt("AdamW beta2", 0.999, ge=0, lt=1, run_defining=True)
    weight_decay: float = opt("AdamW weight decay (matrices only)", 0.0, ge=0, run_defining=True)
    max_grad_norm: float = opt("gradient clipping (0: off)", 1.0, ge=0, run_defining=True)
    master_weights: Literal["auto", "fp32", "none"] = opt(
        "fp32 master copies of the trainable weights for the optimizer, one process or DDP: auto (when the model "
        "is bf16/fp16, so that updates of lr ~1e-6 are not rounded away), fp32 or none. Under FSDP2 its "
        "mixed-precision policy keeps fp32 sharded masters instead", "auto", run_defining=True)
    batch_size: int = opt("prompts per micro-batch and process", 1, gt=0, run_defining=True)
    grad_accum: int = opt("micro-batches per optimizer step (effective batch = batch_size * grad_accum * "
                          "processes)", 1, gt=0, run_defining=True)
    max_steps: int = opt("optimizer steps", 100, gt=0)
    time_budget_s: float = opt("also stop after the optimizer step during which the run's training time (steps, "
                               "not evaluations) reaches this many seconds, evaluating and saving as at the end "
                               "(0: no limit)", 0.0, ge=0)
    seed: int = opt("random seed", 0, run_defining=True)


@dataclass
class EvalOptions(Options):
    """held-out evaluation during training"""

    eval_data: str | None = opt("held-out annotation file, scored as python -m videoopd.eval scores it")
    eval_every: int = opt("evaluate on --eval-data every K steps (0: only at the end)", 0, ge=0)
    eval_before: bool = opt("also evaluate on --eval-data before the first step (step 0)", True)
    eval_limit: int | None = opt("evaluate the first N held-out queries", gt=0)
    eval_batch_size: int = opt("prompts per evaluation generate call (per process)", 4, gt=0)


@dataclass
class CheckpointOptions(Options):
    """output and checkpointing"""

    output_dir: str = opt("run folder: config.yaml, metrics.jsonl, eval_*.json, final/", "runs/opd")
    save_final: bool = opt("save the trained model (and processor) to OUTPUT_DIR/final", True)
    save_best: bool = opt("save the model with the best held-out mIoU so far to OUTPUT_DIR/best", False)
    save_every: int = opt("write a resumable checkpoint to OUTPUT_DIR/checkpoints/step-{K} every K steps, and one "
                          "at the end (0: only when stopped by SIGTERM/SIGINT)", 0, ge=0)
    keep_checkpoints: int = opt("keep the newest N checkpoints (0: all)", 0, ge=0)
    resume: str | None = opt("continue from a checkpoint folder, or 'auto': the newest complete checkpoint in "
                             "OUTPUT_DIR (a fresh start when there is none)")
    resume_override: bool = opt("resume even where the config differs from the checkpoint's on what changes the "
                                "run (models, lr, batch, objective, ...)", False)
    overwrite: bool = opt("start fresh in a non-empty OUTPUT_DIR, replacing what is there", False)

    def validate(self) -> None:
        super().validate()
        if self.resume is not None and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other: choose one")


@dataclass
class LoraOptions(Options):
    """LoRA (peft)"""

    lora_r: int = opt("LoRA rank (0: train the full weights)", 0, ge=0, run_defining=True)
    lora_alpha: float | None = opt("LoRA alpha (default: 2 * --lora-r)", gt=0, run_defining=True)
    lora_dropout: float = opt("LoRA dropout", 0.0, ge=0, lt=1, run_defining=True)
    lora_targets: str = opt("comma-separated module names given adapters, inside the language model only (the "
                            "vision tower and LM head stay frozen)",
                            "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", run_defining=True)
    merge_lora: bool = opt("with LoRA: write merged weights (a plain HF model) to final/ and best/ instead of "
                           "the adapter", False)

    def validate(self) -> None:
        super().validate()
        if self.lora_r:
            if not [t for t in self.lora_targets.split(",") if t.strip()]:
                raise ConfigError("--lora-targets names no module")
            if getattr(self, "train_vision", False):
                raise ConfigError("--train-vision with LoRA is not supported: adapters go into the language model "
                                  "only")
        elif self.merge_lora:
            raise ConfigError("--merge-lora needs --lora-r > 0")


# accelerate's trackers (the names transformers' report_to takes)
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")


@dataclass
class TrackingOptions(Options):
    """logging"""

    report_to: str = opt("where the step and evaluation rows go besides metrics.jsonl, as transformers' report_to: "
                         "none, all (every tracker installed) or comma-separated accelerate trackers (" +
                         ", ".join(TRACKERS) + "); TensorBoard writes OUTPUT_DIR/tensorboard", "none")

    @property
    def trackers(self) -> list[str]:
        """``report_to`` as a list of accelerate tracker names (empty for none)."""
        names = [name.strip() for name in self.report_to.split(",") if name.strip()]
        return [] if names == ["none"] else names

    def validate(self) -> None:
        super().validate()
        unknown = [name for name in self.trackers if name not in (*TRACKERS, "all")]
        if unknown or (len(self.trackers) > 1 and "all" in self.trackers):
            raise ConfigError(f"--report-to must be none, all or names from {', '.join(TRACKERS)}, got "
                              f"{self.report_to!r}")


@dataclass
class RunOptions(TrackingOptions, LoggingOptions, LoraOptions, CheckpointOptions, EvalOptions, OptimOptions,
                 ModelOptions, DecodeOptions, AnnotationOptions):
    """data

    What every training command (OPD, GRPO, SFT) shares: one loop reads these."""

    train_data: str | None = opt("training annotation file (Charades-STA, ActivityNet, TimeLens, jsonl)",
                                 run_defining=True)


def run_defining_options(cfg: Any) -> tuple[str, ...]:
    """The options of ``cfg`` a resumed run must agree on (declared with ``run_defining=True``)."""
    return tuple(f.name for f in dataclasses.fields(cfg) if f.metadata.get("run_defining"))


def warn_about_schedule(cfg: OptimOptions, prog: str) -> None:
    """Say (on stderr, once under a launch) when the learning rate never reaches its peak
    ``--lr`` because the run ends inside the warm-up."""
    if cfg.warmup_steps > cfg.max_steps and os.environ.get("RANK", "0") == "0":
        print(f"{prog}: warning: --max-steps {cfg.max_steps} ends inside --warmup-steps {cfg.warmup_steps}: the "
              f"learning rate rises to {cfg.lr * cfg.max_steps / cfg.warmup_steps:g} and never reaches --lr "
              f"{cfg.lr:g}", file=sys.stderr)


# --------------------------------------------------------------------------------------
# the parser


class OneLineErrorParser(argparse.ArgumentParser):
    """Turns a command-line error (an unknown flag, a value of the wrong type) into a
    ConfigError, which the command reports in one line with exit status 2 (:func:`fail`), as it
    does every other bad input."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _group_of(config_class: type) -> dict[str, str]:
    """{field: the title of its option group: the first docstring line of the dataclass that
    declares it (groups of one title share a section of ``--help``)}."""
    groups: dict[str, str] = {}
    for cls in config_class.__mro__:
        for name in cls.__dict__.get("__annotations__", {}):
            if name not in groups and dataclasses.is_dataclass(cls):
                groups[name] = (cls.__doc__ or cls.__name__).strip().splitlines()[0]
    return groups


def _help(f: dataclasses.Field, kind: type, default: Any, presets: Mapping[str, Mapping[str, Any]]) -> str:
    """The field's help with its bounds and ``(default: X; PRESET: Y)`` stated once: where the
    text already says its default in a closing ``(default ...)``, the presets' values go inside
    it; a default of None is left unsaid (the text says what leaving the option out means)."""
    text = f.metadata["help"] + ("; required" if f.metadata.get("required") else "")
    bounds = f.metadata.get("bounds")
    if bounds:  # said before a closing "(default ...)"
        head, paren, tail = text.rpartition(" (default") if text.endswith(")") else (text, "", "")
        text = f"{head or text} [{describe_bounds(bounds, kind)}]" + (paren + tail if head else "")
    modes = [f"{name}: {values[f.name]}" for name, values in presets.items() if f.name in values]
    if "(default" in text and text.endswith(")"):
        return text[:-1] + "".join(f"; {m}" for m in modes) + ")" if modes else text
    parts = ([] if default is None else [f"default: {default}"]) + modes
    return f"{text} ({'; '.join(parts)})" if parts else text


def build_parser(config_class: type, *, prog: str, description: str,
                 presets: Mapping[str, Mapping[str, Any]] | None = None, preset_help: str = "",
                 command_defaults: Mapping[str, Any] | None = None,
                 config_file: bool = True) -> argparse.ArgumentParser:
    """A parser with one flag per field of ``config_class``, in its option groups, and
    ``--config`` (unless ``config_file`` is False). Defaults are suppressed, so that only the
    flags actually given override the YAML/preset values; each option's help states its default
    (the command's) and the presets' values once."""
    command_defaults = command_defaults or {}
    presets = presets or {}
    usage = "%(prog)s" + (" [--preset NAME]" if presets else "") + (" [--config YAML]" if config_file else "")
    parser = OneLineErrorParser(prog=prog, usage=usage + " [options]", description=description + (
        " Precedence: defaults < " + ("--preset < " if presets else "") + "--config YAML < flags." if config_file
        else ""))
    if config_file:
        parser.add_argument("--config", default=argparse.SUPPRESS,
                            help="YAML file of options (keys as below, with _ or -)")
    if presets:
        parser.add_argument("--preset", choices=sorted(presets), default=argparse.SUPPRESS, help=preset_help)
    groups: dict[str, argparse._ArgumentGroup] = {}
    titles = _group_of(config_class)
    hints = _field_types(config_class)
    order = list(dict.fromkeys(titles[f.name] for f in dataclasses.fields(config_class)))
    for f in sorted(dataclasses.fields(config_class), key=lambda f: order.index(titles[f.name])):
        title = titles[f.name]
        group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        kind, choices = _base_type(hints[f.name])
        default = command_defaults.get(f.name, f.default)
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                                  "help": _help(f, kind, default, presets)}
        if kind is bool:  # --flag alone means true
            kwargs.update(type=_bool, metavar="BOOL", nargs="?", const=True)
        else:
            kwargs["type"] = kind
            if choices is not None:
                kwargs["choices"] = choices
        group.add_argument(flag_name(f.name), *f.metadata.get("aliases", ()), **kwargs)
        if f.name == "progress":
            group.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                               help="no progress bars")
    return parser


def read_yaml_options(path: Path, names: Sequence[str]) -> dict[str, Any]:
    """The options of a ``--config`` YAML file (keys with ``_`` or ``-``, and ``preset``)."""
    import yaml

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
    values = {}
    for key, value in loaded.items():
        name = str(key).replace("-", "_")
        if name != "preset" and name not in names:
            raise ConfigError(f"{path}: unknown option {key!r}")
        values[name] = value
    return values


def parse_config(config_class: type[T], argv: Sequence[str] | None, *, prog: str, description: str,
                 presets: Mapping[str, Mapping[str, Any]] | None = None, preset_help: str = "",
                 command_defaults: Mapping[str, Any] | None = None,
                 default_preset: Any = None, rest: list[str] | None = None, config_file: bool = True) -> T:
    """Parse flags, YAML and preset into ``config_class`` with one precedence rule: field
    defaults < ``command_defaults`` < preset < ``--config`` YAML < flags. ``default_preset``
    (given the YAML's and the flags' values) names the preset used when none is chosen. With
    ``rest`` (a list), flags that are not options of ``config_class`` are appended to it
    instead of refused (a command that passes them on); ``config_file=False``: no ``--config``
    (it is passed on too).

    The chosen preset (or None) is recorded as ``cfg.preset``. Raises ConfigError on a bad
    value or combination (the dataclass's own checks)."""
    parser = build_parser(config_class, prog=prog, description=description, presets=presets,
                          preset_help=preset_help, command_defaults=command_defaults, config_file=config_file)
    argv = list(argv) if argv is not None else sys.argv[1:]
    if rest is None:
        flags = vars(parser.parse_args(argv))
    else:
        namespace, unknown = parser.parse_known_args(argv)
        flags = vars(namespace)
        rest.extend(unknown)
    names = [f.name for f in dataclasses.fields(config_class)]
    file_values = read_yaml_options(Path(flags.pop("config")), names) if "config" in flags else {}
    preset = flags.pop("preset", None) or file_values.pop("preset", None)
    if preset is None and default_preset is not None:
        preset = default_preset({**file_values, **flags})
    if preset is not None and preset not in (presets or {}):
        raise ConfigError(f"unknown preset {preset!r}; choose from {sorted(presets or {})}")
    values = {**(command_defaults or {}), **(presets[preset] if preset is not None else {}), **file_values, **flags}
    cfg = config_class(**values)
    cfg.preset = preset
    return cfg


def fail(prog: str, exc: BaseException) -> int:
    """Print a ConfigError (or another refusal) as the commands do: one line, exit status 2."""
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return 2


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
