"""Supervised fine-tuning (SFT) of a Qwen-VL model on temporal-grounding annotations.

    python -m videoopd.sft --model DIR --train-data FILE [--eval-data FILE] [options]
    python -m videoopd.sft --init-tiny qwen3_vl --train-data FILE ...   # a tiny model from scratch
    accelerate launch --config_file configs/accelerate/ddp.yaml -m videoopd.sft ...

Each example is the grounding prompt (the one ``videoopd.train`` and ``videoopd.eval`` use)
followed by the perfect answer ``format_answer(span)``; the loss is the mean negative
log-likelihood of the answer tokens (and the closing ``<|im_end|>``) from base-model hidden
states (:class:`videoopd.algo.objectives.SupervisedObjective`, no [tokens, vocab] logits),
run by the same loop as OPD (:mod:`videoopd.training.loop`). ``--init-tiny`` starts from a
randomly initialised tiny model (how the demo's models are made: :mod:`videoopd.demo.teacher`).
The best held-out checkpoint (by mIoU) is kept in ``OUTPUT_DIR/best``, the last in ``final/``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from videoopd.qwen.tiny import FAMILIES
from videoopd.training.config import ConfigError, RunOptions, fail, opt, parse_config, save_config, warn_about_schedule

__all__ = ["main"]

PROG = "python -m videoopd.sft"


@dataclass
class SFTConfig(RunOptions):
    """model to fine-tune"""

    model: str | None = opt("checkpoint folder to fine-tune (local; never downloaded)", run_defining=True)
    init_tiny: Literal[FAMILIES] | None = opt(
        "instead of --model: a randomly initialised tiny model of this family", run_defining=True
    )
    tiny_hidden_size: int = opt("--init-tiny: text hidden size", 128, gt=0, run_defining=True)
    tiny_layers: int = opt("--init-tiny: text layers", 4, gt=0, run_defining=True)
    tiny_vision_hidden_size: int = opt("--init-tiny: vision hidden size", 64, gt=0, run_defining=True)
    tiny_vision_depth: int = opt("--init-tiny: vision layers", 2, gt=0, run_defining=True)
    cache_videos: bool = opt("keep decoded videos in memory (small datasets: decode once)", False)

    def validate(self) -> None:
        super().validate()
        if (self.model is None) == (self.init_tiny is None):
            raise ConfigError("give exactly one of --model (a checkpoint folder) and --init-tiny FAMILY")
        if self.train_data is None:
            raise ConfigError("--train-data is required")


# SFT's own defaults for the options it shares with videoopd.train.
COMMAND_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-5,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 50,
    "adam_beta2": 0.95,
    "per_device_train_batch_size": 8,
    "max_steps": 1000,
    "per_device_eval_batch_size": 8,
    "max_new_tokens": 32,
    "gradient_checkpointing": False,
    "output_dir": "runs/sft",
    "save_best": True,
    "eval_on_start": False,
}
DESCRIPTION = (
    "Supervised fine-tuning of a Qwen2.5-VL / Qwen3-VL model on temporal video grounding (prompt + "
    "perfect answer, loss on answer tokens)."
)


def resolve_config(argv: Sequence[str] | None = None) -> SFTConfig:
    return parse_config(SFTConfig, argv, prog=PROG, description=DESCRIPTION, command_defaults=COMMAND_DEFAULTS)


def build_model(cfg: SFTConfig, device: Any) -> tuple[Any, Any]:
    """(model prepared for training, processor) per ``--model`` or ``--init-tiny``."""
    from videoopd.qwen.models import load_policy, prepare_policy

    if cfg.init_tiny is not None:
        from videoopd.qwen.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer(cfg.init_tiny)
        processor = build_tiny_processor(cfg.init_tiny, tokenizer)
        try:
            model = build_tiny_model(
                cfg.init_tiny,
                tokenizer,
                seed=cfg.seed,
                hidden_size=cfg.tiny_hidden_size,
                num_layers=cfg.tiny_layers,
                vision_hidden_size=cfg.tiny_vision_hidden_size,
                vision_depth=cfg.tiny_vision_depth,
            )
        except ValueError as exc:  # e.g. a hidden size that is no multiple of the head size
            raise ConfigError(f"--init-tiny with the --tiny-* sizes given: {exc}") from None
        model.to(device)
        prepare_policy(
            model, trainable=True, gradient_checkpointing=cfg.gradient_checkpointing, train_vision=cfg.train_vision
        )
        return model, processor
    from videoopd.qwen.processing import load_processor
    from videoopd.training.setup import check_model_folder

    path = check_model_folder(cfg.model, "--model")
    model = load_policy(
        path,
        device=device,
        trainable=True,
        dtype=cfg.dtype,
        attn_implementation=cfg.attn_implementation,
        gradient_checkpointing=cfg.gradient_checkpointing,
        train_vision=cfg.train_vision,
    )
    return model, load_processor(path)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from videoopd.training.distributed import leave_process_group
    from videoopd.training.loop import make_accelerator
    from videoopd.training.setup import check_device, check_model_folder, check_output_dir, load_pool

    try:
        cfg = resolve_config(argv)
        warn_about_schedule(cfg, PROG)
        check_output_dir(cfg.output_dir)
        check_device(cfg.device, "--device")
        if cfg.model is not None:
            check_model_folder(cfg.model, "--model")
        train_records = load_pool(cfg.train_data, cfg, "train_data")
        eval_records = load_pool(cfg.eval_data, cfg, "eval_data") if cfg.eval_data else None
        accelerator = make_accelerator(cfg)
        model, processor = build_model(cfg, accelerator.device)
    except ConfigError as exc:
        return fail(PROG, exc)
    from videoopd.algo.objectives import SupervisedObjective
    from videoopd.data.datasets import CachedDataset, GroundingVideoDataset
    from videoopd.data.video import DecodeConfig
    from videoopd.qwen.collators import SFTCollator
    from videoopd.qwen.processing import record_preprocessing
    from videoopd.training.checkpoint import prepare_run_folder
    from videoopd.training.loop import train
    from videoopd.training.metrics_log import write_run_report
    from videoopd.training.preemption import Preempted

    out_dir = Path(cfg.output_dir)
    say = print if accelerator.is_main_process else (lambda *a, **k: None)
    try:
        resume_from = prepare_run_folder(cfg, accelerator)
    except ConfigError as exc:
        return fail(PROG, exc)
    if accelerator.is_main_process:
        say(f"config: {save_config(cfg, out_dir)}")
    say(
        f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; {len(train_records)} training "
        "queries"
        + (f", {len(eval_records)} held-out" if eval_records else "")
        + f"; {accelerator.num_processes} process(es)"
    )
    try:
        decode_config = DecodeConfig.for_run(processor, cfg)
    except ValueError as exc:
        return fail(PROG, exc)
    record_preprocessing(processor, decode_config)  # saved with the model: eval and sft sample frames alike
    dataset: Any = GroundingVideoDataset(train_records, decode_config, on_error="report")
    if cfg.cache_videos:
        dataset = CachedDataset(dataset)
    try:
        summary = train(
            cfg,
            accelerator,
            model,
            processor,
            SupervisedObjective(),
            dataset,
            SFTCollator(processor, cfg.prompt_style, cfg.system_prompt_setting),
            eval_records,
            decode_config=decode_config,
            resume_from=resume_from,
            log=say,
        )
    except ConfigError as exc:
        return fail(PROG, exc)
    except Preempted as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        leave_process_group()
        return exc.exit_code
    if summary.best_step is not None:
        say(f"best held-out mIoU {summary.best_mIoU:.2f} at step {summary.best_step} -> {out_dir / 'best'}")
    if cfg.save_final:
        say(f"final model -> {out_dir / 'final'}")
    if accelerator.is_main_process:
        say(f"run report: {', '.join(str(p) for p in write_run_report(out_dir, summary))}")
    leave_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
