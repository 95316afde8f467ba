"""On-policy distillation (OPD) of a Qwen-VL student from a frozen teacher, for temporal grounding.

    python -m videoopd.train --student S --teacher T --train-data FILE [--eval-data FILE] [options]
    python -m videoopd.train --preset video-opd --student S --teacher T --train-data FILE
    accelerate launch --config_file configs/accelerate/fsdp2.yaml -m videoopd.train --preset video-opd ...
    python -m videoopd.train                      # CPU demo: synthetic data, tiny models

Each step: the student samples answers (:mod:`videoopd.qwen.generation`), the frozen teacher
scores them and the student's loss is taken on answer tokens from base-model hidden states
(:class:`videoopd.algo.objectives.DistillationObjective`), in the one loop of
:mod:`videoopd.training.loop`. Config: defaults < ``--preset`` < ``--config`` YAML < CLI flags;
the resolved config is written to ``OUTPUT_DIR/config.yaml``, metrics to ``metrics.jsonl``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from videoopd.algo.algorithms import ALGORITHMS, default_num_generations, default_reduction
from videoopd.algo.curriculum import SELECTORS
from videoopd.algo.grpo import ADVANTAGES
from videoopd.algo.objectives import DEPRECATED_REDUCTIONS, OBJECTIVES, REDUCTIONS, check_reduction
from videoopd.demo.run import DemoOptions
from videoopd.training.config import ConfigError, Options, RunOptions, fail, opt, parse_config, warn_about_schedule
from videoopd.training.curriculum import check_max_steps
from videoopd.training.distributed import TEACHER_PLACEMENTS
from videoopd.training.preemption import Preempted

__all__ = ["main"]

PROG = "python -m videoopd.train"


@dataclass
class PairOptions(Options):
    """models"""

    student: str | None = opt(
        "student checkpoint folder (local; never downloaded); with neither --student nor "
        "--teacher: the CPU demo (--preset demo)",
        run_defining=True,
    )
    teacher: str | None = opt(
        "teacher checkpoint folder (same tokenizer as the student; head >= student vocab); "
        "several teachers as NAME=FOLDER,NAME=FOLDER (or the flag repeated), each record scored "
        "by the one its data names (its 'teacher' field, else --teacher-by-source, else the "
        "first): "
        "docs/training.md",
        run_defining=True,
    )
    teacher_by_source: str | None = opt(
        "several teachers: SOURCE=NAME,... the teacher of the records of each data "
        "source that name none themselves (default: the first teacher)",
        run_defining=True,
    )
    teacher_placement: Literal[TEACHER_PLACEMENTS] = opt(
        "auto (sharded by FSDP2 under an FSDP2 launch, else replicated), replicate (a full copy per process), "
        "shard (FSDP2 only) or service (replicas on Ray actors, on their own devices, shared by every training "
        "process: docs/scaling-out.md)",
        "auto",
    )
    teacher_device: str | None = opt("one process: the teacher's device (default: the student's)")
    algo: Literal[ALGORITHMS] = opt(
        "opd (on-policy distillation from --teacher) or grpo (the reinforcement-learning "
        "baseline: IoU rewards, no teacher needed)",
        "opd",
        run_defining=True,
    )
    eval_teacher: bool = opt(
        "also evaluate the teacher on --eval-data once before training (the student's ceiling)", False
    )

    def teachers(self) -> dict[str, str]:
        """--teacher as {name: folder}: a plain folder is the one teacher named "teacher"."""
        return parse_pairs(self.teacher, "--teacher", default_key=ONE_TEACHER) if self.teacher else {}

    def teachers_by_source(self) -> dict[str, str]:
        """--teacher-by-source as {source: teacher name}."""
        return parse_pairs(self.teacher_by_source, "--teacher-by-source") if self.teacher_by_source else {}


ONE_TEACHER = "teacher"  # the name of the one teacher of a plain --teacher FOLDER
TEACHER_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def parse_pairs(spec: str, flag: str, default_key: str | None = None) -> dict[str, str]:
    """``KEY=VALUE,KEY=VALUE`` as a dict (keys: letters, digits, ``_.-``); with ``default_key``,
    a spec that is no such list (a plain folder) is ``{default_key: spec}``. ConfigError
    naming ``flag`` for an entry that is not KEY=VALUE or a key given twice."""
    entries = [entry.strip() for entry in spec.split(",")]
    pairs = [entry.partition("=") for entry in entries]
    if default_key is not None and len(entries) == 1 and not (pairs[0][1] and TEACHER_NAME.fullmatch(pairs[0][0])):
        return {default_key: spec}
    out: dict[str, str] = {}
    for entry, (key, sep, value) in zip(entries, pairs):
        if not sep or not value or not TEACHER_NAME.fullmatch(key):
            raise ConfigError(
                f"{flag}: expected NAME=VALUE entries (names of letters, digits, '_', '.', '-') "
                f"separated by commas, got {entry!r} in {spec!r}"
            )
        if key in out:
            raise ConfigError(f"{flag}: {key!r} is given twice in {spec!r}")
        out[key] = value
    return out


@dataclass
class TeacherServiceOptions(Options):
    """teacher service (--teacher-placement service)"""

    ray_address: str | None = opt(
        "service: the Ray cluster to run the teacher replicas on (`ray start --head` "
        "prints it; default: a local cluster the main process starts)"
    )
    teacher_replicas: int = opt("service: teacher replicas (Ray actors); micro-batches go to them in turn", 1, ge=1)
    teacher_service_name: str = opt(
        "service: the replicas' name on the cluster (NAME-0, NAME-1, ...): processes "
        "and runs giving the same name share them",
        "videoopd-teacher",
    )
    teacher_replica_cpus: float = opt("service: CPUs Ray reserves for each replica", 1.0, ge=0)
    teacher_replica_gpus: float | None = opt(
        "service: GPUs Ray gives each replica, which scores on its GPU "
        "(default: 1 where this machine has CUDA, else 0)",
        ge=0,
    )
    teacher_max_restarts: int = opt(
        "service: restarts of a replica whose process dies (its pending micro-batches "
        "are re-sent); after that the run stops with its error",
        2,
        ge=0,
    )
    teacher_timeout_s: float = opt(
        "service: seconds to wait for a micro-batch's score before the run stops with an error", 600.0, gt=0
    )
    teacher_delay_s: float = opt(
        "service, for measurements: seconds each replica sleeps after scoring a "
        "micro-batch (a tiny teacher made as slow as a real one)",
        0.0,
        ge=0,
    )


@dataclass
class RolloutOptions(Options):
    """rollout and objective"""

    temperature: float = opt(
        "sampling temperature of rollouts (also the loss temperature)", 1.0, gt=0, run_defining=True
    )
    top_p: float = opt("nucleus sampling of rollouts", 1.0, gt=0, le=1, run_defining=True)
    objective: Literal[OBJECTIVES] = opt(
        "sampled (teacher log-probs of sampled tokens, REINFORCE reverse KL) or "
        "full (exact reverse KL over the vocabulary)",
        "sampled",
        run_defining=True,
    )
    # the old name token_mean is a choice for one release: it warns and becomes mean (validate)
    reduction: Literal[("auto", *REDUCTIONS, *DEPRECATED_REDUCTIONS)] = opt(
        "sequence_sum (sum over each answer, mean over the step's sequences), mean (over the step's answer tokens; "
        "token_mean, its old name, warns), sum, or auto (opd: sequence_sum, grpo: mean; resolved when parsed)",
        "auto",
        run_defining=True,
    )
    num_generations: int | None = opt(
        "answers sampled per prompt (default: grpo 8, its group; opd 1, the paper's); "
        "opd with more: the sampled objective's advantages are taken relative to the "
        "prompt's group mean",
        gt=0,
        run_defining=True,
    )
    advantage_clip: float = opt(
        "opd sampled: clamp each token's advantage lp_teacher - lp_student to [-c, c] (0: off)",
        0.0,
        ge=0,
        run_defining=True,
    )
    rollout_batch_size: int = opt(
        "rollouts generated per generate call, and scored per teacher forward, on each "
        "process: the step's micro-batches are joined into calls of at most this many "
        "(whole micro-batches; 0: all of the step's rollouts in one call). Samples do not "
        "depend on it (one seed per record)",
        0,
        ge=0,
    )


@dataclass
class GRPOOptions(Options):
    """GRPO"""

    advantage: Literal[ADVANTAGES] = opt(
        "grpo: std (group-normalised rewards, GRPO) or mean (reward minus the group mean, Dr. GRPO)",
        "std",
        run_defining=True,
    )
    epsilon: float = opt("grpo: PPO clip range of the importance ratio", 0.2, gt=0, lt=1, run_defining=True)
    beta: float = opt(
        "grpo: KL penalty to the initial student (k3 estimate); 0 (TimeLens) loads no reference",
        0.0,
        ge=0,
        run_defining=True,
    )
    format_reward: float = opt(
        "grpo: reward added for an answer exactly in the prompt's 'start to end' format", 0.0, ge=0, run_defining=True
    )


@dataclass
class CurriculumOptions(Options):
    """TVDF curriculum"""

    rounds: int = opt(
        "TVDF curriculum rounds (0: no curriculum, train on the whole pool for --max-steps). Each round "
        "scores the pool with the teacher (once per run) and the current student, keeps samples with "
        "teacher IoU >= --teacher-iou-min, selects --round-size of them and trains --steps-per-round "
        "steps on them; the run is rounds x steps-per-round steps (a --max-steps given must agree)",
        0,
        ge=0,
        run_defining=True,
    )
    round_size: int = opt("TVDF: samples selected per round", 2500, gt=0, run_defining=True)
    selector: Literal[SELECTORS] = opt(
        "TVDF: topk (largest teacher-student IoU gaps), gwds (Gaussian-weighted gap "
        "sampling), random, or off (the whole pool)",
        "topk",
        run_defining=True,
    )
    teacher_iou_min: float = opt(
        "TVDF: keep samples whose teacher IoU is at least this", 0.5, ge=0, le=1, run_defining=True
    )
    gwds_center: float = opt("TVDF gwds: centre c of the Gaussian weight on the IoU gap", 0.9, run_defining=True)
    gwds_sigma: float = opt("TVDF gwds: width sigma of the Gaussian weight", 0.2, gt=0, run_defining=True)
    steps_per_round: int = opt(
        "TVDF: optimizer steps per round (0: one pass over the round's --round-size samples)",
        0,
        ge=0,
        run_defining=True,
    )


@dataclass
class TrainConfig(
    DemoOptions, CurriculumOptions, GRPOOptions, RolloutOptions, TeacherServiceOptions, PairOptions, RunOptions
):
    """Options of ``python -m videoopd.train``; ``auto`` and unset values that depend only on other
    options are resolved when it is built, so the saved ``config.yaml`` is what ran."""

    def validate(self) -> None:
        super().validate()
        if self.reduction == "auto":
            self.reduction = default_reduction(self.algo)
        self.reduction = check_reduction(self.reduction, stacklevel=5)
        if self.num_generations is None:
            self.num_generations = default_num_generations(self.algo)
        if self.advantage_clip > 0 and (self.algo != "opd" or self.objective != "sampled"):
            raise ConfigError("--advantage-clip applies to --algo opd --objective sampled only")
        if self.algo == "grpo" and self.num_generations < 2:
            raise ConfigError("num_generations must be >= 2 for grpo (advantages are relative to the group)")
        if self.student is None and self.teacher is not None:
            raise ConfigError("--teacher needs --student")
        if self.student is not None and self.teacher is None and (self.algo == "opd" or self.rounds > 0):
            raise ConfigError(
                "give both --student and --teacher (or neither, for the CPU demo); only --algo grpo "
                "without --rounds trains without a teacher"
            )
        if self.teacher_placement == "service" and self.student is not None and (self.eval_teacher or self.rounds):
            raise ConfigError(
                "--teacher-placement service scores the rollouts only: --eval-teacher and --rounds "
                "need the teacher in the training processes (replicate or shard)"
            )
        if self.student is None and self.train_data is not None:
            raise ConfigError("--train-data needs --student (and --teacher)")
        teachers, by_source = self.teachers(), self.teachers_by_source()
        unknown = {source: name for source, name in by_source.items() if name not in teachers}
        if unknown:
            raise ConfigError(
                f"--teacher-by-source names teachers that --teacher does not give ({list(teachers)}): {unknown}"
            )
        if len(teachers) > 1 and (self.eval_teacher or self.rounds or self.algo != "opd"):
            raise ConfigError(
                "several teachers score OPD's rollouts only: --eval-teacher, --rounds and --algo grpo "
                "take one --teacher"
            )


# --preset NAME: videoopd/presets/NAME.yaml
PRESET_HELP = (
    "a recipe from videoopd/presets/NAME.yaml (its values are the defaults shown below): demo (what no "
    "--student resolves to): the CPU demo on synthetic videos with the shipped tiny models; video-opd: the "
    "paper's (temperature 0.9, learning rate 1e-6, effective batch 32 as 1 x 32 accumulation on one "
    "process, fps 2, 768 frames, 14,336 visual tokens a video (TimeLens's budget), vision frozen, sampled "
    "objective summed over each answer, TVDF "
    "curriculum of 3 rounds x 2,500 top-k samples with teacher IoU >= 0.5)"
)
DESCRIPTION = (
    "On-policy distillation of a Qwen2.5-VL / Qwen3-VL student from a frozen teacher on temporal "
    "video grounding. With no --student/--teacher: a short CPU demo on synthetic data with tiny models "
    "(--preset demo)."
)


def default_preset(cfg: TrainConfig) -> str | None:
    """No --preset: the demo when no --student is given (by flag or YAML)."""
    return "demo" if cfg.student is None else None


def joined_teachers(argv: Sequence[str]) -> list[str]:
    """``argv`` with a repeated ``--teacher NAME=FOLDER`` (either spelling, ``=`` or a separate
    value) joined into one comma list at its first place: the parser keeps only a flag's last
    value."""
    spellings = ("--teacher",)  # one word: both spellings are alike
    values, out, first, i = [], [], None, 0
    while i < len(argv):
        flag, sep, value = argv[i].partition("=")
        if flag in spellings and (sep or i + 1 < len(argv)):
            values.append(value if sep else argv[i + 1])
            if first is None:
                first = len(out)
                out.append("--teacher")
            i += 1 if sep else 2
            continue
        out.append(argv[i])
        i += 1
    if len(values) < 2:
        return list(argv)
    out.insert(first + 1, ",".join(values))
    return out


def resolve_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse flags, apply preset, YAML and overrides; raise ConfigError on a bad value."""
    argv = joined_teachers(list(argv) if argv is not None else sys.argv[1:])
    cfg = parse_config(
        TrainConfig,
        argv,
        prog=PROG,
        description=DESCRIPTION,
        presets=True,
        preset_help=PRESET_HELP,
        default_preset=default_preset,
    )
    if cfg.preset not in (None, "demo") and (cfg.student is None or cfg.teacher is None):
        raise ConfigError(f"--preset {cfg.preset} needs --student and --teacher (local checkpoint folders)")
    if cfg.preset == "demo" and cfg.student is not None:
        raise ConfigError("--preset demo trains the shipped tiny models: leave out --student and --teacher")
    # the curriculum's length, where known before the run (else TVDFCurriculum checks it)
    if cfg.rounds and cfg.steps_per_round and "max_steps" in cfg.given:
        check_max_steps(cfg, cfg.steps_per_round)
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m videoopd.train``: parse the options (the demo preset when no ``--student``), load
    and check the models and data, run the post-training (or the demo) on the launch's engine;
    returns the exit status (2 for bad input in one line; 128 + the signal when stopped by one)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(argv) if argv is not None else sys.argv[1:]
    from videoopd.training.distributed import leave_process_group
    from videoopd.training.loop import make_accelerator
    from videoopd.training.setup import check_device, check_model_folder, check_output_dir, load_pool

    try:
        cfg = resolve_config(argv)
        check_output_dir(cfg.output_dir)
        check_device(cfg.device, "--device")
        check_device(cfg.teacher_device, "--teacher-device")
        warn_about_schedule(cfg, PROG)
        if cfg.student is None:
            from videoopd.demo.run import run_demo

            code = run_demo(cfg)
            leave_process_group()
            return code
        check_model_folder(cfg.student, "--student")
        teacher_paths = cfg.teachers()
        for name, path in teacher_paths.items():
            check_model_folder(path, "--teacher" if len(teacher_paths) == 1 else f"--teacher {name}")
        train_records = load_pool(cfg.train_data, cfg, "train_data")
        eval_records = load_pool(cfg.eval_data, cfg, "eval_data") if cfg.eval_data else None
        accelerator = make_accelerator(cfg)
    except ConfigError as exc:
        return fail(PROG, exc)
    except Preempted as exc:  # the demo, stopped by a signal
        print(f"{PROG}: {exc}", file=sys.stderr)
        leave_process_group()
        return exc.exit_code
    from videoopd.data.video import DecodeConfig
    from videoopd.qwen.models import check_pair, load_policy
    from videoopd.qwen.processing import load_processor, record_preprocessing
    from videoopd.training.post_training import run_post_training

    device = accelerator.device
    processor = load_processor(cfg.student)
    try:
        decode_config = DecodeConfig.for_run(processor, cfg)
    except ValueError as exc:
        return fail(PROG, exc)
    record_preprocessing(processor, decode_config)  # saved with the student: eval and sft sample frames alike
    student = load_policy(
        cfg.student,
        device=device,
        trainable=True,
        dtype=cfg.dtype,
        attn_implementation=cfg.attn_implementation,
        gradient_checkpointing=cfg.gradient_checkpointing,
        train_vision=cfg.train_vision,
    )
    frozen_device = "cpu" if cfg.teacher_device is None else cfg.teacher_device  # placed by the run
    teachers, teacher_processor = {}, None
    if cfg.teacher_placement != "service":  # a service loads its own
        for name, path in teacher_paths.items():
            teacher_processor = load_processor(path)
            teachers[name] = load_policy(
                path,
                device=frozen_device,
                trainable=False,
                dtype=cfg.dtype,
                attn_implementation=cfg.attn_implementation,
            )
            try:
                check_pair(student, teachers[name], processor, teacher_processor)
            except ValueError as exc:
                which = "teacher" if len(teacher_paths) == 1 else f"teacher {name}"
                return fail(PROG, f"incompatible {which}/student: {exc}")
    teacher = teachers if len(teachers) > 1 else next(iter(teachers.values()), None)
    # GRPO's KL penalty: a frozen copy of the initial student
    reference = (
        load_policy(
            cfg.student,
            device=frozen_device,
            trainable=False,
            dtype=cfg.dtype,
            attn_implementation=cfg.attn_implementation,
        )
        if cfg.algo == "grpo" and cfg.beta > 0
        else None
    )
    try:
        run_post_training(
            cfg,
            accelerator,
            student,
            teacher,
            processor,
            train_records,
            eval_records,
            teacher_processor=teacher_processor,
            reference=reference,
            decode_config=decode_config,
            teacher_path=teacher_paths if len(teacher_paths) > 1 else next(iter(teacher_paths.values()), None),
        )
    except ConfigError as exc:
        return fail(PROG, exc)
    except Preempted as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        leave_process_group()
        return exc.exit_code
    leave_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
