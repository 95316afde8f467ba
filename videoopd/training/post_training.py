"""A post-training run after its models are loaded, on-policy distillation (``cfg.algo`` "opd")
or the GRPO baseline ("grpo"): the teacher (and GRPO's reference) placed by the engine,
held-out evaluation before, the TVDF curriculum when asked, the one loop with the algorithm's
objective, evaluation after. ``python -m videoopd.train``, ``videoopd.compare`` and the demo
run it."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

from videoopd.algo.grpo import GroupedCollator, GRPOObjective
from videoopd.algo.objectives import DistillationObjective
from videoopd.data.datasets import GroundingVideoDataset
from videoopd.qwen.collators import GroundingCollator
from videoopd.data.video import DecodeConfig
from videoopd.qwen.models import lm_head_weight
from videoopd.training.checkpoint import prepare_run_folder
from videoopd.training.config import ConfigError, save_config
from videoopd.training.curriculum import TVDFCurriculum, one_pass_steps
from videoopd.training.distributed import place_teacher
from videoopd.training.loop import PreparedRun, TrainSummary, evaluate_held_out, train
from videoopd.training.metrics_log import write_run_report

__all__: list[str] = []  # nothing here is promised: docs/api.md


@dataclasses.dataclass
class PostTrainingSummary(TrainSummary):
    """The loop's :class:`videoopd.training.loop.TrainSummary` and ``teacher_eval``: the
    teacher's held-out metrics (``cfg.eval_teacher``), or None."""

    teacher_eval: dict[str, float] | None = None


ALGORITHMS = ("opd", "grpo")


def default_reduction(algo: str) -> str:
    """``--reduction auto``: OPD sums each answer's loss (the paper's), GRPO averages over the
    step's answer tokens (token-level, as TRL's and DAPO's)."""
    return "token_mean" if algo == "grpo" else "sequence_sum"


def default_num_generations(algo: str) -> int:
    """``--num-generations`` unset: GRPO's group of 8 answers per prompt, OPD's one (the paper's)."""
    return 8 if algo == "grpo" else 1


def run_post_training(cfg: Any, accelerator: Any, student: Any, teacher: Any, processor: Any,
                      train_records: list[Any], eval_records: list[Any] | None, *, teacher_processor: Any = None,
                      reference: Any = None, decode_config: Any = None,
                      log: Callable[[str], None] = print,
                      on_step: Callable[[PreparedRun, dict[str, Any], list[str]], None] | None = None
                      ) -> PostTrainingSummary:
    """Place the teacher, evaluate it (``cfg.eval_teacher``), train with the algorithm's
    objective (:class:`DistillationObjective` or :class:`GRPOObjective`; the loop evaluates
    the student before, during and after), report. ``cfg``: ``videoopd.train.TrainConfig``.
    ``teacher``: needed by OPD, and by GRPO only for ``eval_teacher`` or the curriculum (else
    None); ``reference``: GRPO's frozen reference policy when ``cfg.beta > 0``; ``on_step``:
    passed to :func:`videoopd.training.loop.train`.

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
    if teacher is None and (cfg.algo == "opd" or cfg.rounds or cfg.eval_teacher):
        raise ConfigError("a teacher is needed (OPD, --rounds and --eval-teacher use it)")
    try:
        if teacher is not None:
            teacher = place_teacher(accelerator, teacher, cfg.teacher_placement, cfg.teacher_device)
        if reference is not None:
            reference = place_teacher(accelerator, reference, cfg.teacher_placement, cfg.teacher_device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    decode_config = decode_config or DecodeConfig.for_run(processor, cfg)

    teacher_eval = None
    earlier_teacher_eval = out_dir / "eval_teacher.json"
    if eval_records and cfg.eval_teacher and resume_from is not None and earlier_teacher_eval.is_file():
        teacher_eval = json.loads(earlier_teacher_eval.read_text(encoding="utf-8"))  # the teacher is frozen
    elif eval_records and cfg.eval_teacher:
        teacher_eval = evaluate_held_out(cfg, accelerator, teacher, teacher_processor or processor, eval_records,
                                         decode_config, "teacher")
        say(f"teacher held-out mIoU: {teacher_eval['mIoU']:.2f}")
    vocab = lm_head_weight(student).shape[0]
    collator: Any = GroundingCollator(processor, prompt_style=cfg.prompt_style)
    if cfg.algo == "grpo":
        if cfg.beta > 0 and reference is None:
            raise ConfigError("--beta > 0 needs the reference policy (a frozen copy of the initial student)")
        objective: Any = GRPOObjective(processor, num_generations=cfg.num_generations, advantage=cfg.advantage,
                                       clip_eps=cfg.clip_eps, beta=cfg.beta, reference=reference,
                                       format_reward=cfg.format_reward, reduction=cfg.reduction,
                                       temperature=cfg.temperature, top_p=cfg.top_p,
                                       max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, vocab_size=vocab)
        collator = GroupedCollator(collator, cfg.num_generations)
    else:
        objective = DistillationObjective(teacher, processor, objective=cfg.objective, reduction=cfg.reduction,
                                          temperature=cfg.temperature, top_p=cfg.top_p,
                                          max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, vocab_size=vocab,
                                          num_generations=cfg.num_generations,
                                          advantage_clip=cfg.advantage_clip or None)
        if cfg.num_generations > 1:
            collator = GroupedCollator(collator, cfg.num_generations)
    dataset = GroundingVideoDataset(train_records, decode_config, on_error="report")
    curriculum = None
    if cfg.rounds:
        steps = cfg.steps_per_round or one_pass_steps(cfg.round_size, cfg.batch_size, cfg.grad_accum,
                                                      accelerator.num_processes)
        curriculum = TVDFCurriculum(cfg, accelerator, teacher, teacher_processor or processor, train_records,
                                    decode_config, steps, log=say)
        if cfg.max_steps != curriculum.total_steps:
            say(f"TVDF curriculum: {cfg.rounds} rounds x {steps} steps = {curriculum.total_steps} optimizer steps "
                f"(--max-steps {cfg.max_steps} is replaced)")
            cfg.max_steps = curriculum.total_steps
    if main_process:
        say(f"config: {save_config(cfg, out_dir)}")
    summary = train(cfg, accelerator, student, processor, objective, dataset, collator, eval_records,
                    decode_config=decode_config, resume_from=resume_from, curriculum=curriculum, log=say,
                    on_step=on_step)
    if eval_records and summary.evals:
        say(f"student held-out mIoU after: {summary.evals[max(summary.evals)]['mIoU']:.2f}")
    if cfg.save_final:
        say(f"saved {out_dir / 'final'}")
    result = PostTrainingSummary(**vars(summary), teacher_eval=teacher_eval)
    if main_process:
        say(f"run report: {', '.join(str(p) for p in write_run_report(out_dir, result))}")
    return result
