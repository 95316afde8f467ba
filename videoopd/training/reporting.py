"""What a training run reports: the summary it returns, a step's metrics row, the held-out evaluation and the
saved model (Hugging Face format)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from videoopd.algo.objectives import Objective
from videoopd.evaluation.evaluate import evaluate
from videoopd.qwen.lora import merged_model
from videoopd.training.config import RunOptions
from videoopd.training.engine import PhaseTimer

__all__: list[str] = []  # nothing here is promised: docs/api.md


def evaluate_held_out(
    cfg: RunOptions, accelerator: Any, model: Any, processor: Any, records: list[Any], decode_config: Any, tag: str
) -> dict[str, float]:
    """``cfg.eval_limit`` of ``records`` evaluated on every process (split and gathered); the
    main process writes ``OUTPUT_DIR/eval_{tag}.json`` and its ``.predictions.jsonl``."""
    out_dir = Path(cfg.output_dir)
    metrics = evaluate(
        model,
        processor,
        records[: cfg.eval_limit] if cfg.eval_limit else records,
        decode_config=decode_config,
        prompt_style=cfg.prompt_style,
        batch_size=cfg.per_device_eval_batch_size,
        system_prompt=cfg.system_prompt_setting,
        max_new_tokens=cfg.max_new_tokens,
        predictions_path=out_dir / f"eval_{tag}.predictions.jsonl",
        on_video_error="report",
        progress=cfg.progress and accelerator.is_main_process,
        accelerator=accelerator,
        gather_weights=cfg.gather_for_generation,
    ).metrics
    if accelerator.is_main_process:
        (out_dir / f"eval_{tag}.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


def save_model(accelerator: Any, wrapper: Any, processor: Any, folder: Path, *, merge_lora: bool = False) -> None:
    """The model in Hugging Face format (full weights, also from FSDP2 shards; under LoRA the
    adapter, or with ``merge_lora`` the merged weights as a plain model) and its processor,
    written by the main process; every process must call it."""
    state_dict = accelerator.get_state_dict(wrapper)
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(wrapper)
        if merge_lora:
            merged_model(model, state_dict).save_pretrained(folder)
        else:
            model.save_pretrained(folder, state_dict=state_dict)
        processor.save_pretrained(folder)
    accelerator.wait_for_everyone()


@dataclasses.dataclass
class TrainSummary:
    """What a run produced, results only: ``steps`` (the logged rows, earlier attempts' included
    when resumed), ``evals`` ({step: held-out metrics}), ``best_mIoU`` and ``best_step`` (of the
    evaluations, earlier attempts' included), ``rounds`` (the curriculum's round records),
    ``checkpoint`` (the last one saved, or None) and ``stopped_by_time_budget`` (the step after
    which the time budget stopped the run, or None)."""

    steps: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    evals: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)
    best_mIoU: float | None = None
    best_step: int | None = None
    rounds: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    checkpoint: Path | None = None
    stopped_by_time_budget: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as ``summary.json`` holds them (``stopped_by_time_budget`` only when set)."""
        out = dataclasses.asdict(self)
        if out["stopped_by_time_budget"] is None:
            del out["stopped_by_time_budget"]
        return out


def step_row(
    step: int,
    objective: Objective,
    summed: dict[str, float],
    ranks: dict[str, list[float]],
    timer: PhaseTimer,
    *,
    lr: float,
    step_time: float,
    processes: int,
    time_s: float,
    train_time: float,
    skipped: bool,
) -> dict[str, Any]:
    """A step's row of ``metrics.jsonl`` from its reduced metrics (:func:`reduce_step_metrics`);
    ``skipped``: the guard skipped its update (:mod:`videoopd.training.guard`)."""
    return {
        "step": step,
        "loss": summed["loss"],
        **objective.summarize(summed),
        "lr": lr,
        "grad_norm": ranks["grad_norm"][0],  # the same on every process
        "tokens_per_s": summed.get("context_tokens", 0.0) / step_time,
        "step_time_s": step_time,
        **{f"time/{k}_s": v for k, v in timer.seconds().items()},
        "time/teacher_wait_s": max(ranks["teacher_wait_s"]) if "teacher_wait_s" in ranks else 0.0,
        "teacher_bytes": int(sum(ranks["teacher_bytes"])) if "teacher_bytes" in ranks else 0,
        "time/teacher_service_s": max(ranks["teacher_busy_s"]) if "teacher_busy_s" in ranks else 0.0,
        "peak_mem_mb": max(ranks["peak_mem_mb"]),
        "peak_mem_mb_per_rank": ranks["peak_mem_mb"],
        "skipped_videos": int(sum(ranks["skipped_videos"])),
        "skipped_step": float(skipped),
        "processes": processes,
        "time_s": time_s,
        "train_time_s": train_time,
    }
