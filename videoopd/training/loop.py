"""The one training loop: OPD and SFT (any :class:`videoopd.algo.objectives.Objective`), on one
process or many (accelerate: DDP, FSDP2).

Read :func:`train`: :func:`setup_run` prepares the run (LoRA, optimizer, schedule, engine,
state, data, metrics log) as one :class:`PreparedRun`, then each optimizer step runs
:func:`optimizer_step`:

1. ``rollout``: the objective generates for the step's ``gradient_accumulation_steps`` micro-batches together
   (OPD: the student samples one answer per prompt, in as few generate calls as
   ``--rollout-batch-size`` allows; SFT: nothing);
2. ``teacher``: the objective scores them (OPD: the frozen teacher, one forward per generate
   call; SFT: nothing); a teacher elsewhere (``--teacher-placement service``) only receives
   each micro-batch here, and the student waits for each micro-batch's score right before its
   forward (``time/teacher_wait_s``, the slowest process's; ``time/teacher_service_s``: the
   service's time on this process's micro-batches; ``teacher_bytes``: what the scores brought);
3. ``student``: forward + backward of each micro-batch, the loss computed inside the
   student's forward (:func:`videoopd.qwen.models.policy_head_forward`) and divided by the
   step's units (sequences or tokens) summed over micro-batches *and processes*, gradients
   synchronised on the last micro-batch only;
4. ``optimizer``: clip, AdamW step, schedule step; a step whose loss or gradients are NaN/inf
   on any process is skipped by every process and counted (:mod:`videoopd.training.guard`);

then logs its row (:func:`step_row`; one collective + one host sync), evaluates and saves
(:class:`PreparedRun`'s methods). :func:`train` returns the results, a :class:`TrainSummary`.
Only the main process writes files and shows progress; every process evaluates its share of
the held-out set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from videoopd.algo.objectives import GenerationContext, MicroBatch, Objective
from videoopd.evaluation.evaluate import evaluate
from videoopd.qwen.lora import apply_lora, merged_model
from videoopd.qwen.models import policy_head_forward
from videoopd.qwen.processing import record_preprocessing
from videoopd.training.checkpoint import (
    TrainerState,
    install_model_hooks,
    load_checkpoint,
    model_signature,
    save_checkpoint,
)
from videoopd.training.config import ConfigError, RunOptions
from videoopd.training.distributed import is_fsdp2, peak_memory_mb, reduce_step_metrics, unsupported_engine
from videoopd.training.guard import agreed_grad_norm, flag_nonfinite_loss, note_step, step_if_finite
from videoopd.training.metrics_log import MetricsLog
from videoopd.training.precision import MasterWeights
from videoopd.training.preemption import Preempted, StopSignals

__all__: list[str] = []  # nothing here is promised: docs/api.md


def make_accelerator(cfg: RunOptions, mixed_precision: str | None = None) -> Any:
    """The run's ``accelerate.Accelerator``: the launch's engine (``accelerate launch`` config:
    DDP, FSDP2), or one process on ``cfg.device``'s kind of device. ``mixed_precision``
    ("no", "bf16", ...) overrides the launch's."""
    from accelerate import Accelerator, PartialState
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import DataLoaderConfiguration

    cpu = cfg.device is not None and torch.device(cfg.device).type == "cpu"
    installed = [str(t) for t in get_available_trackers()]
    missing = [name for name in cfg.trackers if name != "all" and name not in installed]
    if missing:  # accelerate would leave them out without a word
        raise ConfigError(
            f"--report-to {cfg.report_to}: {', '.join(missing)} is not installed here "
            f"(installed trackers: {', '.join(installed) or 'none'})"
        )
    # A process that waits on a dead or hung one fails after --ddp_timeout, not hours. Given to the process
    # state, which starts the process group: accelerate's InitProcessGroupKwargs would drop a timeout equal to
    # its NCCL default (600 s) and gloo would then wait torch's 30 minutes.
    PartialState(cpu=cpu, timeout=timedelta(seconds=cfg.ddp_timeout))
    # The seedable sampler orders each epoch by (seed, epoch) alone: a resumed run can find its place.
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        log_with=cfg.trackers or None,
        project_dir=cfg.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
    )
    enable_fsdp_on_cpu(accelerator)
    reason = unsupported_engine(accelerator)
    if reason is not None:
        raise ConfigError(reason)
    return accelerator


def enable_fsdp_on_cpu(accelerator: Any) -> None:
    """Honour an FSDP launch config on CPU processes (gloo).

    accelerate turns FSDP on only over accelerators and falls back to plain multi-CPU data
    parallelism otherwise, while torch's ``fully_shard`` runs on the CPU too. So that an FSDP2
    launch behaves the same everywhere (and is tested on CPUs), set the state accelerate
    would have set: distributed type FSDP with the launch's FSDP plugin.
    """
    import os

    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if (
        os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        and accelerator.distributed_type == DistributedType.MULTI_CPU
    ):
        plugin = FullyShardedDataParallelPlugin()  # from the launch's FSDP_* environment
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
        accelerator.state.fsdp_plugin = plugin
        # AcceleratorState re-reads the process state each time it is constructed: set both
        PartialState().distributed_type = DistributedType.FSDP
        accelerator.state.distributed_type = DistributedType.FSDP


def lr_lambda(cfg: RunOptions) -> Callable[[int], float]:
    """The schedule as a factor of the peak lr at optimizer step ``i`` (0-based, as LambdaLR
    counts): linear warm-up over ``warmup_steps``, then constant or cosine decay to
    ``min_lr_ratio`` at ``max_steps``."""

    def factor(i: int) -> float:
        step = i + 1
        if cfg.warmup_steps and step <= cfg.warmup_steps:
            return step / cfg.warmup_steps
        if cfg.lr_scheduler_type == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_optimizer(model: torch.nn.Module, cfg: RunOptions, masters: MasterWeights | None) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (their fp32 masters when given), in groups:
    (vision tower or not) x (matrices, decayed, or not)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    visual = getattr(getattr(model, "model", None), "visual", None)
    vision_ids = {id(p) for p in visual.parameters()} if visual is not None else set()
    groups = []
    for is_vision in (False, True):
        peak = (cfg.vision_lr or cfg.learning_rate) if is_vision else cfg.learning_rate
        for decayed in (True, False):
            members = [p for p in params if (id(p) in vision_ids) == is_vision and (p.ndim >= 2) == decayed]
            if members:
                stepped = [masters.master_of(p) for p in members] if masters is not None else members
                groups.append({"params": stepped, "lr": peak, "weight_decay": cfg.weight_decay if decayed else 0.0})
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, cfg.adam_beta2))


class DataStream:
    """Endless batches of a prepared DataLoader, epoch after epoch, that knows its position
    (``epoch``, ``batches_in_epoch`` drawn) and can start from one: the order is accelerate's
    seedable sampler's (a function of the seed and the epoch), and a resumed stream skips the
    epoch's first batches at the sampler (no video is decoded for them). Videos that fail to
    decode are left out of their batch by the collator; they are reported here once each (file
    and error) and kept in :attr:`failed`; a batch with none left is skipped (and counted in the
    position); a whole epoch without a decodable video stops the run with an error."""

    def __init__(
        self,
        accelerator: Any,
        loader: Any,
        epoch: int = 0,
        batches_in_epoch: int = 0,
        log: Callable[[str], None] = print,
    ):
        self.accelerator, self.loader = accelerator, loader
        self.epoch, self.batches_in_epoch = epoch, batches_in_epoch
        self.iterator: Iterator[dict[str, Any]] | None = None
        self.failed: dict[str, str] = {}  # record id -> error, this process's
        self.log = log

    def __iter__(self) -> DataStream:
        return self

    def __next__(self) -> dict[str, Any]:
        empty_epochs = 0
        while True:
            if self.iterator is None:
                source = (
                    self.accelerator.skip_first_batches(self.loader, self.batches_in_epoch)
                    if self.batches_in_epoch
                    else self.loader
                )
                source.set_epoch(self.epoch)
                self.iterator = iter(source)
            try:
                batch = next(self.iterator)
            except StopIteration:
                self.epoch, self.batches_in_epoch, self.iterator = self.epoch + 1, 0, None
                empty_epochs += 1
                if empty_epochs > 1:
                    examples = "; ".join(f"{k}: {v}" for k, v in list(self.failed.items())[:3])
                    raise ConfigError(
                        f"no decodable video in a whole epoch of the training data ({len(self.failed)} "
                        f"failed, e.g. {examples})"
                    ) from None
                continue
            self.batches_in_epoch += 1
            for record, error in batch.get("failed", []):
                if record.id not in self.failed:
                    self.failed[record.id] = error
                    self.log(f"warning: training query {record.id} left out: {error}")
            if batch["inputs"] is not None:
                return batch


class PhaseTimer:
    """Wall time of the phases of a step. On CUDA it records events (read after the step's one
    host sync), so it adds no synchronisation; on CPU it reads the clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: dict[str, tuple[Any, Any]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
        else:
            start = time.perf_counter()
            yield
            end = time.perf_counter()
        self.marks[name] = (start, end)

    def seconds(self) -> dict[str, float]:
        if self.cuda:
            return {k: s.elapsed_time(e) / 1000 for k, (s, e) in self.marks.items()}
        return {k: e - s for k, (s, e) in self.marks.items()}


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


def optimizer_step(
    step: int,
    accelerator: Any,
    wrapper: Any,
    model: Any,
    objective: Objective,
    data: Iterator[dict[str, Any]],
    optimizer: Any,
    scheduler: Any,
    masters: MasterWeights | None,
    cfg: RunOptions,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], PhaseTimer, list[str]]:
    """One optimizer step; returns (metric sums, per-process values, phase timer, record ids)."""
    device = accelerator.device
    world = accelerator.num_processes
    timer = PhaseTimer(device)
    ctx = GenerationContext(
        model=model,
        device=device,
        step=step,
        synced_gpus=is_fsdp2(accelerator) and world > 1,
        gather_weights=cfg.gather_for_generation,
    )
    with timer("rollout"):
        rolled = objective.rollout_step(ctx, [next(data) for _ in range(cfg.gradient_accumulation_steps)])
    with timer("teacher"):
        micro: list[MicroBatch] = objective.score_step(ctx, rolled)
    # The step's normaliser over every micro-batch and process: a collective, no host sync.
    units = None
    if micro[0].units is not None:
        units = accelerator.reduce(torch.stack([m.units for m in micro]).sum().reshape(1), "sum").reshape(())
    sums: dict[str, torch.Tensor] = {}

    def add(name: str, value: torch.Tensor) -> None:
        value = value.detach().to(device=device, dtype=torch.float64)
        sums[name] = sums[name] + value if name in sums else value

    teacher_wait = 0.0  # the student's wait for a teacher still scoring (the service), inside "student"
    teacher_bytes, teacher_busy = 0, 0.0  # what the scores brought from another process; its time on them
    with timer("student"):
        for i, mb in enumerate(micro):
            last = i == len(micro) - 1
            if mb.pending is not None:
                teacher_wait += mb.pending.wait()
                teacher_bytes += mb.pending.received_bytes()
                teacher_busy += mb.pending.busy_s()
            with contextlib.nullcontext() if last else accelerator.no_sync(wrapper):
                loss_sum, metrics = policy_head_forward(wrapper, model, mb.student_inputs, mb.loss_fn)
                # engines average gradients over processes: scale by the process count
                scale = world / units.clamp_min(1).to(loss_sum.dtype) if units is not None else float(world)
                accelerator.backward(flag_nonfinite_loss(loss_sum) * scale)
            add("loss", loss_sum * scale / world)
            for name, value in {**mb.sums, **metrics}.items():
                add(name, value)
    with timer("optimizer"):
        if masters is not None:
            masters.grads_to_masters()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        grad_norm = agreed_grad_norm(accelerator, params, cfg.max_grad_norm)
        stepped = step_if_finite(optimizer, scheduler, grad_norm)  # every process alike: the norm is agreed
        optimizer.zero_grad(set_to_none=True)
        if masters is not None:
            masters.masters_to_model()
    per_rank: dict[str, Any] = {
        "peak_mem_mb": peak_memory_mb(device),
        "skipped_step": float(not stepped),
        "teacher_wait_s": teacher_wait,
        "teacher_bytes": float(teacher_bytes),
        "teacher_busy_s": teacher_busy,
    }
    if cfg.max_grad_norm > 0:
        per_rank["grad_norm"] = grad_norm
    ids = [r.id for m in micro for r in m.records]
    return sums, per_rank, timer, ids


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
) -> dict[str, Any]:
    """A step's row of ``metrics.jsonl`` from its reduced metrics (:func:`reduce_step_metrics`)."""
    return {
        "step": step,
        "loss": summed["loss"],
        **objective.summarize(summed),
        "lr": lr,
        "grad_norm": ranks["grad_norm"][0] if "grad_norm" in ranks else None,
        "tokens_per_s": summed.get("context_tokens", 0.0) / step_time,
        "step_time_s": step_time,
        **{f"time/{k}_s": v for k, v in timer.seconds().items()},
        "time/teacher_wait_s": max(ranks["teacher_wait_s"]) if "teacher_wait_s" in ranks else 0.0,
        "teacher_bytes": int(sum(ranks["teacher_bytes"])) if "teacher_bytes" in ranks else 0,
        "time/teacher_service_s": max(ranks["teacher_busy_s"]) if "teacher_busy_s" in ranks else 0.0,
        "peak_mem_mb": max(ranks["peak_mem_mb"]),
        "peak_mem_mb_per_rank": ranks["peak_mem_mb"],
        "skipped_videos": int(sum(ranks["skipped_videos"])),
        "skipped_step": ranks["skipped_step"][0],  # the same on every process
        "processes": processes,
        "time_s": time_s,
        "train_time_s": train_time,
    }


def train(
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
    on_step: Callable[[PreparedRun, dict[str, Any], list[str]], None] | None = None,
) -> TrainSummary:
    """Train ``model`` (prepared by ``videoopd.qwen.models.prepare_policy``, possibly a peft
    LoRA model) with ``objective`` up to ``cfg.max_steps`` optimizer steps on
    ``dataset``/``collator``; evaluate on ``eval_records`` every ``cfg.eval_steps`` steps and at
    the end; save per ``cfg``; continue from checkpoint ``resume_from`` (see
    :func:`videoopd.training.checkpoint.prepare_run_folder`) when given. With a ``curriculum``
    (:class:`videoopd.training.curriculum.TVDFCurriculum`; ``cfg.max_steps`` must be its
    ``total_steps``) each round starts by selecting the samples of ``dataset`` it trains on.
    ``on_step(run, row, record_ids)``, when given, is called on every process after each
    logged step with the :class:`PreparedRun` (its model, engine, ...), the step's row and the
    ids of the records this process drew for it.

    On SIGTERM/SIGINT the current optimizer step finishes, a checkpoint is saved and
    :class:`videoopd.training.preemption.Preempted` is raised. Returns the run's results.
    """
    run = setup_run(
        cfg,
        accelerator,
        model,
        processor,
        objective,
        dataset,
        collator,
        eval_records,
        decode_config=decode_config,
        resume_from=resume_from,
        curriculum=curriculum,
        log=log,
    )
    state, start = run.state, time.perf_counter()
    try:
        with StopSignals(announce=run.main) as stop:
            run.evaluate_on_entry()
            for step in range(state.step + 1, cfg.max_steps + 1):
                if run.starts_round(step):
                    run.start_round(step)
                t0 = time.perf_counter()
                lr = run.scheduler.get_last_lr()[0]
                sums, per_rank, timer, ids = optimizer_step(
                    step,
                    accelerator,
                    run.wrapper,
                    run.model,
                    objective,
                    run.data,
                    run.optimizer,
                    run.scheduler,
                    run.masters,
                    cfg,
                )
                per_rank["stop_signal"] = float(stop.signum or 0)
                per_rank["skipped_videos"] = float(len(run.data.failed))
                per_rank["train_time_s"] = state.train_time_s + (time.perf_counter() - t0)
                summed, ranks = reduce_step_metrics(accelerator, sums, per_rank)  # the step's one host sync
                elapsed = time.perf_counter() - t0
                # the same on every process: the budget stops them together
                state.step, state.epoch, state.batches_in_epoch = step, run.data.epoch, run.data.batches_in_epoch
                state.train_time_s = max(ranks["train_time_s"])
                out_of_time = (
                    bool(cfg.time_budget_s) and state.train_time_s >= cfg.time_budget_s and step < cfg.max_steps
                )
                row = step_row(
                    step,
                    objective,
                    summed,
                    ranks,
                    timer,
                    lr=lr,
                    step_time=elapsed,
                    processes=accelerator.num_processes,
                    time_s=time.perf_counter() - start,
                    train_time=state.train_time_s,
                )
                row = run.count_skipped(step, row, ids)
                run.record(row)
                if on_step is not None:
                    on_step(run, row, ids)
                signum = int(max(ranks["stop_signal"]))  # every process agrees, through the gather
                if (run.evaluation_due(step) or (out_of_time and eval_records)) and not signum:
                    run.evaluate(step)
                if signum or (cfg.save_steps and (step % cfg.save_steps == 0 or step == cfg.max_steps or out_of_time)):
                    run.save_checkpoint()
                if signum:
                    raise Preempted(signum, step, run.summary.checkpoint)
                if out_of_time:
                    log(f"time budget of {cfg.time_budget_s:g} s of training reached after step {step}")
                    run.summary.stopped_by_time_budget = step
                    break
    finally:
        run.close()
    if cfg.save_final:
        run.save_final()
    return run.summary
