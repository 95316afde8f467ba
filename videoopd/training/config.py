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
field defaults < command defaults < ``--preset`` (``videoopd/presets/NAME.yaml``) < ``--config``
YAML < command-line flags. Parsing is transformers' ``HfArgumentParser``: every field is a
``--flag_name`` (or ``--flag-name``); booleans take true/false (a boolean flag alone means true,
``--no_flag`` turns off one that defaults to true). Options that HF Trainer or TRL also have
carry their names (``--learning_rate``, ``--per_device_train_batch_size``...; the old names are
refused with the new one, :data:`RENAMED`). The resolved config is saved with the run
(:func:`save_config`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from videoopd.data.annotations import FORMATS
from videoopd.qwen.prompts import DATA_SYSTEM, PROMPT_STYLES, STYLE_DEFAULT
from videoopd.training.option_types import ConfigError as ConfigError
from videoopd.training.option_types import base_type, field_types, within
from videoopd.training.option_types import coerce as coerce
from videoopd.training.option_types import describe_bounds as describe_bounds
from videoopd.training.option_types import flag_name as flag_name
from videoopd.training.parser import PRESET_DIR as PRESET_DIR
from videoopd.training.parser import RENAMED as RENAMED
from videoopd.training.parser import OneLineErrorParser as OneLineErrorParser
from videoopd.training.parser import fail as fail
from videoopd.training.parser import given_flags as given_flags
from videoopd.training.parser import load_preset as load_preset
from videoopd.training.parser import parse_config as parse_config
from videoopd.training.parser import preset_names as preset_names
from videoopd.training.parser import read_yaml_options as read_yaml_options
from videoopd.training.parser import refuse_renamed as refuse_renamed

__all__: list[str] = []  # nothing here is promised: docs/api.md

T = TypeVar("T")

DTYPES = ("auto", "bfloat16", "float16", "float32")
BOUND_KEYS = ("gt", "ge", "lt", "le")


def opt(
    help: str,
    default: Any = None,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    run_defining: bool = False,
    required: bool = False,
    aliases: Sequence[str] = (),
) -> Any:
    """A dataclass field for an option: its ``--help`` text, default and bounds (a value of None
    is "unset" and not bounded; a float must also be finite); ``run_defining``: a resumed run
    must agree on it (:func:`run_defining_options`); ``required``: None is refused (by flag,
    YAML or code alike); ``aliases``: further flag spellings."""
    bounds = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}
    return field(
        default=default,
        metadata={
            "help": help,
            "bounds": bounds,
            "run_defining": run_defining,
            "required": required,
            "aliases": tuple(aliases),
        },
    )


@dataclass
class Options:
    """Base of the option groups: checks every field against its declaration when built, then
    the cross-field rules of :meth:`validate`."""

    # The preset a parsed config was built from, and the options the user gave (by flag or
    # --config YAML): what a value derived later must not replace (set by parse_config; not options).
    preset: ClassVar[str | None] = None
    given: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                if f.metadata.get("required"):
                    raise ConfigError(f"{flag_name(f.name)} is required")
                continue
            kind, choices = base_type(field_types(type(self))[f.name])
            flag = flag_name(f.name)
            value = coerce(flag, kind, value)
            setattr(self, f.name, value)
            if choices is not None and value not in choices:
                raise ConfigError(f"{flag} must be one of {choices}, got {value!r}")
            bounds = f.metadata.get("bounds", {})
            if kind is float and not math.isfinite(value):
                raise ConfigError(f"{flag} must be {describe_bounds(bounds, kind) or 'finite'}, got {value!r}")
            if bounds and not within(value, bounds):
                raise ConfigError(f"{flag} must be {describe_bounds(bounds, kind)}, got {value!r}")
        self.validate()

    def validate(self) -> None:
        """Rules across fields; ConfigError names the options. Subclasses extend it (call super)."""


# --------------------------------------------------------------------------------------
# option groups shared by the commands


@dataclass
class AnnotationOptions(Options):
    """data"""

    format: Literal[("auto", *FORMATS)] = opt(
        "annotation format, or auto: detected from the file's content", "auto", run_defining=True
    )
    video_root: str | None = opt("folder of the videos (default: the annotation's folder)")


@dataclass
class DecodeOptions(Options):
    """frames and decoding"""

    prompt_style: Literal[tuple(PROMPT_STYLES)] = opt(
        "prompt: paper (the Video-OPD template, 'start to end'), timelens or time-r1 (those evaluations' own)",
        "paper",
        run_defining=True,
        aliases=("--prompt",),
    )
    system_prompt_from_data: bool = opt(
        "show a query the system prompt its data file gives (ms-swift format lines), where it gives one, instead of "
        "the prompt style's own",
        False,
        run_defining=True,
    )
    # None: what the (student) checkpoint records it was trained with (DecodeConfig.for_processor), else Qwen's
    fps: float | None = opt(
        "frames sampled per second (default: the model's recorded setting, else 2)", gt=0, run_defining=True
    )
    max_frames: int | None = opt(
        "at most this many frames per video (default: the model's recorded setting, else 768)", gt=0, run_defining=True
    )
    min_pixels: int | None = opt(
        "min pixels per frame (default: the model's recorded setting, else 128 x (patch x merge)^2)",
        gt=0,
        run_defining=True,
    )
    max_pixels: int | None = opt(
        "max pixels per frame (default: the model's recorded setting, else 768 x (patch x merge)^2)",
        gt=0,
        run_defining=True,
    )
    total_pixels: int | None = opt(
        "pixel budget of all frames of a video together (default: the model's recorded "
        "setting, else 115200 x (patch x merge)^2)",
        gt=0,
        run_defining=True,
    )
    max_new_tokens: int = opt(
        "max answer tokens per generation (decoding of evaluations is greedy)", 64, gt=0, run_defining=True
    )
    dataloader_num_workers: int = opt("DataLoader workers decoding videos (0: in this process)", 0, ge=0)

    @property
    def system_prompt_setting(self) -> Any:
        """The collators' and evaluate()'s ``system_prompt``: each record's own
        (``--system-prompt-from-data``), else the prompt style's."""
        return DATA_SYSTEM if self.system_prompt_from_data else STYLE_DEFAULT


@dataclass
class ModelOptions(Options):
    """model"""

    device: str | None = opt(
        "device (default: cuda if available, else cpu; under accelerate launch, the process's device)"
    )
    dtype: Literal[DTYPES] = opt(
        "weights' dtype: auto (bf16 on CUDA, fp32 on CPU), bfloat16, float16 or float32", "auto", run_defining=True
    )
    attn_implementation: str | None = opt(
        "transformers attention, e.g. sdpa or flash_attention_2 (default: "
        "flash_attention_2 on CUDA when flash-attn is installed, else sdpa)"
    )
    gather_for_generation: bool = opt(
        "under FSDP2, gather the model's full weights once per generate call (rollouts, evaluation) and keep them "
        "until it ends: one all-gather per FSDP unit per call, and the full model in memory meanwhile (16 GB for an "
        "8B model in bf16); false: gather each unit while it runs, for every generated token (memory stays sharded)",
        True,
    )


@dataclass
class LoggingOptions(Options):
    """logging"""

    progress: bool = opt("show progress bars", True)


@dataclass
class OptimOptions(Options):
    """optimisation"""

    gradient_checkpointing: bool = opt("activation checkpointing of the trained model", True)
    train_vision: bool = opt("also train the vision tower (otherwise frozen)", False, run_defining=True)
    learning_rate: float = opt("peak AdamW learning rate", 1e-6, gt=0, run_defining=True)
    vision_lr: float | None = opt(
        "peak learning rate of the vision tower when trained (default: --learning-rate)", gt=0, run_defining=True
    )
    lr_scheduler_type: Literal["constant", "cosine"] = opt(
        "constant (after the linear warm-up), or cosine (linear warm-up then cosine decay to learning_rate * "
        "min_lr_ratio)",
        "constant",
        run_defining=True,
    )
    warmup_steps: int = opt("linear warm-up steps", 0, ge=0, run_defining=True)
    min_lr_ratio: float = opt("cosine decay floor as a fraction of --learning-rate", 0.1, ge=0, le=1, run_defining=True)
    adam_beta2: float = opt("AdamW beta2", 0.999, ge=0, lt=1, run_defining=True)
    weight_decay: float = opt("AdamW weight decay (matrices only)", 0.0, ge=0, run_defining=True)
    max_grad_norm: float = opt("gradient clipping (0: off)", 1.0, ge=0, run_defining=True)
    max_skipped_steps: int = opt(
        "optimizer steps whose loss or gradients are NaN/inf on any process are skipped by every process (weights, "
        "optimizer and schedule unchanged) and counted; stop the run when more than this many in a row are "
        "skipped (0: at the first)",
        10,
        ge=0,
    )
    master_weights: Literal["auto", "fp32", "none"] = opt(
        "fp32 master copies of the trainable weights for the optimizer, one process or DDP: auto (when the model "
        "is bf16/fp16, so that updates of lr ~1e-6 are not rounded away), fp32 or none. Under FSDP2 its "
        "mixed-precision policy keeps fp32 sharded masters instead",
        "auto",
        run_defining=True,
    )
    per_device_train_batch_size: int = opt("prompts per micro-batch and process", 1, gt=0, run_defining=True)
    gradient_accumulation_steps: int = opt(
        "micro-batches per optimizer step (effective batch = "
        "per_device_train_batch_size * gradient_accumulation_steps * processes)",
        1,
        gt=0,
        run_defining=True,
    )
    max_steps: int = opt(
        "optimizer steps (with --rounds: the curriculum's rounds x steps per round, which a "
        "--max-steps given must equal)",
        100,
        gt=0,
    )
    time_budget_s: float = opt(
        "also stop after the optimizer step during which the run's training time (steps, "
        "not evaluations) reaches this many seconds, evaluating and saving as at the end "
        "(0: no limit)",
        0.0,
        ge=0,
    )
    seed: int = opt("random seed", 0, run_defining=True)


@dataclass
class EvalOptions(Options):
    """held-out evaluation during training"""

    eval_data: str | None = opt("held-out annotation file, scored as python -m videoopd.eval scores it")
    eval_steps: int = opt("evaluate on --eval-data every K steps (0: only at the end)", 0, ge=0)
    eval_on_start: bool = opt("also evaluate on --eval-data before the first step (step 0)", True)
    eval_limit: int | None = opt("evaluate the first N held-out queries", gt=0)
    per_device_eval_batch_size: int = opt("prompts per evaluation generate call (per process)", 4, gt=0)


@dataclass
class CheckpointOptions(Options):
    """output and checkpointing"""

    output_dir: str = opt("run folder: config.yaml, metrics.jsonl, eval_*.json, final/", "runs/opd")
    save_final: bool = opt("save the trained model (and processor) to OUTPUT_DIR/final", True)
    save_best: bool = opt("save the model with the best held-out mIoU so far to OUTPUT_DIR/best", False)
    save_steps: int = opt(
        "write a resumable checkpoint to OUTPUT_DIR/checkpoints/step-{K} every K steps, and one "
        "at the end (0: only when stopped by SIGTERM/SIGINT)",
        0,
        ge=0,
    )
    save_total_limit: int = opt("keep the newest N checkpoints (0: all)", 0, ge=0)
    resume_from_checkpoint: str | None = opt(
        "continue from a checkpoint folder, or 'auto': the newest complete "
        "checkpoint in OUTPUT_DIR (a fresh start when there is none)"
    )
    resume_override: bool = opt(
        "resume even where the config differs from the checkpoint's on what changes the "
        "run (models, lr, batch, objective, ...)",
        False,
    )
    overwrite: bool = opt("start fresh in a non-empty OUTPUT_DIR, replacing what is there", False)

    def validate(self) -> None:
        super().validate()
        if self.resume_from_checkpoint is not None and self.overwrite:
            raise ConfigError("--resume-from-checkpoint and --overwrite contradict each other: choose one")


@dataclass
class LoraOptions(Options):
    """LoRA (peft)"""

    lora_r: int = opt("LoRA rank (0: train the full weights)", 0, ge=0, run_defining=True)
    lora_alpha: float | None = opt("LoRA alpha (default: 2 * --lora-r)", gt=0, run_defining=True)
    lora_dropout: float = opt("LoRA dropout", 0.0, ge=0, lt=1, run_defining=True)
    lora_target_modules: str = opt(
        "comma-separated module names given adapters, inside the language model only (the "
        "vision tower and LM head stay frozen)",
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        run_defining=True,
    )
    merge_lora: bool = opt(
        "with LoRA: write merged weights (a plain HF model) to final/ and best/ instead of the adapter", False
    )

    def validate(self) -> None:
        super().validate()
        if self.lora_r:
            if not [t for t in self.lora_target_modules.split(",") if t.strip()]:
                raise ConfigError("--lora-target-modules names no module")
            if getattr(self, "train_vision", False):
                raise ConfigError("--train-vision with LoRA is not supported: adapters go into the language model only")
        elif self.merge_lora:
            raise ConfigError("--merge-lora needs --lora-r > 0")


@dataclass
class DistributedOptions(Options):
    """distributed launch"""

    # transformers' TrainingArguments.ddp_timeout (1800 s there). 600 s: the longest wait one process has on
    # another in a healthy run is a main-process write (final/ or best/ weights, ~15 GB at 7B: 1-2 min) or one
    # process's slower generation or evaluation batch; 600 s leaves several times that and is torch's own NCCL
    # default, while a process that hangs costs every GPU 10 minutes, not hours.
    ddp_timeout: int = opt(
        "seconds a process waits in a collective (all-reduce, barrier, ...) for the others "
        "before the launch fails (torch.distributed's process-group timeout)",
        600,
        gt=0,
        aliases=("--ddp_timeout",),
    )


# accelerate's trackers (the names transformers' report_to takes)
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")


@dataclass
class TrackingOptions(Options):
    """logging"""

    report_to: str = opt(
        "where the step and evaluation rows go besides metrics.jsonl, as transformers' report_to: "
        "none, all (every tracker installed) or comma-separated accelerate trackers ("
        + ", ".join(TRACKERS)
        + "); TensorBoard writes OUTPUT_DIR/tensorboard",
        "none",
    )

    @property
    def trackers(self) -> list[str]:
        """``report_to`` as a list of accelerate tracker names (empty for none)."""
        names = [name.strip() for name in self.report_to.split(",") if name.strip()]
        return [] if names == ["none"] else names

    def validate(self) -> None:
        super().validate()
        unknown = [name for name in self.trackers if name not in (*TRACKERS, "all")]
        if unknown or (len(self.trackers) > 1 and "all" in self.trackers):
            raise ConfigError(
                f"--report-to must be none, all or names from {', '.join(TRACKERS)}, got {self.report_to!r}"
            )


@dataclass
class RunOptions(
    DistributedOptions,
    TrackingOptions,
    LoggingOptions,
    LoraOptions,
    CheckpointOptions,
    EvalOptions,
    OptimOptions,
    ModelOptions,
    DecodeOptions,
    AnnotationOptions,
):
    """data

    What every training command (OPD, GRPO, SFT) shares: one loop reads these."""

    train_data: str | None = opt(
        "training annotation file (Charades-STA, ActivityNet, TimeLens, jsonl)", run_defining=True
    )


def run_defining_options(cfg: Any) -> tuple[str, ...]:
    """The options of ``cfg`` a resumed run must agree on (declared with ``run_defining=True``)."""
    return tuple(f.name for f in dataclasses.fields(cfg) if f.metadata.get("run_defining"))


def warn_about_schedule(cfg: OptimOptions, prog: str) -> None:
    """Say (on stderr, once under a launch) when the learning rate never reaches its peak
    ``--learning-rate`` because the run ends inside the warm-up."""
    if cfg.warmup_steps > cfg.max_steps and os.environ.get("RANK", "0") == "0":
        print(
            f"{prog}: warning: --max-steps {cfg.max_steps} ends inside --warmup-steps {cfg.warmup_steps}: the "
            f"learning rate rises to {cfg.learning_rate * cfg.max_steps / cfg.warmup_steps:g} and never reaches "
            f"--learning-rate {cfg.learning_rate:g}",
            file=sys.stderr,
        )


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
