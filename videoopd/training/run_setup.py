"""A run ready to step: :class:`PreparedRun` (the engine's objects, the run's state, data, metrics log and
results so far) and :func:`setup_run`, which builds it for :func:`videoopd.training.loop.train`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from videoopd.algo.objectives import Objective
from videoopd.qwen.lora import apply_lora
from videoopd.qwen.processing import record_preprocessing
from videoopd.training.checkpoint import (
    TrainerState,
    install_model_hooks,
    load_checkpoint,
    model_signature,
    save_checkpoint,
)
from videoopd.training.config import ConfigError, RunOptions
from videoopd.training.distributed import is_fsdp2
from videoopd.training.engine import DataStream, build_optimizer, lr_lambda
from videoopd.training.guard import note_step
from videoopd.training.metrics_log import MetricsLog
from videoopd.training.precision import MasterWeights
from videoopd.training.reporting import TrainSummary, evaluate_held_out, save_model

__all__: list[str] = []  # nothing here is promised: docs/api.md


@dataclasses.dataclass
class PreparedRun:
    """A run ready to step (:func:`setup_run`): the engine's objects, the run's position
    (``state``, saved in checkpoints), the data stream, the metrics log and progress bar of the
    main process (None on the others) and the results so far (``summary``). ``model`` is the
    trained model unwrapped (full parameters on one process or DDP, the FSDP2 module under
    FSDP2), ``wrapper`` the engine's."""

    cfg: RunOptions
    accelerator: Any
    wrapper: Any
    model: Any
    processor: Any
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: Any
    masters: MasterWeights | None
    state: TrainerState
    data: DataStream | None
    metrics_log: MetricsLog | None
    bar: Any
    summary: TrainSummary
    dataset: torch.utils.data.Dataset
    collator: Callable[[list[Any]], dict[str, Any]]
    eval_records: list[Any] | None
    decode_config: Any
    curriculum: Any
    log: Callable[[str], None]

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def stream(self, samples: torch.utils.data.Dataset, epoch: int = 0, batches_in_epoch: int = 0) -> DataStream:
        """Batches of ``samples`` in the run's shuffled, process-split order, from a position."""
        cfg = self.cfg
        loader = torch.utils.data.DataLoader(
            samples,
            batch_size=cfg.per_device_train_batch_size,
            shuffle=True,
            collate_fn=self.collator,
            num_workers=cfg.dataloader_num_workers,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        return DataStream(self.accelerator, self.accelerator.prepare(loader), epoch, batches_in_epoch, log=self.log)

    def starts_round(self, step: int) -> bool:
        return self.curriculum is not None and (step - 1) % self.curriculum.steps_per_round == 0

    def start_round(self, step: int) -> None:
        """Select the curriculum round's samples (recorded, and logged by the main process) and
        stream them from their start."""
        indices, record = self.curriculum.select(self.curriculum.round_of(step), self.model, self.processor)
        self.state.round_indices = indices
        self.state.round_records.append({"step": step, **record})
        if self.main:
            self.metrics_log.write({"step": step, **{k: v for k, v in record.items() if not isinstance(v, list)}})
            self.curriculum.write_rounds(Path(self.cfg.output_dir), self.state.round_records)
        self.data = self.stream(torch.utils.data.Subset(self.dataset, indices))

    def evaluation_due(self, step: int) -> bool:
        cfg = self.cfg
        return bool(self.eval_records) and (
            step == cfg.max_steps or (cfg.eval_steps > 0 and step % cfg.eval_steps == 0)
        )

    def evaluate_on_entry(self) -> None:
        """Before the first step: the evaluation before training (``eval_before``), or on resuming
        the evaluation a stop skipped."""
        step = self.state.step
        if self.eval_records and self.cfg.eval_on_start and step == 0:
            self.evaluate(0)
        elif step and self.evaluation_due(step) and self.state.last_eval_step != step:
            self.evaluate(step)

    def evaluate(self, step: int) -> None:
        """Evaluate on the held-out records (every process its share), keep the best (saved to
        ``best/`` with ``save_best``), log the metrics."""
        cfg, state, summary = self.cfg, self.state, self.summary
        m = evaluate_held_out(
            cfg, self.accelerator, self.model, self.processor, self.eval_records, self.decode_config, f"step{step}"
        )
        summary.evals[step] = m
        state.last_eval_step = step
        improved = state.best_mIoU is None or m["mIoU"] > state.best_mIoU
        if improved:
            state.best_mIoU, state.best_step = m["mIoU"], step
            summary.best_mIoU, summary.best_step = m["mIoU"], step
            if cfg.save_best:
                save_model(
                    self.accelerator,
                    self.wrapper,
                    self.processor,
                    Path(cfg.output_dir) / "best",
                    merge_lora=cfg.merge_lora,
                )
        if self.main:
            self.metrics_log.write({"step": step, **{f"eval/{k}": v for k, v in m.items()}})
            self.log(
                f"[eval step {step}] held-out mIoU {m['mIoU']:.2f}  R1@0.5 {m['R1@0.5']:.2f}  "
                f"R1@0.7 {m['R1@0.7']:.2f}" + ("  (best so far)" if improved else "")
            )

    def count_skipped(self, step: int, row: dict[str, Any], ids: list[str]) -> dict[str, Any]:
        """``row`` with the run's count of skipped steps (``skipped_steps``) and, when this step was
        skipped (:mod:`videoopd.training.guard`; every process agrees), the ids of the records it drew
        on every process (``skipped_records``). Raises
        :class:`videoopd.training.guard.TooManySkippedSteps` after ``max_skipped_steps`` in a row,
        once the row is written."""
        from accelerate.utils import gather_object

        skipped = bool(row.pop("skipped_step"))
        # only on a skipped step, which every process takes alike: one more collective, then
        records = list(dict.fromkeys(str(i) for i in gather_object(list(ids)))) if skipped else []
        try:
            note_step(self.state, step, skipped, records, self.cfg.max_skipped_steps)
        except FloatingPointError:
            self.record({**row, "skipped_steps": self.state.skipped_steps, "skipped_records": records})
            raise
        if skipped and self.main:
            self.log(
                f"step {step}: non-finite loss or gradients, step skipped on every process "
                f"({self.state.skipped_steps} skipped so far; records {', '.join(records)})"
            )
        return {**row, "skipped_steps": self.state.skipped_steps, **({"skipped_records": records} if skipped else {})}

    def record(self, row: dict[str, Any]) -> None:
        """Keep a step's row; the main process writes it to ``metrics.jsonl`` and shows it."""
        if not math.isfinite(row["loss"]) and "skipped_records" not in row:  # the guard skips such steps
            raise FloatingPointError(f"step {row['step']}: non-finite loss {row['loss']}")
        self.summary.steps.append(row)
        if not self.main:
            return
        self.metrics_log.write(row)
        # say what each number is per: the loss is normalised by the step's units, KL per token
        per = {"sequence_sum": "/seq", "mean": "/token"}.get(getattr(self.objective, "reduction", ""), "")
        labels = {"loss": f"loss{per}", "reverse_kl": "rkl/token", "reward": "reward/answer"}
        self.bar.set_postfix(
            {label: f"{row[k]:.4f}" for k, label in labels.items() if k in row}
            | {"tok_s": f"{row['tokens_per_s']:.0f}"}
        )
        self.bar.update(1)
        step = row["step"]
        if not self.cfg.progress and (step == 1 or step % 10 == 0 or step == self.cfg.max_steps):
            self.log(
                f"step {step}: loss {row['loss']:.4f}"
                + (f"  reverse KL {row['reverse_kl']:.4f}" if "reverse_kl" in row else "")
                + f"  {row['tokens_per_s']:.0f} tok/s  {row['step_time_s']:.1f}s"
            )

    def save_checkpoint(self) -> None:
        self.summary.checkpoint = save_checkpoint(
            self.accelerator, self.state, Path(self.cfg.output_dir), self.cfg.save_total_limit
        )

    def save_final(self) -> None:
        save_model(
            self.accelerator,
            self.wrapper,
            self.processor,
            Path(self.cfg.output_dir) / "final",
            merge_lora=self.cfg.merge_lora,
        )

    def close(self) -> None:
        self.bar.close()
        if self.metrics_log is not None:
            self.metrics_log.close()


def setup_run(
    cfg: RunOptions,
    accelerator: Any,
    model: torch.nn.Module,
    processor: Any,
    objective: Objective,
    dataset: torch.utils.data.Dataset,
    collator: Callable[[list[Any]], dict[str, Any]],
    eval_records: list[Any] | None = None,
    *,
    decode_config: Any = None,
    resume_from: Path | None = None,
    curriculum: Any = None,
    log: Callable[[str], None] = print,
) -> PreparedRun:
    """Everything :func:`train` steps with (its arguments are :func:`train`'s): the seed, LoRA
    (``cfg.lora_r``), the optimizer over fp32 masters or the parameters, the engine's prepared
    model, optimizer and schedule, the run's state (from ``resume_from`` when given), the data
    (none yet when a curriculum round is to select it), the metrics log (with the rows of the
    attempts before a resume) and the progress bar."""
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    set_seed(cfg.seed)
    if accelerator.device.type == "cuda":  # this run's peak, not an earlier one's in the same process
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    if cfg.lora_r:
        try:
            model = apply_lora(
                model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, targets=cfg.lora_target_modules
            )
        except ValueError as exc:
            raise ConfigError(f"--lora-target-modules: {exc}") from None
    signature = model_signature(model)  # of the model as built, before the engine wraps it
    trainable = [p for p in model.parameters() if p.requires_grad]
    masters = None if is_fsdp2(accelerator) else MasterWeights.for_config(trainable, cfg.master_weights)
    optimizer = build_optimizer(model, cfg, masters)
    if curriculum is not None and cfg.max_steps != curriculum.total_steps:
        raise ConfigError(f"max_steps {cfg.max_steps} differs from the curriculum's {curriculum.total_steps} steps")
    model.train()
    wrapper, optimizer = accelerator.prepare(model, optimizer)
    # After prepare: under FSDP2 the optimizer now holds the sharded parameters.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    accelerator.register_for_checkpointing(scheduler)
    if masters is not None:
        accelerator.register_for_checkpointing(masters)
    if decode_config is not None:  # saved with the model: eval and sft then sample frames alike
        record_preprocessing(processor, decode_config)
    install_model_hooks(accelerator, processor)
    state = TrainerState(processes=accelerator.num_processes, model_signature=signature, config=dataclasses.asdict(cfg))
    if resume_from is not None:
        saved = load_checkpoint(accelerator, resume_from, signature)
        state = dataclasses.replace(saved, processes=state.processes, model_signature=signature, config=state.config)
        log(f"resumed from {resume_from} at step {state.step}")
    main = accelerator.is_main_process
    metrics_log = (
        MetricsLog(
            Path(cfg.output_dir),
            resume_step=state.step if resume_from is not None else None,
            accelerator=accelerator,
            config=dataclasses.asdict(cfg),
        )
        if main
        else None
    )
    summary = TrainSummary(best_mIoU=state.best_mIoU, best_step=state.best_step, rounds=state.round_records)
    for row in metrics_log.kept if metrics_log is not None else []:
        if any(k.startswith("eval/") for k in row):
            summary.evals[row["step"]] = {k[5:]: v for k, v in row.items() if k.startswith("eval/")}
        elif "loss" in row:
            summary.steps.append(row)
    run = PreparedRun(
        cfg=cfg,
        accelerator=accelerator,
        wrapper=wrapper,
        model=accelerator.unwrap_model(wrapper),
        processor=processor,
        objective=objective,
        optimizer=optimizer,
        scheduler=scheduler,
        masters=masters,
        state=state,
        data=None,
        metrics_log=metrics_log,
        bar=None,
        summary=summary,
        dataset=dataset,
        collator=collator,
        eval_records=eval_records,
        decode_config=decode_config,
        curriculum=curriculum,
        log=log,
    )
    if curriculum is None or state.round_indices is not None:
        samples = dataset if curriculum is None else torch.utils.data.Subset(dataset, state.round_indices)
        run.data = run.stream(samples, state.epoch, state.batches_in_epoch)
    run.bar = tqdm(
        total=cfg.max_steps,
        initial=state.step,
        desc=objective.name,
        unit="step",
        disable=not (cfg.progress and main),
        dynamic_ncols=True,
    )
    return run
