"""``python -m bench.opd_step``: one OPD optimizer step at chosen widths and video lengths, ours against TRL's recipes.

    python -m bench.opd_step --preset cpu-smoke            # CI: tiny widths, two video lengths, seconds
    python -m bench.opd_step --preset cpu                  # the README's table (this repository's CPU)
    python -m bench.opd_step --preset gpu --budget-s 420   # Qwen3-VL-2B student, Qwen3-VL-8B teacher, bf16
    python -m bench.opd_step --width 256 --layers 2 --teacher-width 512 --video-tokens 1024,4096 --steps 3

The student and the teacher are ``Qwen3VLForConditionalGeneration`` built from configs (random
initialisation, no download) with the real vocabulary (V = 151,936) unless ``--vocab`` says
otherwise; the video is synthetic and built in memory (a square crossing a gradient) with about
``--video-tokens`` video tokens. Every provider does the same step: the student samples an answer
of at most ``--answer-tokens`` tokens (HF generate), the frozen teacher scores it, the student's
forward + backward (gradient checkpointing) computes the loss, AdamW steps. What differs is the loss:

- ``ours`` (``--objectives full,sampled``): exactly videoopd's loop
  (``videoopd.algo.objectives.DistillationObjective``): the loss inside the student's forward from
  hidden states (``fused_reverse_kl``, exact; or the paper's sampled-token estimator), the frozen
  vision tower's output of the rollout reused by the training forward. ``ours-vision-reencoded``
  (not in the default grid): the same, the video encoded again in the training forward, to
  measure what the reuse saves (``--providers ours,ours-vision-reencoded``).
- ``trl-full-logits``: the recipe of TRL's ``GKDTrainer.compute_loss`` (and of its on-policy
  ``DistillationTrainer`` before TRL 1.16): ``.logits`` of student and teacher over the whole
  prompt + completion ([B, L, V] each), the completion picked by ``labels``, TRL's own
  ``generalized_jsd_loss`` at ``beta=1`` (reverse KL). Imported from ``trl`` when installed; else
  a faithful copy, and the row says so.
- ``trl-chunked``: TRL >= 1.16's ``DistillationTrainer`` loss: the completion's last hidden
  states of both models, TRL's ``_chunked_divergence_loss`` at ``beta=1`` (token and vocabulary
  tiles; no [B, L, V]). Needs ``trl`` >= 1.16; else the row says so.

Each provider runs in its own process (every video length in turn, models built once); the
first step warms up, the figures are the median of the later ones. Per row: the phases' seconds
(rollout, teacher, student forward + backward, optimizer), the peak memory growth of the step
over the state before it (CUDA: the allocator's peak; CPU: peak RSS, with glibc returning freed
buffers to the system as ``bench.isolated`` does), tokens per second, and on CUDA the model
FLOPs utilisation. A row that runs out of memory (CPU: past ``--memory-limit-gib``) says so, and
that provider's longer videos are skipped; the grid goes on. Writes ``<stem>.json``, ``.csv``,
``.md`` and (with matplotlib) ``.png`` under ``--out`` (default bench/results/).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from pathlib import Path

from bench import report

QWEN_VOCAB = 151_936
PROVIDERS = ("ours", "trl-full-logits", "trl-chunked")
# ours with the student's video encoded again in its training forward (the loop before it reused
# the rollout's): what the reuse saves, measured beside "ours"; not in the default grid
OURS_REENCODED = "ours-vision-reencoded"
OURS = ("ours", OURS_REENCODED)
OBJECTIVES = ("full", "sampled")  # ours only; TRL's recipes are the exact reverse KL (beta = 1)
FRAME_SIDE = 256  # pixels; Qwen3-VL: one video token per 32 x 32 pixels of a pair of frames
MIB = 2**20
RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class ModelShape:
    """A Qwen3-VL text decoder and vision tower."""

    width: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vision_width: int
    vision_blocks: int
    tied: bool = False

    @classmethod
    def of_width(cls, width: int, layers: int, vision_width: int, vision_blocks: int) -> ModelShape:
        head_dim = 128 if width >= 1024 else 64 if width >= 256 else 16
        if width % head_dim:
            raise ValueError(f"width must be a multiple of {head_dim}, got {width}")
        heads = width // head_dim
        return cls(width, layers, heads, max(1, heads // 2), head_dim, 3 * width, vision_width, vision_blocks)

    @property
    def mrope_section(self) -> tuple[int, int, int]:
        half = self.head_dim // 2  # Qwen3-VL's (t, h, w) split of the rotary pairs: 24/20/20 of 64
        t = half * 3 // 8
        h = (half - t) // 2
        return (t, h, half - t - h)

    def decoder_params(self) -> int:
        attention = self.width * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        return self.layers * (attention + 3 * self.width * self.intermediate)

    def vision_params(self) -> int:
        return self.vision_blocks * 12 * self.vision_width**2


# Qwen3-VL-2B-Instruct and -8B-Instruct's config.json (text and vision), at random init.
ARCHITECTURES = {
    "qwen3-vl-2b": ModelShape(2048, 28, 16, 8, 128, 6144, 1024, 24, tied=True),
    "qwen3-vl-8b": ModelShape(4096, 36, 32, 8, 128, 12288, 1152, 27),
}


@dataclass(frozen=True)
class Grid:
    student: ModelShape
    teacher: ModelShape
    vocab: int
    video_tokens: tuple[int, ...]
    answer_tokens: int = 16
    batch: int = 1
    steps: int = 3
    dtype: str = "fp32"
    providers: tuple[str, ...] = PROVIDERS
    objectives: tuple[str, ...] = OBJECTIVES
    memory_limit_gib: float | None = None
    temperature: float = 1.0

    def rows(self) -> list[tuple[str, str]]:
        """(provider, objective) of each process."""
        return [(p, o) for p in self.providers for o in (self.objectives if p in OURS else ("full",))]


def _shape(width, layers, vision_width, vision_blocks):
    return ModelShape.of_width(width, layers, vision_width, vision_blocks)


PRESETS: dict[str, Grid] = {
    "cpu-smoke": Grid(
        _shape(64, 1, 64, 1), _shape(96, 1, 64, 1), vocab=4096, video_tokens=(64, 256), answer_tokens=8, steps=2
    ),
    "cpu": Grid(
        _shape(256, 2, 256, 2),
        _shape(512, 2, 256, 2),
        vocab=QWEN_VOCAB,
        video_tokens=(1024, 4096, 8192),
        steps=3,
        memory_limit_gib=16.0,
    ),
    "gpu": Grid(
        ARCHITECTURES["qwen3-vl-2b"],
        ARCHITECTURES["qwen3-vl-8b"],
        vocab=QWEN_VOCAB,
        video_tokens=(4096, 16384, 32768, 65536, 131072),
        steps=8,
        dtype="bf16",
    ),
}


@dataclass
class StepRow:
    provider: str
    objective: str
    loss_impl: str
    video_tokens_requested: int
    status: str = "ok"
    video_tokens: int = 0
    prompt_tokens: int = 0
    answer_tokens: int = 0
    sequence_tokens: int = 0
    batch: int = 1
    steps_measured: int = 0
    step_s: float | None = None  # median over the measured steps, seconds; the phases below add up to it
    rollout_s: float | None = None
    teacher_s: float | None = None
    student_s: float | None = None
    optimizer_s: float | None = None
    peak_growth_mib: float | None = None  # the step's peak over the state before it
    peak_mib: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None  # model FLOPs utilisation, CUDA only
    loss: float | None = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- models


def qwen3_vl_config(tokenizer, shape: ModelShape, vocab: int):
    from transformers import Qwen3VLConfig

    from videoopd.qwen.tiny import vision_token_ids

    ids = vision_token_ids(tokenizer)
    text = {
        "vocab_size": vocab,
        "hidden_size": shape.width,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "max_position_embeddings": 262_144,
        "rope_scaling": {"rope_type": "default", "mrope_section": list(shape.mrope_section), "mrope_interleaved": True},
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": shape.tied,
    }
    vision_heads = max(1, shape.vision_width // 64)
    vision = {
        "depth": shape.vision_blocks,
        "hidden_size": shape.vision_width,
        "intermediate_size": shape.vision_width * 4,
        "num_heads": vision_heads,
        "out_hidden_size": shape.width,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [i * shape.vision_blocks // 4 for i in range(1, 4)]
        if shape.vision_blocks >= 4
        else list(range(min(shape.vision_blocks, 3))),
    }
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=shape.tied, **ids)


def build_model(config, tokenizer, device, dtype, seed: int, *, trainable: bool):
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from videoopd.qwen.models import attn_implementation_for, prepare_policy

    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the device: billions of parameters
        model = Qwen3VLForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation=attn_implementation_for(device)
        )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return prepare_policy(model, trainable=trainable)


def synthetic_video(frames: int, size: int, fps: float = 2.0):
    """A DecodedVideo built in memory: a coloured square crossing a gradient, one position a frame."""
    import torch

    from videoopd.data.video import DecodedVideo

    ramp = torch.linspace(0, 255, size)
    background = torch.stack(
        [
            ramp.view(size, 1).expand(size, size),
            ramp.view(1, size).expand(size, size),
            255 - ramp.view(size, 1).expand(size, size),
        ]
    )
    video = background.unsqueeze(0).repeat(frames, 1, 1, 1)
    side = max(4, size // 8)
    for t in range(frames):
        x0 = int((size - side) * t / max(1, frames - 1))
        video[t, 0, size // 3 : size // 3 + side, x0 : x0 + side] = 255
        video[t, 1:, size // 3 : size // 3 + side, x0 : x0 + side] = 0
    return DecodedVideo(
        path="synthetic://moving-square",
        frames=video.to(torch.uint8).contiguous(),
        frame_indices=list(range(frames)),
        timestamps=[t / fps for t in range(frames)],
        source_fps=fps,
        source_num_frames=frames,
        window_num_frames=frames,
        source_size=(size, size),
        backend="synthetic",
    )


def video_batch(processor, video_tokens: int, batch: int):
    """A collated batch of ``batch`` copies of a synthetic video of about ``video_tokens`` tokens."""
    from videoopd.data.annotations import GroundingRecord
    from videoopd.qwen.collators import GroundingCollator

    side = min(FRAME_SIDE, 32 * max(1, math.isqrt(video_tokens)))
    per_pair = (side // 32) ** 2
    frames = 2 * max(1, math.ceil(video_tokens / per_pair))
    video = synthetic_video(frames, side)
    duration = frames / 2.0
    items = [
        {
            "record": GroundingRecord(
                id=f"synthetic-{i}",
                video=video.path,
                query="the red square crosses the frame",
                span=(0.25 * duration, 0.75 * duration),
                duration=duration,
                source="synthetic",
            ),
            "video": video,
            "error": None,
            "data_issue": None,
        }
        for i in range(batch)
    ]
    return GroundingCollator(processor)(items)


# ---------------------------------------------------------------------------------------------- the losses


def trl_version() -> str | None:
    try:
        import importlib.metadata as md

        return md.version("trl")
    except Exception:  # noqa: BLE001 - not installed, or a broken install: the rows say so
        return None


def reference_generalized_jsd(student_logits, teacher_logits, labels, beta: float, temperature: float):
    """Fallback copy of TRL's ``GKDTrainer.generalized_jsd_loss`` at beta in {0, 1}, reduction
    "batchmean" (TRL 1.16.0): only used when ``trl`` is not installed, and the row says so."""
    import torch.nn.functional as F

    s = F.log_softmax(student_logits / temperature, dim=-1)
    t = F.log_softmax(teacher_logits / temperature, dim=-1)
    jsd = (
        F.kl_div(t, s, reduction="none", log_target=True)
        if beta == 1
        else F.kl_div(s, t, reduction="none", log_target=True)
    )
    mask = labels != -100
    return jsd[mask].sum() / mask.sum()


def full_logits_loss():
    """(TRL's generalized JSD as GKDTrainer calls it, its name in the rows)."""
    version = trl_version()
    if version is not None:
        try:
            from trl.experimental.gkd import GKDTrainer

            return GKDTrainer.generalized_jsd_loss, f"trl {version} GKDTrainer.generalized_jsd_loss"
        except Exception:  # noqa: BLE001 - an older or newer layout: fall back, labelled
            pass
    return reference_generalized_jsd, "fallback copy of TRL's generalized_jsd_loss (trl not importable)"


def chunked_loss():
    """(TRL's chunked divergence of its DistillationTrainer, its name in the rows), or (None, why)."""
    version = trl_version()
    if version is None:
        return None, "trl not installed"
    try:
        from trl.trainer.distillation_trainer import _chunked_divergence_loss
    except ImportError:
        return None, f"trl {version} has no chunked DistillationTrainer loss (needs trl >= 1.16)"
    return _chunked_divergence_loss, f"trl {version} DistillationTrainer _chunked_divergence_loss"


# ---------------------------------------------------------------------------------------------- one step


class Clock:
    """Phase times of one step, synchronising the device before each reading."""

    def __init__(self, device):
        self.device = device
        self.marks: list[tuple[str, float]] = []
        self.last = self.now()

    def now(self) -> float:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self, name: str) -> None:
        now = self.now()
        self.marks.append((name, now - self.last))
        self.last = now

    def seconds(self) -> dict[str, float]:
        return dict(self.marks)


class Memory:
    """Peak memory growth of a step over the state before it."""

    def __init__(self, device):
        self.device = device

    def start(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        else:
            from bench.isolated import proc_status, reset_peak_rss

            if not reset_peak_rss():
                raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs): no CPU memory figure")
            self.before = proc_status("VmRSS")

    def peak(self) -> tuple[float, float]:
        """(growth, absolute peak) in MiB."""
        import torch

        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            from bench.isolated import proc_status

            peak = proc_status("VmHWM")
        return (peak - self.before) / MIB, peak / MIB


class StepRunner:
    """One provider's optimizer step on a collated batch."""

    def __init__(self, provider: str, objective: str, student, teacher, processor, device, grid: Grid):
        import torch

        from videoopd.algo.objectives import DistillationObjective

        self.provider, self.objective, self.grid, self.device = provider, objective, grid, device
        self.student, self.teacher = student, teacher
        self.optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)
        reuse = provider == "ours"  # TRL's trainers encode the video in each forward
        self.opd = DistillationObjective(
            teacher,
            processor,
            objective=objective,
            reduction="sum",
            max_new_tokens=grid.answer_tokens,
            temperature=grid.temperature,
            reuse_vision=reuse,
        )
        if provider in OURS:
            self.loss_impl = f"videoopd DistillationObjective ({objective})" + ("" if reuse else ", vision re-encoded")
        elif provider == "trl-full-logits":
            self.jsd, self.loss_impl = full_logits_loss()
        else:
            self.chunked, self.loss_impl = chunked_loss()

    def available(self) -> str | None:
        """Why this provider cannot run here, or None."""
        if self.provider == "trl-chunked" and self.chunked is None:
            return self.loss_impl
        return None

    def step(self, batch, step: int, clock: Clock):
        from videoopd.algo.objectives import GenerationContext
        from videoopd.qwen.models import policy_head_forward

        ctx = GenerationContext(model=self.student, device=self.device, step=step)
        rolled = self.opd.rollout(ctx, batch)
        clock.lap("rollout")
        if self.provider in OURS:
            micro = self.opd.score(ctx, rolled)
            clock.lap("teacher")
            loss, _ = policy_head_forward(self.student, self.student, micro.student_inputs, micro.loss_fn)
        elif self.provider == "trl-chunked":
            loss = self._chunked_step(ctx, rolled, clock)
        else:
            loss = self._full_logits_step(rolled, clock)
        loss.backward()
        clock.lap("student")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        clock.lap("optimizer")
        return loss.detach(), rolled.rollout

    def _chunked_step(self, ctx, rolled, clock):
        from videoopd.algo.objectives import answer_slice, score_rollout, scoring_inputs
        from videoopd.qwen.models import policy_head_forward

        inputs, rollout = rolled.inputs, rolled.rollout
        view = score_rollout(
            self.teacher,
            self.teacher,
            inputs,
            rollout,
            objective="full",
            temperature=self.grid.temperature,
            vocab_size=self.grid.vocab,
            device=self.device,
        )
        clock.lap("teacher")

        def head_fn(hidden, weight):
            h, _, mask = answer_slice(hidden, rollout)
            loss, _, _ = self.chunked(
                h,
                view["teacher_hidden"].to(h.dtype),
                weight,
                view["teacher_head"].to(h.dtype),
                mask,
                1.0,
                temperature=self.grid.temperature,
            )
            return loss

        return policy_head_forward(self.student, self.student, scoring_inputs(inputs, rollout, self.device), head_fn)

    def _full_logits_step(self, rolled, clock):
        import torch

        from videoopd.algo.objectives import scoring_inputs

        inputs, rollout = rolled.inputs, rolled.rollout
        model_inputs = scoring_inputs(inputs, rollout, self.device)
        with torch.no_grad():
            teacher_logits = self.teacher(**model_inputs).logits  # [B, L, V], as TRL's trainer holds it
        clock.lap("teacher")
        labels = rollout.sequences.to(self.device).masked_fill(~rollout.answer_mask.to(self.device), -100)
        labels[:, : rollout.prompt_length] = -100
        student_logits = self.student(**model_inputs).logits
        return self.jsd(
            student_logits[:, :-1],
            teacher_logits[:, :-1],
            labels=labels[:, 1:],
            beta=1.0,
            temperature=self.grid.temperature,
        )


def step_flops(grid: Grid, prompt_tokens: int, answer_tokens: int, video_tokens: int, provider: str) -> float:
    """Model FLOPs of one step (the recompute of gradient checkpointing not counted, as MFU is
    defined): the rollout's prefill and decode, the teacher's forward, the student's forward and
    backward (the frozen vision tower forward only), the heads the provider computes."""
    b, length = grid.batch, prompt_tokens + answer_tokens
    patches = 4 * video_tokens  # 2 x 2 patches merge into one token

    def forward(shape: ModelShape, tokens: int, head_tokens: int) -> float:
        attention = 2 * shape.layers * tokens * tokens * shape.heads * shape.head_dim  # causal: half of 4 L T^2 d
        return 2 * shape.decoder_params() * tokens + attention + 2 * shape.width * grid.vocab * head_tokens

    def vision(shape: ModelShape) -> float:
        return 2 * shape.vision_params() * patches

    head_tokens = length if provider == "trl-full-logits" else answer_tokens
    rollout = (
        vision(grid.student)
        + forward(grid.student, prompt_tokens, 1)
        + sum(
            forward(grid.student, 1, 1) + 4 * grid.student.layers * (prompt_tokens + i) * grid.student.width
            for i in range(answer_tokens)
        )
    )
    teacher = vision(grid.teacher) + forward(grid.teacher, length, head_tokens)
    student = (0 if provider == "ours" else vision(grid.student)) + 3 * forward(grid.student, length, head_tokens)
    return b * (rollout + teacher + student)


def run_provider(provider: str, objective: str, grid: Grid, device_name: str, on_row=None) -> list[StepRow]:
    """Every video length of ``grid`` for one provider, in this process; ``on_row(rows)`` after each."""
    import torch

    from bench.measure import DeviceInfo, is_out_of_memory
    from videoopd.qwen.tiny import build_tiny_processor, build_tiny_tokenizer

    device = torch.device(device_name)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[grid.dtype]
    tokenizer = build_tiny_tokenizer("qwen3_vl")
    processor = build_tiny_processor("qwen3_vl", tokenizer)
    student = build_model(
        qwen3_vl_config(tokenizer, grid.student, grid.vocab), tokenizer, device, dtype, 1, trainable=True
    )
    teacher = build_model(
        qwen3_vl_config(tokenizer, grid.teacher, grid.vocab), tokenizer, device, dtype, 2, trainable=False
    )
    runner = StepRunner(provider, objective, student, teacher, processor, device, grid)
    peak_tflops = DeviceInfo.detect().peak_tflops if device.type == "cuda" else None
    rows, memory = [], Memory(device)
    for video_tokens in grid.video_tokens:
        row = StepRow(provider, objective, runner.loss_impl, video_tokens, batch=grid.batch)
        rows.append(row)
        why = runner.available()
        if why is not None:
            row.status = f"not run: {why}"
            continue
        if any(r.status.startswith("out of memory") for r in rows[:-1]):
            row.status = "skipped: out of memory at a shorter video"
            continue
        times, peaks = [], []
        try:
            batch = video_batch(processor, video_tokens, grid.batch)
            inputs = batch["inputs"]
            row.video_tokens = int((inputs["input_ids"] == student.config.video_token_id).sum()) // grid.batch
            for step in range(grid.steps):
                memory.start()
                clock = Clock(device)
                loss, rollout = runner.step(batch, step + 1, clock)
                growth, peak = memory.peak()
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss {float(loss)}")
                times.append(clock.seconds())
                peaks.append((growth, peak))
                row.loss = float(loss)
                row.prompt_tokens = int(rollout.prompt_length)
                row.sequence_tokens = int(rollout.sequences.shape[1])
                row.answer_tokens = int(rollout.num_answer_tokens) // grid.batch
                del loss, rollout
        except Exception as error:  # noqa: BLE001 - a row, not a crash: the grid goes on
            oom = is_out_of_memory(error) or "can't allocate memory" in str(error)
            row.status = (
                "out of memory" if oom else "failed"
            ) + f" ({type(error).__name__}: {' '.join(str(error).split())[:200]})"
            if not oom:
                row.notes.append(traceback.format_exc()[-2000:])
            runner.optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        measured = times[1:] or times  # the first step warms up (optimizer state, compilation)
        row.steps_measured = len(measured)
        for phase in ("rollout", "teacher", "student", "optimizer"):
            setattr(row, f"{phase}_s", statistics.median(t[phase] for t in measured))
        row.step_s = statistics.median(sum(t.values()) for t in measured)
        row.peak_growth_mib = max(p[0] for p in (peaks[1:] or peaks))
        row.peak_mib = max(p[1] for p in peaks)
        row.tokens_per_s = grid.batch * row.sequence_tokens / row.step_s
        if peak_tflops:
            flops = step_flops(grid, row.prompt_tokens, row.answer_tokens, row.video_tokens, provider)
            row.mfu = flops / row.step_s / (peak_tflops * 1e12)
        if on_row is not None:  # a process killed at its time limit keeps the rows it finished
            on_row(rows)
    return rows


# ---------------------------------------------------------------------------------------------- the grid


def _limit_memory(gib: float | None) -> None:
    if gib is not None:  # an allocation past it fails with a RuntimeError instead of waking the OOM killer
        limit = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def child_main(spec: dict) -> int:
    grid = grid_from_json(spec["grid"])
    if spec["device"] == "cpu":
        _limit_memory(grid.memory_limit_gib)
    out = Path(spec["out"])

    def write(rows: list[StepRow]) -> None:
        out.with_suffix(".tmp").write_text(json.dumps([asdict(r) for r in rows]))
        out.with_suffix(".tmp").replace(out)

    write(run_provider(spec["provider"], spec["objective"], grid, spec["device"], on_row=write))
    return 0


def grid_from_json(d: dict) -> Grid:
    return Grid(
        **{
            **d,
            "student": ModelShape(**d["student"]),
            "teacher": ModelShape(**d["teacher"]),
            "video_tokens": tuple(d["video_tokens"]),
            "providers": tuple(d["providers"]),
            "objectives": tuple(d["objectives"]),
        }
    )


def run_grid(grid: Grid, device: str, *, budget_s: float | None, log=print) -> list[StepRow]:
    """Each (provider, objective) in its own process; a process that dies leaves failed rows."""
    import tempfile

    start, rows, processes = time.monotonic(), [], grid.rows()
    for index, (provider, objective) in enumerate(processes):
        left = None if budget_s is None else budget_s - (time.monotonic() - start)
        if left is not None:  # a fair share of what is left: every provider gets its shorter videos in
            left /= len(processes) - index
        if left is not None and left < 5:
            rows += [
                StepRow(provider, objective, "", n, status="skipped: time budget spent") for n in grid.video_tokens
            ]
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rows.json"
            spec = {
                "provider": provider,
                "objective": objective,
                "device": device,
                "out": str(out),
                "grid": asdict(grid),
            }
            env = dict(
                os.environ,
                MALLOC_MMAP_THRESHOLD_="65536",
                PYTHONPATH=os.pathsep.join(
                    [str(Path(__file__).resolve().parent.parent)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
                ),
            )
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "bench.opd_step", "--child", json.dumps(spec)],
                    env=env,
                    timeout=left,
                    capture_output=True,
                    text=True,
                )
                status = (
                    None
                    if proc.returncode == 0 and out.exists()
                    else f"failed (process exit {proc.returncode}: {' '.join(proc.stderr.split()[-30:])[:300]})"
                )
            except subprocess.TimeoutExpired:
                status = "skipped: time budget spent (process killed)"
            got = [StepRow(**r) for r in json.loads(out.read_text())] if out.exists() else []
        done = {r.video_tokens_requested for r in got}
        got += [
            StepRow(provider, objective, "", n, status=status or "failed (no row written)")
            for n in grid.video_tokens
            if n not in done
        ]
        for r in got:
            log(format_row(r))
        rows += got
    return rows


def format_row(r: StepRow) -> str:
    name = f"{r.provider}[{r.objective}] {r.video_tokens_requested} video tokens"
    if r.status != "ok":
        return f"opd step {name}: {r.status}"
    mfu = f", MFU {100 * r.mfu:.1f}%" if r.mfu is not None else ""
    return (
        f"opd step {name}: {r.step_s:.2f} s (rollout {r.rollout_s:.2f}, teacher {r.teacher_s:.2f}, student "
        f"{r.student_s:.2f}, optimizer {r.optimizer_s:.2f}); peak growth {r.peak_growth_mib:,.0f} MiB; "
        f"{r.sequence_tokens} tokens ({r.answer_tokens} answer), {r.tokens_per_s:,.0f} tokens/s{mfu}"
    )


# ---------------------------------------------------------------------------------------------- reports

COLUMNS = (
    "provider",
    "objective",
    "video_tokens",
    "prompt_tokens",
    "answer_tokens",
    "step_s",
    "rollout_s",
    "teacher_s",
    "student_s",
    "optimizer_s",
    "peak_growth_mib",
    "tokens_per_s",
    "mfu",
    "status",
)


def _cell(value, key: str) -> str:
    if value is None:
        return "—"
    if key == "mfu":
        return f"{100 * value:.1f}%"
    if key == "tokens_per_s":
        return f"{value:,.0f}"
    if key.endswith("_s"):
        return f"{value:.3g}" if value < 10 else f"{value:.1f}"
    if key.endswith("_mib"):
        return f"{value:,.0f}"
    return str(value)


def table_fields(r: StepRow) -> dict:
    """A row's report columns: its measured video length, nothing measured where it did not run."""
    d = asdict(r)
    d["video_tokens"] = r.video_tokens or r.video_tokens_requested
    if r.status != "ok":
        d.update(prompt_tokens=None, answer_tokens=None)
    return d


def markdown(rows: list[StepRow], meta: dict) -> str:
    lines = [
        f"# OPD step: {meta['device']}, {meta['date']}",
        "",
        f"`{meta['command']}` at {meta['commit']}; torch {meta['torch']}, transformers {meta['transformers']}, "
        f"trl {meta['trl'] or 'not installed'}.",
        "",
        f"Student {meta['student']}, teacher {meta['teacher']}, V = {meta['vocab']:,}, {meta['dtype']}, batch "
        f"{meta['batch']}, at most {meta['answer_tokens']} answer tokens; median of {meta['steps'] - 1 or 1} "
        "step(s) after the first. Peak growth: the step's peak memory over the state before it "
        "(CUDA allocator / CPU RSS), in MiB.",
        "",
    ]
    lines += report.markdown_table(COLUMNS, ([_cell(d[k], k) for k in COLUMNS] for d in map(table_fields, rows)))
    lines += ["", "Losses: " + "; ".join(sorted({f"{r.provider}: {r.loss_impl}" for r in rows if r.loss_impl}))]
    return "\n".join(lines) + "\n"


def merge_reports(old: dict, rows: list[StepRow], meta: dict) -> tuple[list[StepRow], dict]:
    """The rows of an earlier report with this run's in place of theirs (same provider, objective,
    video length); the meta keeps every command and commit that made a row."""
    old_meta = old["meta"]
    same = ("student", "teacher", "vocab", "dtype", "batch", "answer_tokens", "steps")
    differ = [k for k in same if old_meta.get(k) != meta.get(k)]
    if differ:
        raise SystemExit(f"--merge-into: the grids differ in {', '.join(differ)}")
    merged = report.merge_rows(
        (StepRow(**d) for d in old["rows"]), rows, key=lambda r: (r.provider, r.objective, r.video_tokens_requested)
    )
    runs = old_meta.get("runs") or [{k: old_meta[k] for k in ("command", "commit", "date")}]
    meta = {**meta, "runs": runs + [{k: meta[k] for k in ("command", "commit", "date")}]}
    meta["command"] = " ; ".join(r["command"] for r in meta["runs"])
    meta["commit"] = ", ".join(dict.fromkeys(r["commit"] for r in meta["runs"]))
    return merged, meta


FORMATS = report.FORMATS


def write_reports(
    rows: list[StepRow], meta: dict, out_dir: Path, stem: str, formats: tuple[str, ...] = FORMATS
) -> list[Path]:
    """``<stem>.<ext>`` for each of ``formats`` through :mod:`bench.report` (the plot only with
    matplotlib); returns the paths written."""
    csv_lines = [[d[k] for k in COLUMNS] + [d["loss_impl"]] for d in map(table_fields, rows)]
    written, _ = report.write_files(
        out_dir,
        stem,
        {
            "json": lambda path: report.write_json(path, rows, meta),
            "csv": lambda path: report.write_csv_table(path, COLUMNS + ("loss_impl",), csv_lines),
            "md": lambda path: path.write_text(markdown(rows, meta)),
            "png": lambda path: write_plot(rows, meta, path) or "no plot",
        },
        formats,
    )
    return written


def write_plot(rows: list[StepRow], meta: dict, path: Path) -> Path | None:
    """Memory growth and step time against the video length, a line per provider and objective
    (out-of-memory rows marked x at the memory limit); None without matplotlib."""
    plt, _ = report.pyplot()
    if plt is None:
        return None
    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(10, 4))
    for key in dict.fromkeys((r.provider, r.objective) for r in rows):
        ok = [r for r in rows if (r.provider, r.objective) == key and r.status == "ok"]
        if not ok:
            continue
        label = key[0] if key[0] not in OURS else f"{key[0]} ({key[1]})"
        xs = [r.video_tokens for r in ok]
        (line,) = ax_mem.plot(xs, [r.peak_growth_mib / 1024 for r in ok], marker="o", label=label)
        ax_time.plot(xs, [r.step_s for r in ok], marker="o", label=label)
        limit = (meta.get("grid") or {}).get("memory_limit_gib")
        oom = [
            r.video_tokens_requested
            for r in rows
            if (r.provider, r.objective) == key and r.status.startswith("out of memory")
        ]
        if oom and limit:  # where the provider ran out: at the memory limit, marked x
            ax_mem.scatter(oom, [limit] * len(oom), marker="x", s=60, color=line.get_color())
            ax_mem.annotate(
                f"{label}: out of memory", (oom[0], limit), fontsize=7, textcoords="offset points", xytext=(6, -10)
            )
    for ax, ylabel in ((ax_mem, "peak memory growth of the step (GiB)"), (ax_time, "step time (s)")):
        ax.set_xlabel("video tokens")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_time.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"OPD step, {meta['device']}, {meta['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def describe(shape: ModelShape) -> str:
    return (
        f"width {shape.width} x {shape.layers} layers (vision {shape.vision_width} x {shape.vision_blocks}"
        f"{', tied head' if shape.tied else ''})"
    )


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _names(choices: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in values if v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"expected some of {', '.join(choices)}, got {text!r}")
        return values

    return parse


def parse_args(argv) -> tuple[Grid, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.opd_step", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="cpu-smoke",
        help="a grid; the flags below change it (default cpu-smoke)",
    )
    parser.add_argument("--width", type=int, help="student hidden size")
    parser.add_argument("--layers", type=int, help="student decoder layers")
    parser.add_argument("--teacher-width", type=int)
    parser.add_argument("--teacher-layers", type=int)
    parser.add_argument("--vision-width", type=int, help="vision tower hidden size (both models)")
    parser.add_argument("--vision-blocks", type=int, help="vision tower blocks (both models)")
    parser.add_argument("--vocab", type=int, help=f"vocabulary (default {QWEN_VOCAB:,} but in cpu-smoke)")
    parser.add_argument("--video-tokens", type=_ints, help="comma-separated, e.g. 1024,4096,8192")
    parser.add_argument("--answer-tokens", type=int, help="answer tokens the student samples at most")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--steps", type=int, help="steps per row; the first warms up")
    parser.add_argument("--dtype", choices=("fp32", "bf16"))
    parser.add_argument(
        "--providers",
        type=_names(PROVIDERS + (OURS_REENCODED,)),
        help=f"some of {', '.join(PROVIDERS + (OURS_REENCODED,))} (default: all but the last)",
    )
    parser.add_argument("--objectives", type=_names(OBJECTIVES), help="ours' objectives (default full,sampled)")
    parser.add_argument("--memory-limit-gib", type=float, help="CPU: each process's address-space limit")
    parser.add_argument("--device", default=None, help="cuda when available, else cpu")
    parser.add_argument("--budget-s", type=float, default=None, help="start no process after this many seconds")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the reports (default bench/results)")
    parser.add_argument(
        "--stem", default=None, help="file name of the reports (default opd-step-<preset>-<device>-<date>)"
    )
    parser.add_argument(
        "--formats", type=_names(FORMATS), default=FORMATS, help="reports to write (default json,csv,md,png)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON report here")
    parser.add_argument(
        "--merge-into",
        type=Path,
        default=None,
        help="a report's JSON: this run's rows replace its rows of the same provider, objective "
        "and video length, and the reports are rewritten beside it (the grids must match)",
    )
    args = parser.parse_args(argv)
    grid = PRESETS[args.preset]
    s, t = grid.student, grid.teacher
    if args.width or args.layers or args.vision_width or args.vision_blocks:
        s = ModelShape.of_width(
            args.width or s.width,
            args.layers or s.layers,
            args.vision_width or s.vision_width,
            args.vision_blocks or s.vision_blocks,
        )
    if args.teacher_width or args.teacher_layers or args.vision_width or args.vision_blocks:
        t = ModelShape.of_width(
            args.teacher_width or t.width,
            args.teacher_layers or t.layers,
            args.vision_width or t.vision_width,
            args.vision_blocks or t.vision_blocks,
        )
    changes = {
        k: v
        for k, v in {
            "vocab": args.vocab,
            "video_tokens": args.video_tokens,
            "answer_tokens": args.answer_tokens,
            "batch": args.batch,
            "steps": args.steps,
            "dtype": args.dtype,
            "providers": args.providers,
            "objectives": args.objectives,
            "memory_limit_gib": args.memory_limit_gib,
        }.items()
        if v is not None
    }
    for name in ("vocab", "answer_tokens", "batch", "steps"):
        if name in changes and changes[name] <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {changes[name]}")
    return replace(grid, student=s, teacher=t, **changes), args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(json.loads(argv[1]))
    grid, args = parse_args(argv)
    import torch
    import transformers

    from bench.measure import DeviceInfo

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    info = DeviceInfo.detect()
    if (info.device.type == "cuda") != device.startswith("cuda"):  # the CPU of a CUDA machine
        info = replace(info, name="CPU", slug="cpu")
    device_name = info.name
    today = date.today().isoformat()
    meta = {
        "device": device_name,
        "date": today,
        "commit": report.git_commit(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl_version(),
        "command": "python -m bench.opd_step " + " ".join(argv),
        "student": describe(grid.student),
        "teacher": describe(grid.teacher),
        "vocab": grid.vocab,
        "dtype": grid.dtype,
        "batch": grid.batch,
        "answer_tokens": grid.answer_tokens,
        "steps": grid.steps,
        "grid": asdict(grid),
    }
    print(f"opd step: {meta['command']} on {device_name}", flush=True)
    rows = run_grid(grid, device, budget_s=args.budget_s, log=lambda line: print(line, flush=True))
    stem = args.stem or f"opd-step-{args.preset}-{info.slug}-{today}"
    if args.merge_into is not None:
        rows, meta = merge_reports(json.loads(args.merge_into.read_text()), rows, meta)
        args.out, stem = args.merge_into.parent, args.merge_into.stem
    for path in write_reports(rows, meta, args.out, stem, args.formats):
        print(f"wrote {path}")
    if args.json:
        write_reports(rows, meta, args.json.parent, args.json.stem, ("json",))
    return (
        0 if all(r.status == "ok" or r.status.startswith(("out of memory", "skipped", "not run")) for r in rows) else 1
    )


if __name__ == "__main__":
    sys.exit(main())
