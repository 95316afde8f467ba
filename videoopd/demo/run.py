"""The CPU demo of ``python -m videoopd.train`` with no models: on-policy distillation of the
shipped tiny Qwen3-VL student from the shipped tiny teacher (:mod:`videoopd.demo.teacher`) on
freshly generated synthetic videos with two events each (the query's colour picks one), on one
process or, through ``accelerate launch --cpu``, several."""

from __future__ import annotations

import json
import os
import random
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from videoopd.data.annotations import load_annotations, write_jsonl_records
from videoopd.data.video import DecodeConfig
from videoopd.demo.teacher import (
    DEMO_EVENTS,
    DEMO_PIXELS,
    STUDENT_DIR,
    TEACHER_DIR,
    generate_split,
    load_demo_checkpoint,
)
from videoopd.qwen.models import check_pair
from videoopd.qwen.processing import record_preprocessing
from videoopd.training.checkpoint import prepare_run_folder
from videoopd.training.config import Options, opt
from videoopd.training.post_training import run_post_training

__all__: list[str] = []  # nothing here is promised: docs/api.md


@dataclass
class DemoOptions(Options):
    """demo

    The demo's other settings are ``--preset demo`` (videoopd/presets/demo.yaml)."""

    demo_videos: int = opt("demo: synthetic videos (half for OPD prompts, half held out)", 160, ge=2, run_defining=True)


# What the demo writes besides the run's own files (replaced with them by --overwrite).
DEMO_ARTIFACTS = (
    "demo_summary.json",
    "demo_data",
    "final_heldout.predictions.jsonl",
    "final_heldout.predictions.jsonl.meta.json",
    "final_heldout.predictions.metrics.json",
)


def run_demo(cfg: Any) -> int:
    """Generate the data, load the pair, distil, print the curves; writes demo_summary.json."""
    from videoopd.training.loop import make_accelerator

    launch_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    # The demo is defined in fp32: the same numbers on one process and under any launch config
    # (configs/accelerate/fsdp2.yaml asks for bf16, meant for GPUs).
    accelerator = make_accelerator(cfg, mixed_precision="no")
    if launch_precision != "no" and accelerator.is_main_process:
        print(f"note: the demo computes in fp32; the launch's mixed_precision {launch_precision} is not used")
    # Before anything is written: a folder holding an earlier run is refused (or, with
    # --overwrite, emptied of it), the demo's own files included.
    prepare_run_folder(cfg, accelerator, DEMO_ARTIFACTS)
    main = accelerator.is_main_process
    say = print if main else (lambda *a, **k: None)
    out_dir = Path(cfg.output_dir)
    say("=" * 78)
    say("videoopd.train demo (no --student/--teacher): on-policy distillation on the CPU, synthetic videos")
    say(f"with {DEMO_EVENTS} coloured shapes each (the query's colour picks one). Teacher: a tiny Qwen3-VL trained")
    say("by `python -m videoopd.sft`; student: an earlier checkpoint of the same run. Both ship in")
    say("videoopd/demo/assets; `python -m videoopd.demo_teacher` regenerates them.")
    prompts = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes
    answers = cfg.num_generations
    method = (
        f"GRPO, {answers} answers per prompt"
        if cfg.algo == "grpo"
        else f"OPD objective {cfg.objective}" + (f", {answers} answers per prompt" if answers > 1 else "")
    )
    say(
        f"{method}, lr {cfg.learning_rate:g}, {cfg.max_steps} steps x {prompts} prompts "
        f"({accelerator.num_processes} process(es))."
    )
    say("=" * 78)
    data_dir = out_dir / "demo_data"
    # Fresh videos (a seed the teacher never saw): half for OPD prompts, half held out. The
    # main process writes them; the others wait and read the same files.
    if main:
        generate_split(data_dir, cfg.demo_videos, seed=1000 + cfg.seed, events=DEMO_EVENTS)
    accelerator.wait_for_everyone()
    records, _ = load_annotations(data_dir / "annotations.jsonl")
    videos = sorted({r.video for r in records})
    held = set(random.Random(cfg.seed).sample(videos, len(videos) // 2))
    train_records = [r for r in records if r.video not in held]
    eval_records = [r for r in records if r.video in held]
    heldout_file = data_dir / "heldout.jsonl"
    if main:  # so that the final student can be evaluated again, with videoopd.eval
        write_jsonl_records(train_records, data_dir / "train.jsonl")
        write_jsonl_records(eval_records, heldout_file)
    say(f"data: {len(train_records)} OPD prompts / {len(eval_records)} held-out queries in {data_dir}")
    teacher, processor = load_demo_checkpoint(TEACHER_DIR, trainable=False)
    student, student_processor = load_demo_checkpoint(STUDENT_DIR, trainable=True, cfg=cfg)
    check_pair(student, teacher, student_processor, processor)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    say(
        f"teacher {n(teacher) / 1e6:.2f}M params, student {n(student) / 1e6:.2f}M params "
        f"(vision tower {'trained' if cfg.train_vision else 'frozen'})"
    )
    decode_config = DecodeConfig.for_processor(
        processor,
        fps=cfg.fps,
        max_frames=cfg.max_frames,
        min_pixels=cfg.min_pixels or DEMO_PIXELS,
        max_pixels=cfg.max_pixels or DEMO_PIXELS,
    )
    record_preprocessing(processor, decode_config)  # final/ then evaluates with videoopd.eval's defaults
    reference = load_demo_checkpoint(STUDENT_DIR, trainable=False)[0] if cfg.algo == "grpo" and cfg.beta > 0 else None
    summary = run_post_training(
        cfg,
        accelerator,
        student,
        teacher,
        processor,
        train_records,
        eval_records,
        reference=reference,
        decode_config=decode_config,
        teacher_path=str(TEACHER_DIR),
        log=say,
    )
    if not main:
        return 0
    evals = summary.evals
    t_eval = summary.teacher_eval
    s_before, s_after = evals.get(0), evals[max(evals)]
    curve_name, curve_key = (
        ("reward (rollout IoU) per answer", "reward")
        if cfg.algo == "grpo"
        else ("reverse KL(student || teacher) per answer token", "reverse_kl")
    )
    rkl = [r[curve_key] for r in summary.steps]
    width = max(1, len(rkl) // 10)
    say(f"{curve_name}, mean over {width} steps:")
    for i in range(0, len(rkl), width):
        chunk = rkl[i : i + width]
        say(f"  steps {i + 1:>4}-{i + len(chunk):<4} {sum(chunk) / len(chunk):.4f}")
    say(
        f"held-out mIoU of the student during {cfg.algo.upper()}: "
        + ", ".join(f"step {tag}: {m['mIoU']:.2f}" for tag, m in evals.items())
    )
    if t_eval is not None and s_before is not None:
        say(
            f"held-out mIoU: teacher {t_eval['mIoU']:.2f} | student before {s_before['mIoU']:.2f} "
            f"-> after {s_after['mIoU']:.2f}  (R1@0.5: teacher {t_eval['R1@0.5']:.2f} | student "
            f"{s_before['R1@0.5']:.2f} -> {s_after['R1@0.5']:.2f})"
        )
    if summary.rounds:
        say("TVDF rounds (mIoU on the OPD pool; delta = teacher IoU - student IoU):")
        say("  round  step  dropped  selected  teacher/student pool  teacher/student selected")
        for r in summary.rounds:
            say(
                f"  {r['round']:>5}  {r['step']:>4}  {r['dropped_by_teacher']:>7}  {r['selected']:>8}  "
                f"{r['teacher_mIoU_pool']:>8.2f} / {r['student_mIoU_pool']:<8.2f}  "
                f"{r['teacher_mIoU_selected']:>9.2f} / {r['student_mIoU_selected']:.2f}"
            )
    (out_dir / "demo_summary.json").write_text(
        json.dumps(
            {
                "teacher": t_eval,
                "student_before": s_before,
                "student_after": s_after,
                "student_evals": evals,
                curve_key: rkl,
                "algo": cfg.algo,
                "processes": accelerator.num_processes,
                "rounds": summary.rounds,
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    say(
        f"run folder: {out_dir} (config.yaml, metrics.jsonl, eval_*.json, demo_summary.json"
        + (", final/)" if cfg.save_final else ")")
    )
    if cfg.save_final:
        command = [
            "python",
            "-m",
            "videoopd.eval",
            "--model",
            str(out_dir / "final"),
            "--data",
            str(heldout_file),
            "--prompt-style",
            cfg.prompt_style,
            "--max-new-tokens",
            str(cfg.max_new_tokens),
            "--output",
            str(out_dir / "final_heldout.predictions.jsonl"),
        ]
        say(f"evaluate the final student on the held-out split:\n  {shlex.join(command)}")
    return 0
