"""The OPD step with the teacher as a Ray service against the colocated teacher, on the CPU demo.

    python -m bench.teacher_service [--steps 4] [--grad-accum 8] [--delay 0.4] [--out runs/bench-teacher-service]

Runs the demo (``python -m videoopd.train``) twice with the same seed: the teacher colocated,
then as a service of one replica that sleeps ``--delay`` seconds after each micro-batch (a tiny
teacher made about as slow as the student's phase). Prints, per run, the mean over the steps
after the first (warm-up) of: the step time, its phases, the student's wait for the teacher,
the bytes the scores brought, and the step against the sum of its phases (rollout + the
teacher's time on the step + the student's time outside the wait + optimizer) and the
teacher + student part against the sum of those two phases. Same losses are checked too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import mean

DEMO = [
    "--demo-videos",
    "16",
    "--eval-steps",
    "0",
    "--eval-limit",
    "1",
    "--eval-on-start",
    "false",
    "--eval-teacher",
    "false",
    "--save-final",
    "false",
    "--no-progress",
    "--per-device-train-batch-size",
    "2",
    "--overwrite",
]


def run(out: Path, steps: int, grad_accum: int, extra: list[str]) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "videoopd.train",
        *DEMO,
        "--max-steps",
        str(steps),
        "--gradient-accumulation-steps",
        str(grad_accum),
        "--output-dir",
        str(out),
        *extra,
    ]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def summary(rows: list[dict]) -> dict[str, float]:
    rows = rows[1:]  # the first step warms up (allocations, the service's first video decode)
    m = {
        k: mean(r[k] for r in rows)
        for k in (
            "step_time_s",
            "time/rollout_s",
            "time/teacher_s",
            "time/student_s",
            "time/optimizer_s",
            "time/teacher_wait_s",
            "time/teacher_service_s",
            "teacher_bytes",
        )
    }
    teacher = m["time/teacher_s"] + m["time/teacher_service_s"]  # one of the two is ~0
    student = m["time/student_s"] - m["time/teacher_wait_s"]
    phases = m["time/rollout_s"] + teacher + student + m["time/optimizer_s"]
    m["step_over_phases"] = m["step_time_s"] / phases
    m["teacher_student_over_sum"] = (m["time/teacher_s"] + m["time/student_s"]) / (teacher + student)
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=8)
    parser.add_argument("--delay", type=float, default=0.4, help="seconds the replica sleeps per micro-batch")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-teacher-service"))
    args = parser.parse_args()
    colocated = run(args.out / "colocated", args.steps, args.grad_accum, [])
    service = run(
        args.out / "service",
        args.steps,
        args.grad_accum,
        ["--teacher-placement", "service", "--teacher-delay-s", str(args.delay)],
    )
    worst = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(colocated, service))
    print(
        f"{args.steps} steps x {args.grad_accum} micro-batches of 2 prompts; mean of steps 2-{args.steps}; "
        f"largest relative loss difference {worst:.1e}"
    )
    print(
        "| run | step s | rollout s | teacher s | student s (wait) | bytes/step | step / phases | "
        "(teacher+student) / sum |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in (("colocated", colocated), (f"service, +{args.delay:g} s/micro-batch", service)):
        m = summary(rows)
        teacher = m["time/teacher_s"] + m["time/teacher_service_s"]
        print(
            f"| {name} | {m['step_time_s']:.2f} | {m['time/rollout_s']:.2f} | {teacher:.2f} | "
            f"{m['time/student_s']:.2f} ({m['time/teacher_wait_s']:.2f}) | {m['teacher_bytes']:.0f} | "
            f"{m['step_over_phases']:.2f} | {m['teacher_student_over_sum']:.2f} |"
        )


if __name__ == "__main__":
    main()
