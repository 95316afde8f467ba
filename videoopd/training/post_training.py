"""A post-training run after its models are loaded, on-policy distillation (``cfg.algo`` "opd")
or the GRPO baseline ("grpo"): the teacher (and GRPO's reference) placed by the engine,
held-out evaluation before, the TVDF curriculum when asked, the one loop with the algorithm's
objective, evaluation after. ``python -m videoopd.train``, ``videoopd.compare`` and the demo
run it."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from videoopd.algo.grpo import GroupedCollator, GRPOObjective
from videoopd.algo.objectives import DistillationObjective, teacher_router
from videoopd.algo.teacher_service import SERVICE_NAMESPACE, TeacherService
from videoopd.data.datasets import GroundingVideoDataset
from videoopd.data.video import DecodeConfig
from videoopd.qwen.collators import GroundingCollator
from videoopd.qwen.models import check_pair_facts, lm_head_weight, pair_facts
from videoopd.training.checkpoint import prepare_run_folder
from videoopd.training.config import ConfigError, save_config
from videoopd.training.curriculum import TVDFCurriculum, one_pass_steps
from videoopd.training.distributed import is_fsdp2, place_teacher
from videoopd.training.loop import PreparedRun, TrainSummary, evaluate_held_out, train
from videoopd.training.memory_plan import MemoryPlan, plan_memory
from videoopd.training.metrics_log import write_run_report

__all__: list[str] = []  # nothing here is promised: docs/api.md


@dataclasses.dataclass
class PostTrainingSummary(TrainSummary):
    """The loop's :class:`videoopd.training.loop.TrainSummary` and ``teacher_eval``: the
    teacher's held-out metrics (``cfg.eval_teacher``), or None."""

    teacher_eval: dict[str, float] | None = None


def check_record_teachers(records: list[Any], names: list[str]) -> None:
    """ConfigError naming the file and line of the first record whose ``teacher`` field names
    none of the run's teachers ``names``."""
    for record in records:
        if record.teacher is not None and record.teacher not in names:
            raise ConfigError(
                f"{record.annotation_file}, {record.annotation_location}: record {record.id} names "
                f"teacher {record.teacher!r}; --teacher gives {names}"
            )


def start_teacher_service(
    cfg: Any,
    accelerator: Any,
    path: str,
    student: Any,
    processor: Any,
    decode_config: DecodeConfig,
    name: str | None = None,
) -> Any:
    """The run's :class:`videoopd.algo.teacher_service.TeacherService` of the teacher at ``path``,
    checked against ``student`` (:func:`videoopd.qwen.models.check_pair_facts`). Every process
    joins one Ray cluster (``cfg.ray_address``, else one the main process starts here) and
    shares the replicas. ``name``: the replicas' name (default ``cfg.teacher_service_name``; one
    per teacher when there are several). Raises ConfigError for a teacher that cannot score
    the student."""
    from accelerate.utils import broadcast_object_list

    name = name or cfg.teacher_service_name
    address = cfg.ray_address
    if address is None and accelerator.num_processes > 1:
        import ray

        # a second teacher's service joins the cluster the first one's call started
        address = ray.get_runtime_context().gcs_address if ray.is_initialized() else None
    if address is None and accelerator.num_processes > 1:
        # one local cluster for every process: the main process starts it, the others join it
        box: list[Any] = [None, None]
        if accelerator.is_main_process:
            import ray

            ray.init(namespace=SERVICE_NAMESPACE, include_dashboard=False)
            # the cluster's authentication mode (token, the token in ~/.ray) is set in the
            # starting process's environment only; Ray reads it when imported: the others
            # take it before they import Ray
            box = [ray.get_runtime_context().gcs_address, os.environ.get("RAY_AUTH_MODE")]
        broadcast_object_list(box)
        address, auth_mode = box
        if auth_mode is not None:
            os.environ.setdefault("RAY_AUTH_MODE", auth_mode)
    gpus = cfg.teacher_replica_gpus
    if gpus is None:
        gpus = 1.0 if torch.cuda.is_available() else 0.0
    try:
        service = TeacherService(
            str(path),
            decode_config=decode_config,
            prompt_style=cfg.prompt_style,
            replicas=cfg.teacher_replicas,
            address=address,
            cpus_per_replica=cfg.teacher_replica_cpus,
            gpus_per_replica=gpus,
            dtype=cfg.dtype,
            attn_implementation=cfg.attn_implementation,
            max_restarts=cfg.teacher_max_restarts,
            timeout_s=cfg.teacher_timeout_s,
            delay_s=cfg.teacher_delay_s,
            name=name,
        )
    except ValueError as exc:  # replicas of that name serving another teacher
        raise ConfigError(f"--teacher-service-name {name}: {exc}") from None
    try:
        check_pair_facts(pair_facts(student, processor), service.facts())
    except ValueError as exc:
        raise ConfigError(f"incompatible teacher/student ({path}): {exc}") from None
    return service


def run_memory_plan(
    cfg: Any, accelerator: Any, student: Any, teacher: Any, decode_config: Any, gpu_memory_gib: float
) -> MemoryPlan:
    """:func:`videoopd.training.memory_plan.plan_memory` of this run on GPUs of ``gpu_memory_gib``:
    its models' configs, engine, processes, objective, batch, accumulation, dtype, generation and
    its video budget (``decode_config``'s total pixels in the model's tokens). Full fine-tuning
    with the teacher in these processes (``teacher`` None: GRPO)."""
    from videoopd.qwen.models import unwrap_peft
    from videoopd.training.distributed import is_fsdp2

    dtypes = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    fsdp = is_fsdp2(accelerator)
    placement = cfg.teacher_placement if cfg.teacher_placement in ("replicate", "shard") else "auto"
    return plan_memory(
        unwrap_peft(student).config,
        unwrap_peft(teacher).config if teacher is not None else None,
        objective="opd" if teacher is not None else "grpo",
        gpus=accelerator.num_processes,
        gpu_memory_gib=gpu_memory_gib,
        engine="fsdp2" if fsdp else "ddp",
        teacher_placement=placement if fsdp or placement != "shard" else "auto",
        video_tokens=decode_config.resolved_total_pixels // decode_config.factor**2,
        answer_tokens=cfg.max_new_tokens,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_generations=cfg.num_generations,
        dtype=dtypes.get(next(student.parameters()).dtype, "fp32"),
        master_weights=cfg.master_weights,
        gradient_checkpointing=cfg.gradient_checkpointing,
        rollout="gathered" if cfg.gather_for_generation else "sharded",
        train_vision=cfg.train_vision,
        device="cuda" if accelerator.device.type == "cuda" else "cpu",
        rollout_batch_size=cfg.rollout_batch_size,
    )


def fit_warning(plan: MemoryPlan, decode_config: Any) -> str:
    """What a run that ``plan`` finds too large says at start: the numbers and what to change
    (the plan is an estimate, so the run goes on)."""
    tokens = decode_config.resolved_total_pixels // decode_config.factor**2
    return (
        f"warning: python -m videoopd.plan finds that this run does not fit: at {tokens:,} video tokens a video "
        f"its peak is {plan.peak_bytes / 2**30:,.1f} GiB per GPU ({plan.peak_phase} phase) against "
        f"{plan.usable_bytes / 2**30:,.1f} GiB usable; it may run out of memory.\n{plan.summary()}"
    )


def run_post_training(
    cfg: Any,
    accelerator: Any,
    student: Any,
    teacher: Any,
    processor: Any,
    train_records: list[Any],
    eval_records: list[Any] | None,
    *,
    teacher_processor: Any = None,
    reference: Any = None,
    decode_config: Any = None,
    teacher_path: str | None = None,
    log: Callable[[str], None] = print,
    on_step: Callable[[PreparedRun, dict[str, Any], list[str]], None] | None = None,
) -> PostTrainingSummary:
    """Place the teacher, evaluate it (``cfg.eval_teacher``), train with the algorithm's
    objective (:class:`DistillationObjective` or :class:`GRPOObjective`; the loop evaluates
    the student before, during and after), report. ``cfg``: ``videoopd.train.TrainConfig``.
    ``teacher``: needed by OPD, and by GRPO only for ``eval_teacher`` or the curriculum (else
    None); ``reference``: GRPO's frozen reference policy when ``cfg.beta > 0``; ``teacher_path``:
    the teacher's checkpoint folder, which ``cfg.teacher_placement`` "service" starts replicas of
    (:func:`start_teacher_service`; ``teacher`` is then only evaluated, and may be None);
    ``on_step``: passed to :func:`videoopd.training.loop.train`. Several teachers (OPD only):
    ``teacher`` {name: model} (placed alike) or, for the service, ``teacher_path`` {name: folder}
    (a service per teacher, named ``{cfg.teacher_service_name}-{name}``), each record scored by
    the one its data assigns (:func:`videoopd.algo.objectives.teacher_router`); a record naming
    no teacher of the run is refused (:func:`check_record_teachers`).

    Returns the loop's summary with ``teacher_eval``.
    Raises ConfigError for a teacher placement the launch cannot give or a run folder /
    checkpoint that does not fit the config (:func:`videoopd.training.checkpoint.prepare_run_folder`);
    :class:`videoopd.training.preemption.Preempted` when a signal stopped the run.
    """
    main_process = accelerator.is_main_process
    say = log if main_process else (lambda *a, **k: None)
    out_dir = Path(cfg.output_dir)
    resume_from = prepare_run_folder(cfg, accelerator)
    if main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    service = cfg.teacher_placement == "service"
    if service and cfg.algo == "opd" and teacher_path is None:
        raise ConfigError("--teacher-placement service needs the teacher's checkpoint folder (--teacher)")
    if teacher is None and ((cfg.algo == "opd" and not service) or cfg.rounds or cfg.eval_teacher):
        raise ConfigError("a teacher is needed (OPD, --rounds and --eval-teacher use it)")
    # models in these processes (a service's teacher evaluated here, GRPO's reference) as by "auto"
    placement = "auto" if service else cfg.teacher_placement
    # several teachers ({name: model}, {name: folder}): OPD's scorers only (TrainConfig refuses the rest)
    teachers = teacher if isinstance(teacher, dict) else None
    try:
        if teachers is not None:
            if placement == "shard" or (placement == "auto" and is_fsdp2(accelerator)):
                # a sharded forward is collective, and a process's rows may need no forward of a teacher
                raise ConfigError(
                    "several teachers cannot be sharded (FSDP2): their forwards are collective and "
                    "each process's rows name their own teachers; use --teacher-placement replicate "
                    "or service"
                )
            teachers = {
                name: place_teacher(accelerator, model, placement, cfg.teacher_device)
                for name, model in teachers.items()
            }
        elif teacher is not None:
            teacher = place_teacher(accelerator, teacher, placement, cfg.teacher_device)
        if reference is not None:
            reference = place_teacher(accelerator, reference, placement, cfg.teacher_device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    decode_config = decode_config or DecodeConfig.for_run(processor, cfg)
    one_teacher = teacher is not None and teachers is None
    if accelerator.device.type == "cuda" and not service and not cfg.lora_r and (one_teacher or cfg.algo != "opd"):
        plan = run_memory_plan(
            cfg,
            accelerator,
            student,
            teacher if cfg.algo == "opd" else None,
            decode_config,
            torch.cuda.get_device_properties(accelerator.device).total_memory / 2**30,
        )
        if not plan.fits:
            say(fit_warning(plan, decode_config))

    names = list(cfg.teachers()) if hasattr(cfg, "teachers") else []
    if cfg.algo == "opd":
        check_record_teachers(train_records, names or ["teacher"])
    scorer: Any = teachers if teachers is not None else teacher
    if service and cfg.algo == "opd":
        paths = teacher_path if isinstance(teacher_path, dict) else {"teacher": teacher_path}
        several = len(paths) > 1
        scorers = {
            name: start_teacher_service(
                cfg,
                accelerator,
                path,
                student,
                processor,
                decode_config,
                f"{cfg.teacher_service_name}-{name}" if several else None,
            )
            for name, path in paths.items()
        }
        scorer = scorers if several else scorers["teacher"]
    if isinstance(scorer, dict):
        teacher = None  # no single teacher to evaluate or to run a curriculum with
    teacher_eval = None
    earlier_teacher_eval = out_dir / "eval_teacher.json"
    if eval_records and cfg.eval_teacher and resume_from is not None and earlier_teacher_eval.is_file():
        teacher_eval = json.loads(earlier_teacher_eval.read_text(encoding="utf-8"))  # the teacher is frozen
    elif eval_records and cfg.eval_teacher:
        teacher_eval = evaluate_held_out(
            cfg, accelerator, teacher, teacher_processor or processor, eval_records, decode_config, "teacher"
        )
        say(f"teacher held-out mIoU: {teacher_eval['mIoU']:.2f}")
    vocab = lm_head_weight(student).shape[0]
    collator: Any = GroundingCollator(processor, prompt_style=cfg.prompt_style, system_prompt=cfg.system_prompt_setting)
    if cfg.algo == "grpo":
        if cfg.beta > 0 and reference is None:
            raise ConfigError("--beta > 0 needs the reference policy (a frozen copy of the initial student)")
        objective: Any = GRPOObjective(
            processor,
            num_generations=cfg.num_generations,
            advantage=cfg.advantage,
            clip_eps=cfg.epsilon,
            beta=cfg.beta,
            reference=reference,
            format_reward=cfg.format_reward,
            reduction=cfg.reduction,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_new_tokens,
            seed=cfg.seed,
            vocab_size=vocab,
            rollout_batch_size=cfg.rollout_batch_size,
        )
        collator = GroupedCollator(collator, cfg.num_generations)
    else:
        objective = DistillationObjective(
            scorer,
            processor,
            objective=cfg.objective,
            reduction=cfg.reduction,
            teacher_of=teacher_router(list(scorer), cfg.teachers_by_source()) if isinstance(scorer, dict) else None,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_new_tokens,
            seed=cfg.seed,
            vocab_size=vocab,
            num_generations=cfg.num_generations,
            advantage_clip=cfg.advantage_clip or None,
            rollout_batch_size=cfg.rollout_batch_size,
        )
        if cfg.num_generations > 1:
            collator = GroupedCollator(collator, cfg.num_generations)
    dataset = GroundingVideoDataset(train_records, decode_config, on_error="report")
    curriculum = None
    if cfg.rounds:
        steps = cfg.steps_per_round or one_pass_steps(
            cfg.round_size, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, accelerator.num_processes
        )
        curriculum = TVDFCurriculum(
            cfg, accelerator, teacher, teacher_processor or processor, train_records, decode_config, steps, log=say
        )
        say(f"TVDF curriculum: {cfg.rounds} rounds x {steps} steps = {curriculum.total_steps} optimizer steps")
        cfg.max_steps = curriculum.total_steps  # a preset's or the default (one given that differs is refused)
    if main_process:
        say(f"config: {save_config(cfg, out_dir)}")
    summary = train(
        cfg,
        accelerator,
        student,
        processor,
        objective,
        dataset,
        collator,
        eval_records,
        decode_config=decode_config,
        resume_from=resume_from,
        curriculum=curriculum,
        log=say,
        on_step=on_step,
    )
    if eval_records and summary.evals:
        say(f"student held-out mIoU after: {summary.evals[max(summary.evals)]['mIoU']:.2f}")
    if cfg.save_final:
        say(f"saved {out_dir / 'final'}")
    result = PostTrainingSummary(**vars(summary), teacher_eval=teacher_eval)
    if main_process:
        say(f"run report: {', '.join(str(p) for p in write_run_report(out_dir, result))}")
    return result
