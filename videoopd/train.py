"""On-policy distillation (OPD) of a Qwen-VL student from a frozen teacher, for temporal grounding.

    python -m videoopd.train --student S --teacher T --train-data FILE [--eval-data FILE] [options]
    python -m videoopd.train --preset video-opd --student S --teacher T --train-data FILE
    python -m videoopd.train                      # CPU demo: synthetic data, tiny models

Each step: draw prompts -> the student samples answers (``videoopd.rollout``) -> the frozen
teacher and the student score prompt + answer from base-model hidden states
(``videoopd.objectives``; no [tokens, vocab] logits) -> loss on answer tokens -> optimizer
step through accelerate. Config: defaults < ``--preset`` < ``--config`` YAML < CLI flags; the
resolved config is written to ``OUTPUT_DIR/config.yaml``, metrics to ``OUTPUT_DIR/metrics.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from videoopd import config
from videoopd.config import ConfigError, DataOptions, opt, parse_config, save_config

__all__ = ["PRESETS", "TrainConfig", "build_parser", "main", "resolve_config", "train"]

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig(DataOptions):
    # models
    student: str | None = opt("student checkpoint folder (local; never downloaded). None with no teacher: CPU demo", default=None)
    teacher: str | None = opt("teacher checkpoint folder (same tokenizer as the student; head >= student vocab)", default=None)
    device: str | None = opt("student device (default: cuda if available, else cpu)", default=None)
    teacher_device: str | None = opt("teacher device (default: the student's)", default=None)
    dtype: str = opt("auto (bf16 on CUDA, fp32 on CPU), bfloat16, float16 or float32", default="auto")
    gradient_checkpointing: bool = opt("activation checkpointing of the student", default=True)
    train_vision: bool = opt("also train the student's vision tower (frozen by default)", default=False)
    # rollout
    temperature: float = opt("sampling temperature of rollouts (also the loss temperature)", default=1.0)
    top_p: float = opt("nucleus sampling of rollouts", default=1.0)
    max_new_tokens: int = opt("max answer tokens per rollout", default=64)
    # objective / optimisation
    objective: str = opt("sampled (teacher log-probs of sampled tokens, REINFORCE reverse KL) or full (exact reverse KL over the vocabulary)", default="sampled")
    reduction: str = opt("sequence_sum (sum over completion tokens, mean over sequences), token_mean or sum", default="sequence_sum")
    lr: float = opt("AdamW learning rate", default=1e-6)
    master_weights: str = opt("fp32 master copies of the trainable weights for the optimizer: auto (when the "
                              "student is bf16/fp16, so that updates of lr ~1e-6 are not rounded away), fp32 or none",
                              default="auto")
    weight_decay: float = opt("AdamW weight decay", default=0.0)
    max_grad_norm: float = opt("gradient clipping (0: off)", default=1.0)
    batch_size: int = opt("prompts per micro-batch", default=1)
    grad_accum: int = opt("micro-batches per optimizer step (effective batch = batch_size * grad_accum)", default=1)
    max_steps: int = opt("optimizer steps", default=100)
    seed: int = opt("random seed", default=0)
    # evaluation / logging
    eval_every: int = opt("evaluate on --eval-data every K steps (0: only before and after)", default=0)
    eval_teacher: bool = opt("also evaluate the teacher on --eval-data once before training (the student's "
                             "ceiling)", default=False)
    eval_limit: int | None = opt("evaluate the first N held-out queries", default=None)
    eval_batch_size: int = opt("prompts per evaluation generate call", default=4)
    output_dir: str = opt("run folder: config.yaml, metrics.jsonl, eval_*.json, final/", default="runs/opd")
    save_final: bool = opt("save the trained student (and processor) to OUTPUT_DIR/final", default=True)
    progress: bool = opt("show progress bars", default=True)
    # demo
    demo_videos: int = opt("demo: synthetic videos (half for OPD prompts, half held out)", default=160)
    demo_steps: int = opt("demo: optimizer steps", default=200)


PRESETS: dict[str, dict[str, Any]] = {
    # Video-OPD's configuration: Qwen3-VL student and teacher (paths from the user).
    "video-opd": {
        "temperature": 0.9, "lr": 1e-6, "batch_size": 1, "grad_accum": 32, "fps": 2.0, "max_frames": 768,
        "train_vision": False, "objective": "sampled", "reduction": "sequence_sum",
    },
}
CHOICES = {"objective": ("sampled", "full"), "reduction": ("sequence_sum", "token_mean", "sum"),
           "dtype": ("auto", "bfloat16", "float16", "float32"), "master_weights": ("auto", "fp32", "none"), "prompt_style": ("paper", "timelens")}


POSITIVE = ("max_frames", "max_new_tokens", "batch_size", "grad_accum", "max_steps", "eval_batch_size",
            "demo_videos", "demo_steps")
PRESET_HELP = ("video-opd: temperature 0.9, lr 1e-6, effective batch 32 (1 x 32 accumulation), fps 2, "
               "768 frames, vision frozen, sampled objective summed over completion tokens")
DESCRIPTION = ("On-policy distillation of a Qwen2.5-VL / Qwen3-VL student from a frozen teacher on temporal "
               "video grounding. With no --student/--teacher: a short CPU demo on synthetic data with tiny models.")


def build_parser() -> argparse.ArgumentParser:
    return config.build_parser(TrainConfig, prog="python -m videoopd.train", description=DESCRIPTION,
                               choices=CHOICES, presets=PRESETS, preset_help=PRESET_HELP)


def resolve_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse flags, apply preset, YAML and overrides; raise ConfigError on a bad value."""
    cfg = parse_config(TrainConfig, argv, prog="python -m videoopd.train", description=DESCRIPTION,
                       choices=CHOICES, positive=POSITIVE, presets=PRESETS, preset_help=PRESET_HELP)
    for name in ("temperature", "fps", "lr"):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{name} must be > 0, got {getattr(cfg, name)!r}")
    if not 0 < cfg.top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {cfg.top_p!r}")
    if cfg.eval_every < 0 or cfg.num_workers < 0:
        raise ConfigError("eval_every and num_workers must be >= 0")
    if cfg.preset is not None and (cfg.student is None or cfg.teacher is None):  # type: ignore[attr-defined]
        raise ConfigError(f"--preset {cfg.preset} needs --student and --teacher (local checkpoint folders)")  # type: ignore[attr-defined]
    return cfg


# --------------------------------------------------------------------------------------
# input checks


def check_models_exist(cfg: TrainConfig) -> None:
    if (cfg.student is None) != (cfg.teacher is None):
        raise ConfigError("give both --student and --teacher (or neither, for the CPU demo)")
    for role in ("student", "teacher"):
        path = Path(getattr(cfg, role))
        if not path.is_dir():
            raise ConfigError(f"--{role}: model folder not found: {path}")
        if not (path / "config.json").is_file():
            raise ConfigError(f"--{role}: {path} has no config.json (not a Hugging Face checkpoint)")


def load_pool(path: str | None, cfg: TrainConfig, what: str) -> list[Any]:
    """Records of an annotation file; ConfigError when it is missing, empty or its videos are."""
    from videoopd.data import load_annotations

    if path is None:
        raise ConfigError(f"--{what.replace('_', '-')} is required with --student/--teacher")
    if not Path(path).is_file():
        raise ConfigError(f"--{what.replace('_', '-')}: annotation file not found: {path}")
    try:
        records, summary = load_annotations(path, cfg.format, video_root=cfg.video_root)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"--{what.replace('_', '-')}: {exc}") from None
    flag = "--" + what.replace("_", "-")
    missing = [i.message for i in summary.issues if i.kind == "missing_video"]
    missing += [f"video file not found: {r.video}" for r in records if not Path(r.video).is_file()]
    if missing:
        raise ConfigError(f"{flag}: {len(missing)} queries refer to missing videos (e.g. {missing[0]}); "
                          "check --video-root")
    if not records:
        raise ConfigError(f"--{what.replace('_', '-')}: no usable records in {path} (empty pool)\n"
                          + summary.report(max_issues=10))
    return records


# --------------------------------------------------------------------------------------
# the loop


def _batches(dataset: Any, collator: Any, batch_size: int, num_workers: int, seed: int) -> Iterator[dict[str, Any]]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collator,
                                         num_workers=num_workers, generator=generator, drop_last=False)
    while True:
        for batch in loader:
            if batch["inputs"] is not None:
                yield batch


class MasterWeights:
    """fp32 copies of half-precision trainable parameters. The model computes (and takes
    gradients) in its own dtype; the optimizer steps the fp32 copies, which are written back
    after each step. Without them, AdamW on bf16 weights loses every update smaller than
    the weight's rounding step (~0.4% of its magnitude): at lr 1e-6 almost all of them."""

    def __init__(self, params: list[Any]):
        import torch

        self.params = params
        self.masters = [torch.nn.Parameter(p.detach().float().clone()) for p in params]

    @classmethod
    def for_config(cls, params: list[Any], mode: str) -> "MasterWeights | None":
        import torch

        half = any(p.dtype in (torch.bfloat16, torch.float16) for p in params)
        if mode == "fp32" or (mode == "auto" and half):
            return cls(params)
        return None

    def grads_to_masters(self) -> None:
        for param, master in zip(self.params, self.masters):
            master.grad = None if param.grad is None else param.grad.float()
            param.grad = None

    def masters_to_model(self) -> None:
        import torch

        with torch.no_grad():
            for param, master in zip(self.params, self.masters):
                param.copy_(master)


class MetricsLog:
    def __init__(self, out_dir: Path):
        self.handle = (out_dir / "metrics.jsonl").open("w", encoding="utf-8")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))
        except Exception:  # tensorboard not installed
            self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self.handle.close()
        if self.tb is not None:
            self.tb.close()


def run_eval(model: Any, processor: Any, records: list[Any], cfg: TrainConfig, decode_config: Any,
             out_dir: Path, tag: str) -> dict[str, float]:
    from videoopd.eval import evaluate

    records = records[: cfg.eval_limit] if cfg.eval_limit else records
    result = evaluate(model, processor, records, decode_config=decode_config, prompt_style=cfg.prompt_style,
                      batch_size=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens, num_workers=0,
                      predictions_path=out_dir / f"eval_{tag}.predictions.jsonl", on_video_error="report",
                      progress=False)
    (out_dir / f"eval_{tag}.json").write_text(json.dumps(result.metrics, indent=2) + "\n", encoding="utf-8")
    return result.metrics


def train(cfg: TrainConfig, student: Any, teacher: Any, processor: Any, train_records: list[Any],
          eval_records: list[Any] | None = None, *, log: Any = print) -> dict[str, Any]:
    """Run OPD for ``cfg.max_steps`` optimizer steps; return a summary (metrics per step, evals).

    ``student`` must be prepared (``videoopd.models.prepare_policy``); ``teacher`` frozen.
    """
    import torch
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from videoopd.objectives import opd_loss
    from videoopd.rollout import sample_rollout
    from videoopd.video import DecodeConfig, GroundingCollator, GroundingVideoDataset

    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    accelerator = Accelerator(cpu=torch.device(device).type == "cpu")
    torch.manual_seed(cfg.seed)
    teacher_device = torch.device(cfg.teacher_device or accelerator.device)
    teacher.to(teacher_device)
    params = [p for p in student.parameters() if p.requires_grad]
    masters = MasterWeights.for_config(params, cfg.master_weights)
    if masters is not None:
        params = masters.masters
    if not params:
        raise ConfigError("the student has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    student, optimizer = accelerator.prepare(student, optimizer)
    model = accelerator.unwrap_model(student)

    decode_config = DecodeConfig.for_processor(processor, fps=cfg.fps, max_frames=cfg.max_frames,
                                               min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    dataset = GroundingVideoDataset(train_records, decode_config, on_error="report")
    collator = GroundingCollator(processor, prompt_style=cfg.prompt_style)
    batches = _batches(dataset, collator, cfg.batch_size, cfg.num_workers, cfg.seed)
    metrics_log = MetricsLog(out_dir)
    summary: dict[str, Any] = {"steps": [], "evals": {}}

    def evaluate_student(step: int) -> None:
        m = run_eval(model, processor, eval_records, cfg, decode_config, out_dir, f"student_step{step}")
        summary["evals"][step] = m
        metrics_log.write({"step": step, **{f"eval/{k}": v for k, v in m.items()}})
        log(f"[eval step {step}] student held-out mIoU {m['mIoU']:.2f}  R1@0.5 {m['R1@0.5']:.2f}")

    bar = tqdm(total=cfg.max_steps, desc="opd", unit="step", disable=not cfg.progress, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for step in range(1, cfg.max_steps + 1):
            t0 = time.perf_counter()
            # Accumulate on the device; the log line costs one host sync per optimizer step.
            acc = torch.zeros(5, dtype=torch.float64, device=accelerator.device)  # loss, rKL*tokens, tokens, seq tokens, rollouts
            for _ in range(cfg.grad_accum):
                batch = next(batches)
                inputs = batch["inputs"].to(accelerator.device)
                rollout = sample_rollout(model, processor, inputs, temperature=cfg.temperature, top_p=cfg.top_p,
                                         max_new_tokens=cfg.max_new_tokens)
                loss, m = opd_loss(model, teacher, inputs, rollout, objective=cfg.objective,
                                   reduction=cfg.reduction, temperature=cfg.temperature,
                                   teacher_device=teacher_device)
                accelerator.backward(loss / cfg.grad_accum)
                acc += torch.stack([loss.detach().double() / cfg.grad_accum,
                                    m["reverse_kl"].to(acc.device).double() * m["tokens"].to(acc.device),
                                    m["tokens"].to(acc.device).double(),
                                    rollout.attention_mask.sum().to(acc.device).double(),
                                    acc.new_tensor(rollout.answer_mask.shape[0])])
            if masters is not None:
                masters.grads_to_masters()
            grad_norm = None
            if cfg.max_grad_norm > 0:
                grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if masters is not None:
                masters.masters_to_model()
            loss_sum, rkl_sum, tok_sum, seq_tokens, rollouts = acc.tolist()
            elapsed = time.perf_counter() - t0
            row = {"step": step, "loss": loss_sum, "reverse_kl": rkl_sum / max(1.0, tok_sum),
                   "answer_tokens": int(tok_sum), "mean_answer_len": tok_sum / max(1.0, rollouts),
                   "tokens_per_s": seq_tokens / elapsed, "step_time_s": elapsed, "lr": cfg.lr,
                   "grad_norm": None if grad_norm is None else float(grad_norm),
                   "time_s": time.perf_counter() - start}
            if not math.isfinite(row["loss"]):
                raise FloatingPointError(f"step {step}: non-finite loss {row['loss']}")
            metrics_log.write(row)
            summary["steps"].append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", rkl=f"{row['reverse_kl']:.4f}",
                            tok_s=f"{row['tokens_per_s']:.0f}")
            bar.update(1)
            if not cfg.progress:
                log(f"step {step}: loss {row['loss']:.4f}  reverse KL {row['reverse_kl']:.4f}  "
                    f"{row['tokens_per_s']:.0f} tok/s")
            if eval_records and (step == cfg.max_steps or (cfg.eval_every and step % cfg.eval_every == 0)):
                evaluate_student(step)
    finally:
        bar.close()
        metrics_log.close()
    summary["model"] = model
    return summary


# --------------------------------------------------------------------------------------
# entry points


def _demo(cfg: TrainConfig) -> int:
    """OPD of the shipped tiny student from the shipped tiny teacher (see videoopd.demo_teacher)
    on freshly generated synthetic videos, on the CPU."""
    import random

    from videoopd.data import load_annotations
    from videoopd.demo_teacher import DEMO_PIXELS, STUDENT_DIR, TEACHER_DIR, generate_split, load_demo_checkpoint
    from videoopd.models import check_pair

    out_dir = Path(cfg.output_dir)
    print("=" * 78)
    print("videoopd.train demo (no --student/--teacher): on-policy distillation on the CPU, synthetic videos")
    print("with one coloured shape each. Teacher: a tiny Qwen3-VL trained by `python -m videoopd.sft`;")
    print("student: an earlier checkpoint of the same run. Both ship in videoopd/assets; regenerate them")
    print(f"with `python -m videoopd.demo_teacher`. Objective: {cfg.objective}, lr {cfg.lr:g}, "
          f"{cfg.max_steps} steps x {cfg.batch_size * cfg.grad_accum} rollouts.")
    print("=" * 78)
    data_dir = out_dir / "demo_data"
    # Fresh videos (a seed the teacher never saw): half for OPD prompts, half held out.
    ann = generate_split(data_dir, cfg.demo_videos, seed=1000 + cfg.seed)  # one event per video
    records, _ = load_annotations(ann)
    videos = sorted({r.video for r in records})
    held = set(random.Random(cfg.seed).sample(videos, len(videos) // 2))
    train_records = [r for r in records if r.video not in held]
    eval_records = [r for r in records if r.video in held]
    print(f"data: {len(train_records)} OPD prompts / {len(eval_records)} held-out queries in {data_dir}")
    teacher, processor = load_demo_checkpoint(TEACHER_DIR, trainable=False)
    student, student_processor = load_demo_checkpoint(STUDENT_DIR, trainable=True, cfg=cfg)
    check_pair(student, teacher, student_processor, processor)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    print(f"teacher {n(teacher) / 1e6:.2f}M params, student {n(student) / 1e6:.2f}M params "
          f"(vision tower {'trained' if cfg.train_vision else 'frozen'})")
    from videoopd.video import DecodeConfig

    decode_config = DecodeConfig.for_processor(processor, fps=cfg.fps, max_frames=cfg.max_frames,
                                               min_pixels=cfg.min_pixels or DEMO_PIXELS,
                                               max_pixels=cfg.max_pixels or DEMO_PIXELS)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_eval = run_eval(teacher, processor, eval_records, cfg, decode_config, out_dir, "teacher")
    s_before = run_eval(student, processor, eval_records, cfg, decode_config, out_dir, "student_before")
    print(f"held-out mIoU before: teacher {t_eval['mIoU']:.2f}, student {s_before['mIoU']:.2f}")
    summary = train(cfg, student, teacher, processor, train_records, eval_records)
    s_after = summary["evals"][cfg.max_steps]
    rkl = [r["reverse_kl"] for r in summary["steps"]]
    width = max(1, len(rkl) // 10)
    print(f"reverse KL(student || teacher) per answer token, mean over {width} steps:")
    for i in range(0, len(rkl), width):
        chunk = rkl[i : i + width]
        print(f"  steps {i + 1:>4}-{i + len(chunk):<4} {sum(chunk) / len(chunk):.4f}")
    print("held-out mIoU of the student during OPD: "
          + ", ".join(f"step {tag}: {m['mIoU']:.2f}" for tag, m in summary["evals"].items()))
    print(f"held-out mIoU: teacher {t_eval['mIoU']:.2f} | student before {s_before['mIoU']:.2f} "
          f"-> after {s_after['mIoU']:.2f}  (R1@0.5: teacher {t_eval['R1@0.5']:.2f} | student "
          f"{s_before['R1@0.5']:.2f} -> {s_after['R1@0.5']:.2f})")
    (out_dir / "demo_summary.json").write_text(json.dumps({
        "teacher": t_eval, "student_before": s_before, "student_after": s_after,
        "student_evals": summary["evals"], "reverse_kl": rkl,
    }, indent=1) + "\n", encoding="utf-8")
    print(f"run folder: {out_dir} (config.yaml, metrics.jsonl, eval_*.json, demo_summary.json)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from videoopd.demo_teacher import DEMO_PIXELS

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        cfg = resolve_config(argv)
        demo = cfg.student is None and cfg.teacher is None
        if demo:
            if cfg.train_data is not None:
                raise ConfigError("--train-data needs --student and --teacher")
            # demo sizes unless overridden on the command line / YAML
            explicit = {a.split("=")[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
            cfg.max_steps = cfg.demo_steps if "max_steps" not in explicit else cfg.max_steps
            # The exact objective: at 8 rollouts a step the sampled estimator is too noisy to move
            # a tiny student in a few CPU minutes (README, "The demo"); --objective sampled runs it.
            demo_defaults = {"objective": "full", "lr": 3e-4, "batch_size": 8, "eval_every": 50,
                             "max_new_tokens": 16, "min_pixels": DEMO_PIXELS, "max_pixels": DEMO_PIXELS}
            for name, value in demo_defaults.items():
                if name not in explicit:
                    setattr(cfg, name, value)
            if "output_dir" not in explicit:
                cfg.output_dir = "runs/opd-demo"
            save_config(cfg, Path(cfg.output_dir))
            return _demo(cfg)
        check_models_exist(cfg)
        train_records = load_pool(cfg.train_data, cfg, "train_data")
        eval_records = load_pool(cfg.eval_data, cfg, "eval_data") if cfg.eval_data else None
    except ConfigError as exc:
        print(f"python -m videoopd.train: error: {exc}", file=sys.stderr)
        return 2

    import torch

    from videoopd.models import check_pair, load_policy
    from videoopd.processing import load_processor

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    processor = load_processor(cfg.student)
    teacher_processor = load_processor(cfg.teacher)
    student = load_policy(cfg.student, device=device, trainable=True, dtype=cfg.dtype,
                          gradient_checkpointing=cfg.gradient_checkpointing, train_vision=cfg.train_vision)
    teacher = load_policy(cfg.teacher, device=cfg.teacher_device or device, trainable=False, dtype=cfg.dtype)
    try:
        check_pair(student, teacher, processor, teacher_processor)
    except ValueError as exc:
        print(f"python -m videoopd.train: error: incompatible teacher/student: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(cfg.output_dir)
    print(f"config: {save_config(cfg, out_dir)}")
    from videoopd.video import DecodeConfig

    decode_config = DecodeConfig.for_processor(processor, fps=cfg.fps, max_frames=cfg.max_frames,
                                               min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    if eval_records and cfg.eval_teacher:
        m = run_eval(teacher, teacher_processor, eval_records, cfg, decode_config, out_dir, "teacher")
        print(f"teacher held-out mIoU: {m['mIoU']:.2f}")
    if eval_records:
        m = run_eval(student, processor, eval_records, cfg, decode_config, out_dir, "student_before")
        print(f"student held-out mIoU before: {m['mIoU']:.2f}")
    summary = train(cfg, student, teacher, processor, train_records, eval_records)
    if eval_records:
        print(f"student held-out mIoU after: {summary['evals'][cfg.max_steps]['mIoU']:.2f}")
    if cfg.save_final:
        summary["model"].save_pretrained(out_dir / "final")
        processor.save_pretrained(out_dir / "final")
        print(f"saved {out_dir / 'final'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
