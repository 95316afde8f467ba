"""Resumable checkpoints of a run, and the run folder's life cycle (fresh, resumed, overwritten).

A checkpoint is ``OUTPUT_DIR/checkpoints/step-{K}/``:

- ``accelerate`` ``save_state`` output: optimizer, LR scheduler, every process's RNG states
  (python, numpy, torch, CUDA), fp32 master weights when the loop keeps them, and the student:
  on one process or DDP as a Hugging Face folder ``model/`` (``save_pretrained``: full weights,
  or the adapter under LoRA, plus the processor), under FSDP2 as the engine's sharded
  ``torch.distributed.checkpoint`` folder (every process writes its own shards; nothing is
  gathered on one process);
- ``trainer_state.json``: step, data position (epoch, batches drawn in it), best held-out mIoU,
  the last evaluated step, the curriculum's current selection and round records, the process
  count, the model's signature and the resolved config.

It is written as ``.step-{K}.partial`` and renamed when complete, ``trainer_state.json`` last:
a folder named ``step-{K}`` with that file is complete, whatever happened while saving.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from videoopd.algo.objectives import DEPRECATED_REDUCTIONS
from videoopd.qwen.lora import is_lora
from videoopd.training.config import RENAMED, ConfigError, run_defining_options

__all__: list[str] = []  # nothing here is promised: docs/api.md

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
MODEL_FOLDER = "model"
_STEP_NAME = re.compile(r"^step-(\d+)$")

# A command above the loop that writes more names them (prepare_run_folder's extra_artifacts).
RUN_ARTIFACTS = (
    "config.yaml",
    "metrics.jsonl",
    "rounds.jsonl",
    "summary.json",
    "curves.png",
    "final",
    "best",
    "checkpoints",
    "curriculum",
    "tensorboard",
)


@dataclass
class TrainerState:
    """The loop's counters, saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_mIoU: float | None = None
    best_step: int | None = None
    last_eval_step: int | None = None
    processes: int = 1
    train_time_s: float = 0.0  # seconds spent in optimizer steps so far (the time budget's clock)
    skipped_steps: int = 0  # optimizer steps skipped for non-finite gradients or loss (training.guard)
    skipped_in_a_row: list[dict[str, Any]] = field(default_factory=list)  # the current run of them
    round_indices: list[int] | None = None  # the curriculum's current selection (pool indices)
    round_records: list[dict[str, Any]] = field(default_factory=list)  # one per curriculum round so far
    model_signature: str = ""
    config: dict[str, Any] = field(default_factory=dict)


def model_signature(model: torch.nn.Module) -> str:
    """A digest of the parameter names, shapes and dtypes (of the model before the engine
    wraps it): checkpoints of another architecture, size or adapter layout differ."""
    digest = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
    return digest.hexdigest()[:16]


def complete_checkpoints(out_dir: Path) -> list[Path]:
    """The complete checkpoints of a run folder, oldest first."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_NAME.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None."""
    done = complete_checkpoints(out_dir)
    return done[-1] if done else None


def read_state(folder: Path) -> TrainerState:
    """``folder``'s trainer state; ConfigError for a missing, partial or unreadable checkpoint."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--resume-from-checkpoint: checkpoint folder not found: {folder}")
    state_file = folder / STATE_FILE
    if not state_file.is_file():
        raise ConfigError(
            f"--resume-from-checkpoint: {folder} is not a complete checkpoint (no {STATE_FILE}: killed "
            "while saving, or not a videoopd checkpoint); --resume-from-checkpoint auto picks the newest "
            "complete one"
        )
    try:
        data = json.loads(state_file.read_text(encoding="utf-8"))
        return TrainerState(**data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--resume-from-checkpoint: unreadable {state_file}: {exc}") from None


def config_differences(saved: dict[str, Any], cfg: Any) -> list[str]:
    """The run-defining options (declared ``run_defining``: what changes what a run computes;
    max_steps, evaluation, saving and output options may change) on which ``cfg`` differs from
    a checkpoint's saved config, as "name: saved -> now"."""
    now = dataclasses.asdict(cfg)
    # a checkpoint saved before the options took their HF / TRL names: its keys under the new names
    saved = {
        **{next((n for n in RENAMED.get(key, ()) if n in now), key): value for key, value in saved.items()},
        **{key: value for key, value in saved.items() if key in now},
    }
    if saved.get("reduction") in DEPRECATED_REDUCTIONS:
        saved["reduction"] = DEPRECATED_REDUCTIONS[saved["reduction"]]
    return [
        f"{name}: {saved[name]!r} -> {now[name]!r}"
        for name in run_defining_options(cfg)
        if name in now and name in saved and saved[name] != now[name]
    ]


def prepare_run_folder(cfg: Any, accelerator: Any, extra_artifacts: Sequence[str] = ()) -> Path | None:
    """Check the run folder against ``cfg.resume_from_checkpoint`` / ``cfg.overwrite`` before any work; return the
    checkpoint to resume from (None: a fresh start).

    - ``--resume-from-checkpoint PATH``: PATH must be a complete checkpoint whose config agrees with ``cfg`` on
      :func:`config_differences` (unless ``--resume-override``);
    - ``--resume-from-checkpoint auto``: the newest complete checkpoint of OUTPUT_DIR, or a fresh start when
      OUTPUT_DIR holds no earlier run (an earlier run without a checkpoint, finished or stopped
      early, is refused: starting again would replace its files);
    - fresh start: OUTPUT_DIR must hold no earlier run, unless ``--overwrite`` (which removes
      the earlier run's files, :data:`RUN_ARTIFACTS` and ``extra_artifacts``, and nothing else).

    Raises ConfigError. Every process checks, then waits for the others (a fresh start); the main
    process removes files.
    """
    out_dir = Path(cfg.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--output-dir {out_dir} is a file, not a folder")
    if cfg.resume_from_checkpoint is not None:
        resume = cfg.resume_from_checkpoint
        folder = latest_checkpoint(out_dir) if resume == "auto" else Path(resume)
        if folder is not None:
            state = read_state(folder)
            differences = config_differences(state.config, cfg)
            if differences and not cfg.resume_override:
                raise ConfigError(
                    f"--resume-from-checkpoint {folder}: the config differs from the checkpoint's on "
                    + "; ".join(differences)
                    + " (pass --resume-override to resume anyway)"
                )
            if state.processes != accelerator.num_processes and not cfg.resume_override:
                raise ConfigError(
                    f"--resume-from-checkpoint {folder}: saved by {state.processes} process(es), "
                    f"resumed on {accelerator.num_processes}: the data order and sharded state would "
                    "not continue exactly (pass --resume-override to resume anyway)"
                )
            return folder
    artifacts = (*RUN_ARTIFACTS, *extra_artifacts)
    earlier = [name for name in artifacts if (out_dir / name).exists()] if out_dir.is_dir() else []
    earlier += sorted(p.name for p in out_dir.glob("eval_*.json*")) if out_dir.is_dir() else []
    if earlier and not cfg.overwrite:
        raise ConfigError(earlier_run_refusal(out_dir, earlier, cfg.resume_from_checkpoint))
    if earlier and accelerator.is_main_process:
        for name in earlier:
            path = out_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    # every process has checked before any writes: else a slow one finds the main one's first files
    accelerator.wait_for_everyone()
    return None


def earlier_run_refusal(out_dir: Path, earlier: Sequence[str], resume: str | None) -> str:
    """Why a run may not start in ``out_dir``, which holds the files ``earlier``, offering only
    the ways out that work for that folder (``--resume-from-checkpoint auto`` only where there is
    a checkpoint)."""
    shown = ", ".join(earlier[:4]) + (", ..." if len(earlier) > 4 else "")
    has_checkpoint = latest_checkpoint(out_dir) is not None
    if (out_dir / "summary.json").exists():
        kind = "a finished run"
    else:
        kind = "an earlier run"
    if not has_checkpoint:
        kind += " that saved no checkpoint"
    prefix = f"--resume-from-checkpoint {resume}: " if resume is not None else ""
    ways = ["resume it with --resume-from-checkpoint auto"] if has_checkpoint else []
    ways += ["replace it with --overwrite", "choose another --output-dir"]
    return (
        f"{prefix}--output-dir {out_dir} holds {kind} ({shown}); nothing was changed: "
        f"{', '.join(ways[:-1])} or {ways[-1]}"
    )


def install_model_hooks(accelerator: Any, processor: Any) -> None:
    """Make ``accelerator.save_state`` / ``load_state`` write and read the student (one process
    or DDP) as a Hugging Face folder ``model/`` (``save_pretrained``: the adapter under LoRA)
    instead of accelerate's own weights file; FSDP2's sharded save is left to accelerate."""

    def save_hook(models: list[Any], weights: list[Any], output_dir: str) -> None:
        if not weights:  # FSDP2: the engine has written the shards
            return
        if len(models) != 1:
            raise RuntimeError(f"expected the student as the one prepared model, got {len(models)} models")
        if accelerator.is_main_process:
            folder = Path(output_dir) / MODEL_FOLDER
            model = accelerator.unwrap_model(models[0])
            # the model's own key names, which load_model_folder reads back as they are: transformers
            # would write a family's older names (Qwen2.5-VL's `visual.*`, not `model.visual.*`)
            own_names = {} if is_lora(model) else {"save_original_format": False}
            model.save_pretrained(folder, state_dict=model.state_dict(), **own_names)
            processor.save_pretrained(folder)
        weights.clear()

    def load_hook(models: list[Any], input_dir: str) -> None:
        if not models:  # FSDP2: the engine reads the shards
            return
        folder = Path(input_dir) / MODEL_FOLDER
        for wrapped in models:
            load_model_folder(accelerator.unwrap_model(wrapped), folder)
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def load_model_folder(model: torch.nn.Module, folder: Path) -> None:
    """Load a checkpoint's ``model/`` (``save_pretrained`` output: full weights, or a peft
    adapter into a PeftModel) into ``model`` in place; RuntimeError when it does not fit."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("adapter_model.safetensors" if is_lora(model) else "model*.safetensors"))
    if not files:
        raise RuntimeError(f"{folder}: no {'adapter' if is_lora(model) else 'model'} weights (*.safetensors)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    if is_lora(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, state)
        if result.unexpected_keys:
            raise RuntimeError(f"{folder}: adapter weights the model lacks: {result.unexpected_keys[:5]}")
        return
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise RuntimeError(f"{folder}: weights the model lacks: {unexpected[:5]}")
    # save_pretrained leaves out weights tied to another one (a tied LM head): those are loaded
    loaded = {p.data_ptr() for k, p in model.state_dict().items() if k in state}
    untied = [k for k in missing if model.state_dict()[k].data_ptr() not in loaded]
    if untied:
        raise RuntimeError(f"{folder}: weights missing from the checkpoint: {untied[:5]}")


def save_checkpoint(accelerator: Any, state: TrainerState, out_dir: Path, keep: int = 0) -> Path:
    """Write checkpoint ``step-{state.step}`` (every process must call it); keep the newest
    ``keep`` (0: all). Returns its folder."""
    root = Path(out_dir) / CHECKPOINTS
    final = root / f"step-{state.step}"
    partial = root / f".step-{state.step}.partial"
    if accelerator.is_main_process:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = partial / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(state), indent=1, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, partial / STATE_FILE)
        if final.exists():  # the same step saved again (a resumed run stopped at once)
            shutil.rmtree(final)
        os.replace(partial, final)
        if keep:
            for old in complete_checkpoints(out_dir)[:-keep]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, folder: Path, signature: str) -> TrainerState:
    """Restore the prepared objects' states from ``folder`` (every process) and return its
    trainer state; ConfigError when the checkpoint is of another model."""
    state = read_state(folder)
    if state.model_signature and state.model_signature != signature:
        raise ConfigError(
            f"--resume-from-checkpoint {folder}: the checkpoint is of another model (parameter "
            "names/shapes differ "
            f"from the student's: signature {state.model_signature} vs {signature})"
        )
    accelerator.load_state(str(folder))
    return state
