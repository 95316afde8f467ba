"""``python -m videoopd.plan``: will a run fit? The per-GPU memory of an OPD or GRPO run, by part
and phase of the step, before launching it (:func:`videoopd.training.memory_plan.plan_memory`).

    python -m videoopd.plan --student qwen3-vl-8b --teacher qwen3-vl-32b --gpus 8 --gpu-memory-gib 80 \\
        --video-tokens 16384 --gradient-accumulation-steps 4
    python -m videoopd.plan --student path/to/student --teacher path/to/teacher --engine ddp --gpus 4
    python -m videoopd.plan --objective grpo --student qwen3-vl-2b --num-generations 8 --gpus 1

Models are config names (qwen3-vl-2b, qwen3-vl-8b, qwen3-vl-32b: built in code) or model folders
(only their config.json is read). Prints each part's GiB, the peak phase and whether the peak
fits; when it does not, the settings that make it fit and the longest video that does. Exit
status 0 when it fits, 1 when it does not, 2 on bad options.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from videoopd.training.config import ConfigError, Options, fail, opt, parse_config
from videoopd.training.memory_plan import PLAN_DEFAULTS as D
from videoopd.training.memory_plan import max_video_tokens, plan_memory

__all__ = ["main"]

PROG = "python -m videoopd.plan"


@dataclass
class PlanConfig(Options):
    """memory plan"""

    student: str | None = opt(
        "student: a config name (qwen3-vl-2b, qwen3-vl-8b, qwen3-vl-32b) or a model folder", required=True
    )
    teacher: str | None = opt("teacher (OPD): a config name or a model folder")
    objective: Literal["opd", "grpo"] = opt("the run's objective", D["objective"])
    gpus: int = opt("processes (one GPU each)", D["gpus"], ge=1)
    gpu_memory_gib: float = opt("memory of one GPU, GiB", D["gpu_memory_gib"], gt=0)
    engine: Literal["ddp", "fsdp2"] = opt("accelerate config: ddp.yaml or fsdp2.yaml", D["engine"])
    teacher_placement: Literal["auto", "replicate", "shard"] = opt(
        "as videoopd.train's --teacher-placement", D["teacher_placement"]
    )
    video_tokens: int = opt(
        "video tokens of one video (TimeLens caps at 14,336, TimeLens2 at 16,384)", D["video_tokens"], ge=0
    )
    text_tokens: int = opt("prompt tokens besides the video's", D["text_tokens"], ge=0)
    answer_tokens: int = opt("answer tokens (--max-new-tokens)", D["answer_tokens"], ge=1)
    per_device_train_batch_size: int = opt(
        "prompts per micro-batch and process", D["per_device_train_batch_size"], ge=1
    )
    gradient_accumulation_steps: int = opt("micro-batches per optimizer step", D["gradient_accumulation_steps"], ge=1)
    num_generations: int | None = opt("answers per prompt (default: 8 for GRPO, 1 for OPD)", D["num_generations"], ge=1)
    dtype: Literal["bf16", "fp16", "fp32"] = opt("weights' and activations' dtype", D["dtype"])
    master_weights: Literal["auto", "fp32", "none"] = opt(
        "as videoopd.train's --master-weights (DDP)", D["master_weights"]
    )
    gradient_checkpointing: bool = opt("activation checkpointing of the student", D["gradient_checkpointing"])
    rollout: Literal["gathered", "sharded"] = opt(
        "FSDP2 generation: the student gathered once per generate call, or each unit per token", D["rollout"]
    )
    teacher_heads: int = opt(
        "full teacher-head copies the exact objective holds under a sharded teacher", D["teacher_heads"], ge=0
    )
    train_vision: bool = opt(
        "as videoopd.train's --train-vision (gradients and AdamW state for the vision tower)", D["train_vision"]
    )
    device: Literal["cuda", "cpu"] = opt("where the run computes (sizes AdamW's temporaries)", D["device"])
    headroom: float = opt(
        "share of GPU memory left for the allocator, CUDA context, communication", D["headroom"], ge=0, lt=1
    )
    rollout_batch_size: int = opt(
        "as videoopd.train's --rollout-batch-size: rollouts per generate call and teacher "
        "forward (0: all of the step's)",
        D["rollout_batch_size"],
        ge=0,
    )
    json: bool = opt("print the plan as JSON", False)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = parse_config(
            PlanConfig,
            argv,
            prog=PROG,
            config_file=False,
            description="The per-GPU memory of an OPD or GRPO run, by part, and whether it fits.",
        )
        settings = {k: v for k, v in asdict(cfg).items() if k not in ("student", "teacher", "json")}
        plan = plan_memory(cfg.student, cfg.teacher, **settings)
    except (ConfigError, ValueError, TypeError) as exc:
        return fail(PROG, exc)
    if cfg.json:
        most = max_video_tokens(cfg.student, cfg.teacher, **{k: v for k, v in settings.items() if k != "video_tokens"})
        print(
            json.dumps(
                {
                    "settings": plan.settings,
                    "parts": [asdict(p) for p in plan.parts],
                    "phases": {ph: plan.phase_bytes(ph) for ph in ("rollout", "teacher", "student", "optimizer")},
                    "peak_bytes": plan.peak_bytes,
                    "peak_phase": plan.peak_phase,
                    "fits": plan.fits,
                    "usable_bytes": plan.usable_bytes,
                    "max_video_tokens": most,
                    "advice": plan.advice,
                },
                indent=1,
            )
        )
    else:
        s = plan.settings
        print(
            f"{s['student']} student"
            + (f", {s['teacher']} teacher ({s['teacher_placement']})" if s["teacher"] else "")
            + f", {s['engine']} on {s['gpus']} GPU(s), {s['video_tokens']:,} "
            f"video tokens, batch {s['per_device_train_batch_size']} x {s['num_generations']} answer(s) x "
            f"{s['gradient_accumulation_steps']} "
            f"micro-batch(es), {s['dtype']}: per GPU (a plan, not a measurement)\n"
        )
        print(plan.summary())
    return 0 if plan.fits else 1


if __name__ == "__main__":
    sys.exit(main())
