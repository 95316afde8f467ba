"""A few OPD steps of tiny fp32 Qwen-VL models through videoopd's loop, on however many processes
this is launched with (``python``, or ``accelerate launch --cpu --num_processes 2 [--config_file
configs/accelerate/fsdp2.yaml]``); used by test_distributed.py and test_faults.py
(``--fault``: a fault of faults.py injected on one process).

Writes to OUT: the run folder (what the loop writes), ``weights.pt`` (the full final state
dict, main process), and ``rank{r}.json`` per process: the step losses, the records each
step drew, and every file this process opened for writing under OUT/run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-device-train-batch-size", type=int, default=1)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--objective", default="full")
    parser.add_argument("--reduction", default="mean")
    parser.add_argument("--eval-limit", type=int, default=5)
    parser.add_argument("--student-dtype", default="float32", help="dtype the student is loaded in")
    parser.add_argument(
        "--unsynchronised",
        action="store_true",
        help="compute the loss through the unwrapped model (the bug this test guards against)",
    )
    parser.add_argument("--lora-r", type=int, default=0)
    parser.add_argument("--save-steps", type=int, default=0)
    parser.add_argument("--resume-from-checkpoint", default=None)
    parser.add_argument("--algo", default="opd")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--round-size", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=6)
    parser.add_argument("--eval-steps", type=int, default=None, help="default: --steps")
    parser.add_argument(
        "--teacher-head-rows",
        type=int,
        default=0,
        help="pad the teacher's vocabulary (embedding and head) to this many rows",
    )
    parser.add_argument("--rollout-batch-size", type=int, default=0)
    parser.add_argument("--gather-for-generation", default="true")
    parser.add_argument("--ddp-timeout", type=int, default=None)
    parser.add_argument("--report-to", default="none")
    parser.add_argument("--fault", default=None, help="a fault of faults.FAULTS to inject")
    parser.add_argument("--fault-rank", type=int, default=1, help="the process the fault happens on")
    parser.add_argument("--fault-step", type=int, default=2, help="the optimizer step it happens at")
    args = parser.parse_args()

    out = Path(args.out)
    run_dir = (out / "run").resolve()
    opened: list[str] = []

    def audit(event: str, info: tuple) -> None:
        if event == "open" and isinstance(info[0], (str, os.PathLike)) and isinstance(info[1], str):
            path, mode = os.fspath(info[0]), info[1]
            if any(m in mode for m in "wax+") and os.path.abspath(path).startswith(str(run_dir)):
                opened.append(os.path.relpath(os.path.abspath(path), run_dir))

    sys.addaudithook(audit)

    import torch

    from videoopd.data.annotations import load_annotations
    from videoopd.qwen.models import is_fsdp_sharded, prepare_policy
    from videoopd.qwen.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer
    from videoopd.train import resolve_config
    from videoopd.training import loop
    from videoopd.training.distributed import leave_process_group
    from videoopd.training.loop import make_accelerator
    from videoopd.training.post_training import run_post_training
    from videoopd.training.preemption import Preempted

    # FSDP2's all-gathers by the loop's phase (rollout, teacher, student, optimizer; "other" outside a step)
    all_gathers: dict[str, int] = {}
    phase = {"name": "other"}
    timed = loop.PhaseTimer.__call__

    @contextlib.contextmanager
    def marked(self, name):
        phase["name"] = name
        try:
            with timed(self, name):
                yield
        finally:
            phase["name"] = "other"

    loop.PhaseTimer.__call__ = marked
    gather_name = "all_gather_single" if hasattr(torch.distributed, "all_gather_single") else "all_gather_into_tensor"
    gather = getattr(torch.distributed, gather_name)

    def counted(*a, **k):
        all_gathers[phase["name"]] = all_gathers.get(phase["name"], 0) + 1
        return gather(*a, **k)

    setattr(torch.distributed, gather_name, counted)

    cfg = resolve_config(
        [
            "--student",
            "s",
            "--teacher",
            "t",
            "--device",
            "cpu",
            "--objective",
            args.objective,
            "--reduction",
            args.reduction,
            "--per-device-train-batch-size",
            str(args.per_device_train_batch_size),
            "--gradient-accumulation-steps",
            str(args.gradient_accumulation_steps),
            # with --rounds the curriculum sets the step count (a --max-steps given is refused)
            *(["--max-steps", str(args.steps)] if not args.rounds else []),
            "--learning-rate",
            "3e-3",
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--eval-steps",
            str(args.steps if args.eval_steps is None else args.eval_steps),
            "--eval-limit",
            str(args.eval_limit),
            "--rollout-batch-size",
            str(args.rollout_batch_size),
            "--per-device-eval-batch-size",
            "2",
            "--min-pixels",
            str(56 * 56),
            "--max-pixels",
            str(64 * 96),
            "--output-dir",
            str(run_dir),
            "--no-progress",
            "--gradient-checkpointing",
            "false",
            "--lora-r",
            str(args.lora_r),
            "--save-steps",
            str(args.save_steps),
            "--rounds",
            str(args.rounds),
            "--round-size",
            str(args.round_size),
            "--algo",
            args.algo,
            "--num-generations",
            "3",
            "--teacher-iou-min",
            "0",  # random tiny teachers answer nothing right
            "--report-to",
            args.report_to,
            *(["--ddp_timeout", str(args.ddp_timeout)] if args.ddp_timeout else []),
            "--gather-for-generation",
            args.gather_for_generation,
            *(["--resume-from-checkpoint", args.resume_from_checkpoint] if args.resume_from_checkpoint else []),
        ]
    )
    if args.unsynchronised:
        through = loop.policy_head_forward
        loop.policy_head_forward = lambda wrapper, model, inputs, fn: through(model, model, inputs, fn)
    if args.fault:
        import faults  # this folder's

        faults.install(args.fault, args.fault_rank, args.fault_step)
    accelerator = make_accelerator(cfg)
    tok = build_tiny_tokenizer("qwen2_5_vl")
    proc = build_tiny_processor("qwen2_5_vl", tok)
    student = build_tiny_model("qwen2_5_vl", tok, seed=1, hidden_size=32).to(getattr(torch, args.student_dtype))
    student = prepare_policy(student, trainable=True, gradient_checkpointing=False)
    teacher = build_tiny_model("qwen2_5_vl", tok, seed=2, hidden_size=64)
    if args.teacher_head_rows:
        teacher.resize_token_embeddings(args.teacher_head_rows)
    teacher = prepare_policy(teacher, trainable=False)
    records, _ = load_annotations(args.data)
    seen: dict = {"step_records": []}

    def on_step(run, row, record_ids):  # the trained model, the records this process drew for the step
        seen["model"] = run.model
        seen["step_records"].append(record_ids)

    try:
        summary = run_post_training(
            cfg, accelerator, student, teacher, proc, records, records, log=lambda *_: None, on_step=on_step
        )
    except Preempted as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    model = seen["model"]
    state = accelerator.get_state_dict(model) if accelerator.is_fsdp2 else None
    if accelerator.is_main_process:
        if state is None:
            state = accelerator.unwrap_model(model).state_dict()
        torch.save({k: v.detach().cpu() for k, v in state.items()}, out / "weights.pt")
    (out / f"rank{accelerator.process_index}.json").write_text(
        json.dumps(
            {
                "world": accelerator.num_processes,
                "distributed_type": str(accelerator.distributed_type),
                "losses": [row["loss"] for row in summary.steps],
                "reverse_kl": [row.get("reverse_kl") for row in summary.steps],
                "step_records": seen["step_records"],
                "evals": summary.evals,
                "rounds": summary.rounds,
                "rows": summary.steps,
                "opened_for_writing": sorted(set(opened)),
                "student_sharded": is_fsdp_sharded(model),
                "teacher_sharded": is_fsdp_sharded(teacher),  # placed in place by the run
                "trained_dtypes": sorted({str(p.dtype) for p in model.parameters() if p.requires_grad}),
                "all_gathers": all_gathers,
                "process_group_timeout_s": process_group_timeout(),
            },
            default=str,
        )
        + "\n"
    )
    leave_process_group()  # as the commands do
    return 0


def process_group_timeout() -> float | None:
    """The seconds the default process group's collectives wait (None on one process)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return None
    group = dist.distributed_c10d._get_default_group()
    return group._get_backend(torch.device("cpu")).options._timeout.total_seconds()


if __name__ == "__main__":
    sys.exit(main())
