"""The one training loop: OPD and SFT (any :class:`videoopd.algo.objectives.Objective`), on one
process or many (accelerate: DDP, FSDP2).

Read :func:`train`: :func:`setup_run` prepares the run (LoRA, optimizer, schedule, engine,
state, data, metrics log) as one :class:`PreparedRun`, then each optimizer step runs
:func:`step_gradients`:

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
4. ``optimizer``: the gradients clipped and their total norm, the same on every process;

then reduces its row (:func:`reduce_step_metrics`: one collective, the step's one host sync,
which brings the agreed norm to the host), updates (:func:`apply_update`: AdamW and schedule
step, unless the norm is NaN/inf: a step whose loss or gradients are non-finite on any process is
skipped by every process and counted, :mod:`videoopd.training.guard`), logs the row
(:func:`step_row`), evaluates and saves (:class:`PreparedRun`'s methods). :func:`train` returns
the results, a :class:`TrainSummary`. Only the main process writes files and shows progress;
every process evaluates its share of the held-out set.

Where they live: the engine's pieces (accelerator, optimizer, schedule, data stream, phase timer) in
:mod:`videoopd.training.engine`, the run's setup in :mod:`videoopd.training.run_setup`, its results in
:mod:`videoopd.training.reporting`; all importable from here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from videoopd.algo.objectives import GenerationContext, MicroBatch, Objective
from videoopd.qwen.models import policy_head_forward
from videoopd.training.config import RunOptions
from videoopd.training.distributed import is_fsdp2, peak_memory_mb, reduce_step_metrics
from videoopd.training.engine import DataStream as DataStream
from videoopd.training.engine import PhaseTimer as PhaseTimer
from videoopd.training.engine import build_optimizer as build_optimizer
from videoopd.training.engine import enable_fsdp_on_cpu as enable_fsdp_on_cpu
from videoopd.training.engine import lr_lambda as lr_lambda
from videoopd.training.engine import make_accelerator as make_accelerator
from videoopd.training.guard import agreed_grad_norm, flag_nonfinite_loss, step_if_finite
from videoopd.training.precision import MasterWeights
from videoopd.training.preemption import Preempted, StopSignals
from videoopd.training.reporting import TrainSummary as TrainSummary
from videoopd.training.reporting import evaluate_held_out as evaluate_held_out
from videoopd.training.reporting import save_model as save_model
from videoopd.training.reporting import step_row as step_row
from videoopd.training.run_setup import PreparedRun as PreparedRun
from videoopd.training.run_setup import setup_run as setup_run

__all__: list[str] = []  # nothing here is promised: docs/api.md


def step_gradients(
    step: int,
    accelerator: Any,
    wrapper: Any,
    model: Any,
    objective: Objective,
    data: Iterator[dict[str, Any]],
    optimizer: Any,
    masters: MasterWeights | None,
    cfg: RunOptions,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], PhaseTimer, list[str]]:
    """One optimizer step up to its update: the step's clipped gradients and, in the per-process
    values, their agreed total norm (``grad_norm``, on the device; :func:`apply_update` takes it
    once the row's sync has brought it to the host). Returns (metric sums, per-process values,
    phase timer, record ids)."""
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
    per_rank: dict[str, Any] = {
        "peak_mem_mb": peak_memory_mb(device),
        "grad_norm": grad_norm,
        "teacher_wait_s": teacher_wait,
        "teacher_bytes": float(teacher_bytes),
        "teacher_busy_s": teacher_busy,
    }
    ids = [r.id for m in micro for r in m.records]
    return sums, per_rank, timer, ids


def apply_update(optimizer: Any, scheduler: Any, masters: MasterWeights | None, agreed_norm: float) -> bool:
    """The step's update, after its row's host sync brought ``agreed_norm`` (the same on every
    process): AdamW and schedule step unless it is NaN/inf (:func:`step_if_finite`), the gradients
    dropped either way, the fp32 masters written back. Returns whether it stepped."""
    stepped = step_if_finite(optimizer, scheduler, agreed_norm)
    optimizer.zero_grad(set_to_none=True)
    if masters is not None:
        masters.masters_to_model()
    return stepped


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
    update_s = 0.0  # the last step's update: it runs after that step's row, so the next row counts it
    try:
        with StopSignals(announce=run.main) as stop:
            run.evaluate_on_entry()
            for step in range(state.step + 1, cfg.max_steps + 1):
                if run.starts_round(step):
                    run.start_round(step)
                t0 = time.perf_counter()
                lr = run.scheduler.get_last_lr()[0]
                sums, per_rank, timer, ids = step_gradients(
                    step, accelerator, run.wrapper, run.model, objective, run.data, run.optimizer, run.masters, cfg
                )
                per_rank["stop_signal"] = float(stop.signum or 0)
                per_rank["skipped_videos"] = float(len(run.data.failed))
                per_rank["train_time_s"] = state.train_time_s + update_s + (time.perf_counter() - t0)
                summed, ranks = reduce_step_metrics(accelerator, sums, per_rank)  # the step's one host sync
                updating = time.perf_counter()
                # every process alike: the norm is agreed, and each reads the same gathered value
                stepped = apply_update(run.optimizer, run.scheduler, run.masters, ranks["grad_norm"][0])
                update_s = time.perf_counter() - updating
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
                    skipped=not stepped,
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
