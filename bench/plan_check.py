"""``python -m bench.plan_check``: ``videoopd.plan``'s memory against the measured peak of the CPU step.

    python -m bench.plan_check                       # the sizes of docs/scaling-out.md, ~15 minutes on 2 cores
    python -m bench.plan_check --sizes 256x2/512x2/151936/1024 --json out.json
    python -m bench.plan_check --device cuda --sizes qwen3-vl-2b/qwen3-vl-8b/4096,qwen3-vl-2b/qwen3-vl-8b/16384

Each size runs in its own process (fresh RSS; glibc returning freed buffers as ``bench.isolated``
does): it builds the tokenizer and processor, reads the resident memory (the baseline: Python,
torch, transformers), builds the student and teacher (random Qwen3-VL from configs, fp32, gradient
checkpointing) and runs ``--steps`` OPD steps of the loop's objective (``bench.opd_step``'s step,
``DistillationObjective``, exact reverse KL), reading the peak RSS of each phase. The plan
(:func:`videoopd.training.memory_plan.plan_memory`, one process, fp32, the step's measured prompt
and answer lengths) is compared with the measured peak over the baseline, per phase and overall.
A size is ``WIDTHxLAYERS/TEACHER_WIDTHxLAYERS/VOCAB/VIDEO_TOKENS``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MIB = 2**20
VISION = (256, 2)  # width and blocks of both models' vision towers
MEASURED = ("size", "device", "baseline_mib", "video_tokens", "prompt_tokens", "answer_tokens", "measured_mib")
PHASES = ("rollout", "teacher", "student", "optimizer")
# Two widths at the real vocabulary (the weights dominate) and at a small one (the video's
# activations dominate), each at a short and a long video.
DEFAULT_SIZES = ("256x2/512x2/151936/1024", "256x2/512x2/151936/8192", "256x2/512x2/4096/4096", "512x2/768x2/4096/8192")


def parse_size(text: str) -> dict:
    from bench.opd_step import ARCHITECTURES, QWEN_VOCAB

    parts = text.split("/")
    if len(parts) == 3 and parts[0] in ARCHITECTURES and parts[1] in ARCHITECTURES and parts[2].isdigit():
        return {"arch": parts[:2], "vocab": QWEN_VOCAB, "video_tokens": int(parts[2])}
    try:
        student, teacher, vocab, video = parts
        (sw, sl), (tw, tl) = (map(int, student.split("x")), map(int, teacher.split("x")))
        return {
            "width": sw,
            "layers": sl,
            "teacher_width": tw,
            "teacher_layers": tl,
            "vocab": int(vocab),
            "video_tokens": int(video),
        }
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a size is WIDTHxLAYERS/TEACHER_WIDTHxLAYERS/VOCAB/VIDEO_TOKENS or "
            f"STUDENT/TEACHER/VIDEO_TOKENS of {', '.join(ARCHITECTURES)}, got {text!r}"
        ) from None


def measure(size: dict, steps: int, device_name: str = "cpu") -> dict:
    """In this process: the baseline memory, then each phase's peak over ``steps`` OPD steps (CPU:
    RSS, fp32; CUDA: the allocator's, bf16)."""
    import torch

    from bench.isolated import proc_status, reset_peak_rss
    from bench.opd_step import Clock, Grid, StepRunner, build_model, qwen3_vl_config, video_batch
    from videoopd.qwen.tiny import build_tiny_processor, build_tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer("qwen3_vl")
    processor = build_tiny_processor("qwen3_vl", tokenizer)
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32

    def used() -> int:
        return torch.cuda.max_memory_allocated(device) if cuda else proc_status("VmHWM")

    def reset() -> None:
        torch.cuda.reset_peak_memory_stats(device) if cuda else reset_peak_rss()

    baseline = torch.cuda.memory_allocated(device) if cuda else proc_status("VmRSS")
    s_shape, t_shape = shapes(size)
    grid = Grid(
        s_shape,
        t_shape,
        vocab=size["vocab"],
        video_tokens=(size["video_tokens"],),
        answer_tokens=16,
        steps=steps,
        providers=("ours",),
        objectives=("full",),
    )
    s_config = qwen3_vl_config(tokenizer, s_shape, grid.vocab)
    t_config = qwen3_vl_config(tokenizer, t_shape, grid.vocab)
    student = build_model(s_config, tokenizer, device, dtype, 1, trainable=True)
    teacher = build_model(t_config, tokenizer, device, dtype, 2, trainable=False)
    runner = StepRunner("ours", "full", student, teacher, processor, device, grid)
    batch = video_batch(processor, size["video_tokens"], 1)
    video_tokens = int((batch["inputs"]["input_ids"] == student.config.video_token_id).sum())
    peaks = {p: 0 for p in PHASES}

    class PhasePeaks(Clock):
        def lap(self, name: str) -> None:
            super().lap(name)
            peaks[name] = max(peaks[name], used() - baseline)
            reset()

    for step in range(steps):
        reset()
        _, rollout = runner.step(batch, step + 1, PhasePeaks(device))
    return {
        "size": size,
        "device": device.type,
        "baseline_mib": baseline / MIB,
        "video_tokens": video_tokens,
        "prompt_tokens": int(rollout.prompt_length),
        "answer_tokens": grid.answer_tokens,
        "measured_mib": {p: v / MIB for p, v in peaks.items()},
    }


def shapes(size: dict):
    """(student, teacher) ``bench.opd_step.ModelShape`` of a size: vision towers of width 256, 2 blocks."""
    from bench.opd_step import ARCHITECTURES, ModelShape

    if "arch" in size:
        return ARCHITECTURES[size["arch"][0]], ARCHITECTURES[size["arch"][1]]
    return (
        ModelShape.of_width(size["width"], size["layers"], VISION[0], VISION[1]),
        ModelShape.of_width(size["teacher_width"], size["teacher_layers"], VISION[0], VISION[1]),
    )


def plan_of(row: dict):
    from bench.opd_step import qwen3_vl_config
    from videoopd.qwen.tiny import build_tiny_tokenizer
    from videoopd.training.memory_plan import plan_memory

    tokenizer = build_tiny_tokenizer("qwen3_vl")
    s_shape, t_shape = shapes(row["size"])
    vocab = row["size"]["vocab"]
    cuda = row.get("device") == "cuda"  # the step's AdamW steps the bf16 weights themselves: no masters
    return plan_memory(
        qwen3_vl_config(tokenizer, s_shape, vocab),
        qwen3_vl_config(tokenizer, t_shape, vocab),
        gpus=1,
        engine="ddp",
        teacher_placement="replicate",
        dtype="bf16" if cuda else "fp32",
        device="cuda" if cuda else "cpu",
        master_weights="none",
        video_tokens=row["video_tokens"],
        text_tokens=row["prompt_tokens"] - row["video_tokens"],
        answer_tokens=row["answer_tokens"],
        gpu_memory_gib=1024,
    )


def compare(row: dict) -> dict:
    plan = plan_of(row)
    planned = {p: plan.phase_bytes(p) / MIB for p in PHASES}
    measured = row["measured_mib"]
    peak_m, peak_p = max(measured.values()), plan.peak_bytes / MIB
    return {
        **{k: v for k, v in row.items() if k in MEASURED},
        "planned_mib": planned,
        "peak_measured_mib": peak_m,
        "peak_planned_mib": peak_p,
        "error": peak_p / peak_m - 1,
        "phase_error": {p: planned[p] / measured[p] - 1 for p in PHASES if measured[p] > 0},
    }


def run_child(size: str, steps: int, device: str = "cpu") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        env = dict(
            os.environ,
            MALLOC_MMAP_THRESHOLD_="65536",
            PYTHONPATH=os.pathsep.join(
                [str(Path(__file__).resolve().parent.parent)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
            ),
        )
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.plan_check",
                "--child",
                size,
                "--steps",
                str(steps),
                "--device",
                device,
                "--json",
                str(out),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"size {size} failed (exit {proc.returncode}): {proc.stderr[-1500:]}")
        return json.loads(out.read_text())


def markdown(rows: list[dict]) -> str:
    lines = [
        "| student / teacher / V / video tokens | sequence | measured peak (MiB) | planned (MiB) | error | "
        "per phase: measured / planned (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["size"]
        phases = "; ".join(f"{p} {r['measured_mib'][p]:,.0f} / {r['planned_mib'][p]:,.0f}" for p in PHASES)
        models = (
            " / ".join(s["arch"])
            if "arch" in s
            else f"{s['width']}x{s['layers']} / {s['teacher_width']}x{s['teacher_layers']}"
        )
        sequence = r["prompt_tokens"] + r["answer_tokens"]
        lines.append(
            f"| {models} / {s['vocab']:,} / {r['video_tokens']:,} | {sequence:,} | "
            f"{r['peak_measured_mib']:,.0f} | {r['peak_planned_mib']:,.0f} | {100 * r['error']:+.1f}% | "
            f"{phases} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.plan_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        type=lambda t: [parse_size(x) and x for x in t.split(",")],
        default=list(DEFAULT_SIZES),
        help="comma-separated sizes (default: %(default)s)",
    )
    parser.add_argument("--steps", type=int, default=2, help="OPD steps a size (the first creates AdamW's state)")
    parser.add_argument("--tolerance", type=float, default=0.15, help="exit 1 if any size's error is larger")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--device", default="cpu", help="cpu (fp32, peak RSS) or cuda (bf16, allocator peak)")
    parser.add_argument("--from", dest="source", type=Path, help="a --json of an earlier run: plan again, no step")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.json.write_text(json.dumps(measure(parse_size(args.child), args.steps, args.device)))
        return 0
    rows = [compare(r) for r in json.loads(args.source.read_text())] if args.source else []
    for size in [] if args.source else args.sizes:
        rows.append(compare(run_child(size, args.steps, args.device)))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    worst = max(abs(r["error"]) for r in rows)
    print(f"largest error {100 * worst:.1f}% (tolerance {100 * args.tolerance:.0f}%)")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
