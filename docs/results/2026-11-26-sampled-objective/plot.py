"""Curves of the sampled objective's variance reductions on the demo (docs/results/2026-11-26-sampled-objective)."""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

src, out = Path(sys.argv[1]), Path(sys.argv[2])
S = "--objective sampled --lr 2e-4"
RUNS = [
    ("x-s0", "exact (demo default), seed 0", "(none: --objective full --lr 3e-4)"),
    ("r0-sampled", "sampled, seed 0", S),
    ("r1-clip2", "sampled + advantage clip 2, seed 0", S + " --advantage-clip 2"),
    ("r2-group4", "sampled + 4 answers/prompt baseline, seed 0", S + " --num-generations 4 --batch-size 2"),
    ("r3-warmup20", "sampled + 20 warm-up steps, seed 0", S + " --warmup-steps 20"),
    (
        "c-s0",
        "sampled + all three, seed 0",
        S + " --advantage-clip 2 --num-generations 4 --batch-size 2 --warmup-steps 20",
    ),
    ("r4-clip1", "sampled + advantage clip 1, seed 0", S + " --advantage-clip 1"),
    ("x-s1", "exact, seed 1", "--seed 1"),
    ("k-s1", "sampled + clip 2, seed 1", S + " --advantage-clip 2 --seed 1"),
    ("x-s2", "exact, seed 2", "--seed 2"),
    ("k-s2", "sampled + clip 2, seed 2", S + " --advantage-clip 2 --seed 2"),
]


def load(name):
    rows = [json.loads(l) for l in (src / name / "metrics.jsonl").read_text().splitlines() if l.strip()]
    steps = [r for r in rows if "loss" in r]
    evals = sorted((r["step"], r["eval/mIoU"]) for r in rows if "eval/mIoU" in r)
    return steps, evals


def smooth(xs, w=20):
    return [sum(xs[max(0, i - w + 1) : i + 1]) / len(xs[max(0, i - w + 1) : i + 1]) for i in range(len(xs))]


fig, axes = plt.subplots(2, 2, figsize=(13, 9))
table = [
    "| run | command (all: `python -m videoopd.train --no-progress`) | reverse KL, steps 1-20 -> 181-200 | held-out mIoU at 0 / 50 / 100 / 150 / 200 |",
    "|---|---|---|---|",
]
for name, label, flags in RUNS:
    if not (src / name / "metrics.jsonl").exists():
        continue
    steps, evals = load(name)
    kl = [r["reverse_kl"] for r in steps]
    row = 0 if name.endswith("s0") or name.startswith("r") else 1
    style = "-" if name.startswith("x") else "--"
    axes[row][0].plot([s for s, _ in evals], [m for _, m in evals], style, marker="o", label=label)
    axes[row][1].plot([r["step"] for r in steps], smooth(kl), style, label=label)
    first, last = sum(kl[:20]) / 20, sum(kl[-20:]) / 20
    table.append(
        f"| {label} | `{flags}` | {first:.3f} -> {last:.3f} ({100 * (last - first) / first:+.0f}%) | "
        + " / ".join(f"{m:.1f}" for _, m in evals)
        + " |"
    )
for row, title in ((0, "seed 0: one remedy at a time"), (1, "seeds 1 and 2: exact vs sampled + clip")):
    axes[row][0].set(title=f"held-out mIoU ({title})", xlabel="optimizer step", ylabel="mIoU")
    axes[row][1].set(
        title="reverse KL per answer token, 20-step mean", xlabel="optimizer step", ylabel="nats/token", ylim=(0, 1.5)
    )
    for ax in axes[row]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
fig.tight_layout()
out.mkdir(parents=True, exist_ok=True)
fig.savefig(out / "curves.png", dpi=110)
(out / "results.md").write_text("\n".join(table) + "\n")
print("\n".join(table))
