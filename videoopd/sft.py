"""Supervised fine-tuning (SFT) of a Qwen-VL model on temporal-grounding annotations.

    python -m videoopd.sft --model DIR --train-data FILE [--eval-data FILE] [options]
    python -m videoopd.sft --init-tiny qwen3_vl --train-data FILE ...   # a tiny model from scratch

Each example is the grounding prompt (``videoopd.prompts``, the same one ``videoopd.train``
and ``videoopd.eval`` use) followed by the perfect answer ``format_answer(span)``; the loss is
the mean negative log-likelihood of the answer tokens (and the closing ``<|im_end|>``),
computed from base-model hidden states with :func:`opd_kernels.token_logprobs`, so no
[tokens, vocab] logits are built. ``--init-tiny`` starts from a randomly initialised tiny model
of :mod:`videoopd.tiny` (how the demo teacher of ``python -m videoopd.train`` is made; see
:mod:`videoopd.demo_teacher`). The best held-out checkpoint (by mIoU) is kept in
``OUTPUT_DIR/best``, the last one in ``OUTPUT_DIR/final``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from videoopd.config import ConfigError, DataOptions, opt, parse_config, save_config

__all__ = ["SFTConfig", "SFTCollator", "main", "sft_loss", "train_sft"]


@dataclass
class SFTConfig(DataOptions):
    # model
    model: str | None = opt("checkpoint folder to fine-tune (local; never downloaded)", default=None)
    init_tiny: str | None = opt("instead of --model: a randomly initialised tiny model of this family "
                                "(qwen2_5_vl or qwen3_vl)", default=None)
    tiny_hidden_size: int = opt("--init-tiny: text hidden size", default=128)
    tiny_layers: int = opt("--init-tiny: text layers", default=4)
    tiny_vision_hidden_size: int = opt("--init-tiny: vision hidden size", default=64)
    tiny_vision_depth: int = opt("--init-tiny: vision layers", default=2)
    device: str | None = opt("device (default: cuda if available, else cpu)", default=None)
    dtype: str = opt("auto (bf16 on CUDA, fp32 on CPU), bfloat16, float16 or float32", default="auto")
    gradient_checkpointing: bool = opt("activation checkpointing", default=False)
    train_vision: bool = opt("also train the vision tower (frozen by default)", default=False)
    cache_videos: bool = opt("keep decoded videos in memory (small datasets: decode once)", default=False)
    # optimisation
    lr: float = opt("peak AdamW learning rate", default=1e-5)
    vision_lr: float | None = opt("peak learning rate of the vision tower when trained (default: --lr)", default=None)
    min_lr_ratio: float = opt("cosine decay floor as a fraction of --lr", default=0.1)
    warmup_steps: int = opt("linear warm-up steps", default=50)
    weight_decay: float = opt("AdamW weight decay", default=0.0)
    max_grad_norm: float = opt("gradient clipping (0: off)", default=1.0)
    batch_size: int = opt("examples per micro-batch", default=8)
    grad_accum: int = opt("micro-batches per optimizer step", default=1)
    max_steps: int = opt("optimizer steps", default=1000)
    seed: int = opt("random seed", default=0)
    # evaluation / output
    eval_every: int = opt("evaluate on --eval-data every K steps (0: only at the end)", default=0)
    eval_limit: int | None = opt("evaluate the first N held-out queries", default=None)
    eval_batch_size: int = opt("prompts per evaluation generate call", default=8)
    save_every: int = opt("also save the model to OUTPUT_DIR/step{K} every K steps (0: never)", default=0)
    max_new_tokens: int = opt("max answer tokens at evaluation", default=32)
    output_dir: str = opt("run folder: config.yaml, metrics.jsonl, eval_*.json, best/, final/", default="runs/sft")
    progress: bool = opt("show a progress bar", default=True)


CHOICES = {"prompt_style": ("paper", "timelens"), "dtype": ("auto", "bfloat16", "float16", "float32"),
           "init_tiny": (None, "qwen2_5_vl", "qwen3_vl")}
POSITIVE = ("tiny_hidden_size", "tiny_layers", "tiny_vision_hidden_size", "tiny_vision_depth", "max_frames",
            "batch_size", "grad_accum", "max_steps", "eval_batch_size", "max_new_tokens")


def _check(cfg: SFTConfig) -> None:
    if (cfg.model is None) == (cfg.init_tiny is None):
        raise ConfigError("give exactly one of --model (a checkpoint folder) and --init-tiny FAMILY")
    if cfg.train_data is None:
        raise ConfigError("--train-data is required")
    if cfg.vision_lr is not None and not cfg.vision_lr > 0:
        raise ConfigError(f"vision_lr must be > 0, got {cfg.vision_lr!r}")
    for name in ("lr", "fps"):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{name} must be > 0, got {getattr(cfg, name)!r}")
    if not 0 <= cfg.min_lr_ratio <= 1:
        raise ConfigError(f"min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio!r}")
    for name in ("warmup_steps", "eval_every", "save_every", "num_workers"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(cfg, name)!r}")


# --------------------------------------------------------------------------------------
# examples


class SFTCollator:
    """Prompt + answer examples, right-padded, with the answer positions marked.

    Returns ``{"inputs": processor outputs, "answer_mask": bool [B, L], "records": [...]}``;
    ``answer_mask`` marks the answer tokens and the closing end-of-turn token. The answer is
    located by tokenizing it alone and checking it against the tail of the full sequence, so
    a tokenizer that merges across the prompt/answer boundary is an error, not a silent shift.
    """

    def __init__(self, processor: Any, prompt_style: str = "paper"):
        from videoopd.prompts import PROMPT_STYLES

        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {sorted(PROMPT_STYLES)}, got {prompt_style!r}")
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.prompt_style = prompt_style
        self.end_of_turn = self.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def answer(self, record: Any) -> str:
        from videoopd.prompts import format_answer

        return format_answer(record.span, self.prompt_style)

    def text(self, record: Any) -> str:
        from videoopd.prompts import build_messages, render_chat

        messages = build_messages(record.query, self.prompt_style, answer=self.answer(record))
        # The template closes the turn with "<|im_end|>\n"; training stops at <|im_end|>.
        return render_chat(self.processor, messages, add_generation_prompt=False).rstrip("\n")

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        from videoopd.video import processor_inputs

        bad = [item for item in items if item["video"] is None]
        if bad:
            raise RuntimeError(f"cannot train on undecodable videos: {[item['error'] for item in bad]}")
        records = [item["record"] for item in items]
        videos = [item["video"] for item in items]
        inputs = processor_inputs(self.processor, [self.text(r) for r in records], videos, padding_side="right")
        ids, attention = inputs["input_ids"], inputs["attention_mask"]
        answer_mask = torch.zeros_like(ids, dtype=torch.bool)
        lengths = attention.sum(dim=1).tolist()
        for row, record in enumerate(records):
            answer_ids = self.tokenizer(self.answer(record), add_special_tokens=False)["input_ids"] + [self.end_of_turn]
            end = lengths[row]
            start = end - len(answer_ids)
            if ids[row, start:end].tolist() != answer_ids:
                raise ValueError(
                    f"{record.id}: the answer's tokens differ from the tail of the tokenized example; "
                    "the tokenizer merges across the prompt/answer boundary"
                )
            answer_mask[row, start:end] = True
        return {"inputs": inputs, "answer_mask": answer_mask, "records": records}


def sft_loss(model: Any, inputs: dict[str, Any], answer_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean NLL per answer token, number of answer tokens) from base-model hidden states.

    Only the hidden states that predict answer tokens (position t predicts t + 1) enter
    :func:`opd_kernels.token_logprobs`.
    """
    from opd_kernels import token_logprobs
    from videoopd.models import base_hidden_states, lm_head_weight

    hidden = base_hidden_states(model, **inputs)
    predicts = answer_mask[:, 1:].to(hidden.device)
    targets = inputs["input_ids"][:, 1:].to(hidden.device)[predicts]
    logprobs = token_logprobs(hidden[:, :-1][predicts], lm_head_weight(model), targets)
    count = predicts.sum()
    return -logprobs.sum() / count.clamp_min(1), count


class _CachedDataset(torch.utils.data.Dataset):
    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.cache: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index not in self.cache:
            self.cache[index] = self.dataset[index]
        return self.cache[index]


def lr_at(step: int, cfg: SFTConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at ``max_steps``."""
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# --------------------------------------------------------------------------------------
# the loop


def train_sft(cfg: SFTConfig, model: Any, processor: Any, train_records: list[Any],
              eval_records: list[Any] | None = None, *, log: Any = print) -> dict[str, Any]:
    """Fine-tune ``model`` (prepared for training) for ``cfg.max_steps`` steps; return a summary
    (metrics per step, evaluations, the best held-out mIoU and its step)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from videoopd.train import MetricsLog, _batches, run_eval
    from videoopd.video import DecodeConfig, GroundingVideoDataset

    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    accelerator = Accelerator(cpu=torch.device(device).type == "cpu")
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    # Parameter groups: (vision tower or not) x (decayed matrices or not); each group's peak
    # learning rate is kept in "peak_lr" for the schedule.
    visual = getattr(model.model, "visual", None)
    vision_ids = {id(p) for p in visual.parameters()} if visual is not None else set()
    groups = []
    for is_vision in (False, True):
        peak = (cfg.vision_lr or cfg.lr) if is_vision else cfg.lr
        for decayed in (True, False):
            members = [p for p in params if (id(p) in vision_ids) == is_vision and (p.ndim >= 2) == decayed]
            if members:
                groups.append({"params": members, "weight_decay": cfg.weight_decay if decayed else 0.0,
                               "peak_lr": peak})
    # beta2 0.95 as in LM pre-training: a tiny model trained from scratch spikes with 0.999.
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    decode_config = DecodeConfig.for_processor(processor, fps=cfg.fps, max_frames=cfg.max_frames,
                                               min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    dataset: Any = GroundingVideoDataset(train_records, decode_config, on_error="report")
    if cfg.cache_videos:
        dataset = _CachedDataset(dataset)
    batches = _batches(dataset, SFTCollator(processor, cfg.prompt_style), cfg.batch_size, cfg.num_workers, cfg.seed)
    metrics_log = MetricsLog(out_dir)
    summary: dict[str, Any] = {"steps": [], "evals": {}, "best_mIoU": None, "best_step": None}

    def evaluate(step: int) -> None:
        if not eval_records:
            return
        unwrapped.eval()
        m = run_eval(unwrapped, processor, eval_records, cfg, decode_config, out_dir, f"step{step}")
        unwrapped.train()
        summary["evals"][step] = m
        metrics_log.write({"step": step, **{f"eval/{k}": v for k, v in m.items()}})
        improved = summary["best_mIoU"] is None or m["mIoU"] > summary["best_mIoU"]
        if improved:
            summary["best_mIoU"], summary["best_step"] = m["mIoU"], step
            unwrapped.save_pretrained(out_dir / "best")
            processor.save_pretrained(out_dir / "best")
        log(f"[eval step {step}] held-out mIoU {m['mIoU']:.2f}  R1@0.5 {m['R1@0.5']:.2f}  R1@0.7 {m['R1@0.7']:.2f}"
            + ("  (best so far)" if improved else ""))

    model.train()
    bar = tqdm(total=cfg.max_steps, desc="sft", unit="step", disable=not cfg.progress, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for step in range(1, cfg.max_steps + 1):
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["peak_lr"] / cfg.lr
            loss_sum = torch.zeros((), device=accelerator.device)
            tokens = torch.zeros((), dtype=torch.long, device=accelerator.device)
            for _ in range(cfg.grad_accum):
                batch = next(batches)
                inputs = batch["inputs"].to(accelerator.device)
                loss, count = sft_loss(model, inputs, batch["answer_mask"])
                accelerator.backward(loss / cfg.grad_accum)
                loss_sum += loss.detach() / cfg.grad_accum
                tokens += count
            grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            # One host sync per optimizer step, for the log line.
            row = {"step": step, "loss": float(loss_sum), "answer_tokens": int(tokens), "lr": lr,
                   "grad_norm": None if grad_norm is None else float(grad_norm),
                   "time_s": time.perf_counter() - start}
            if not math.isfinite(row["loss"]):
                raise FloatingPointError(f"step {step}: non-finite loss {row['loss']}")
            metrics_log.write(row)
            summary["steps"].append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}")
            bar.update(1)
            if not cfg.progress and (step % 50 == 0 or step == 1):
                log(f"step {step}: loss {row['loss']:.4f}  lr {lr:.2e}  {row['time_s']:.0f}s")
            if cfg.save_every and step % cfg.save_every == 0:
                unwrapped.save_pretrained(out_dir / f"step{step}")
                processor.save_pretrained(out_dir / f"step{step}")
            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.max_steps:
                evaluate(step)
        evaluate(cfg.max_steps)
    finally:
        bar.close()
        metrics_log.close()
    unwrapped.save_pretrained(out_dir / "final")
    processor.save_pretrained(out_dir / "final")
    summary["model"] = unwrapped
    return summary


# --------------------------------------------------------------------------------------
# entry point


def build_model(cfg: SFTConfig) -> tuple[Any, Any]:
    """(model prepared for training, processor) per ``--model`` or ``--init-tiny``."""
    from videoopd.models import load_policy, prepare_policy

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.init_tiny is not None:
        from videoopd.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer(cfg.init_tiny)
        processor = build_tiny_processor(cfg.init_tiny, tokenizer)
        model = build_tiny_model(cfg.init_tiny, tokenizer, seed=cfg.seed, hidden_size=cfg.tiny_hidden_size,
                                 num_layers=cfg.tiny_layers, vision_hidden_size=cfg.tiny_vision_hidden_size,
                                 vision_depth=cfg.tiny_vision_depth)
        model.to(device)
        prepare_policy(model, trainable=True, gradient_checkpointing=cfg.gradient_checkpointing,
                       train_vision=cfg.train_vision)
        return model, processor
    from videoopd.processing import load_processor

    path = Path(cfg.model)
    if not (path / "config.json").is_file():
        raise ConfigError(f"--model: {path} is not a checkpoint folder (no config.json)")
    processor = load_processor(path)
    model = load_policy(path, device=device, trainable=True, dtype=cfg.dtype,
                        gradient_checkpointing=cfg.gradient_checkpointing, train_vision=cfg.train_vision)
    return model, processor


def main(argv: Sequence[str] | None = None) -> int:
    import logging
    import os

    from videoopd.train import load_pool

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_config(SFTConfig, argv, prog="python -m videoopd.sft", choices=CHOICES, positive=POSITIVE,
                           description="Supervised fine-tuning of a Qwen2.5-VL / Qwen3-VL model on temporal "
                                       "video grounding (prompt + perfect answer, loss on answer tokens).")
        _check(cfg)
        train_records = load_pool(cfg.train_data, cfg, "train_data")
        eval_records = load_pool(cfg.eval_data, cfg, "eval_data") if cfg.eval_data else None
        model, processor = build_model(cfg)
    except ConfigError as exc:
        print(f"python -m videoopd.sft: error: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(cfg.output_dir)
    print(f"config: {save_config(cfg, out_dir)}")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters; {len(train_records)} training queries"
          + (f", {len(eval_records)} held-out" if eval_records else ""))
    summary = train_sft(cfg, model, processor, train_records, eval_records)
    if summary["best_step"] is not None:
        print(f"best held-out mIoU {summary['best_mIoU']:.2f} at step {summary['best_step']} -> {out_dir / 'best'}")
    print(f"final model -> {out_dir / 'final'}")
    (out_dir / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "model"},
                                                     indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
