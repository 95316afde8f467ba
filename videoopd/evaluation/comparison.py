"""Side-by-side results of training runs (``python -m videoopd.compare``): held-out mIoU curves
against optimizer steps, training seconds and student-generated tokens, and a table of final
metrics and costs, read from each run folder's ``metrics.jsonl`` (and ``eval_teacher.json``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunCurve", "read_run"]


@dataclass
class RunCurve:
    """One run's held-out evaluations and what they cost.

    ``evals``: rows {step, seconds, tokens, rollouts, R1@0.3 ... mIoU}, seconds / tokens /
    rollouts being the training time (optimizer steps only), student-generated answer tokens
    and rollouts up to that step. ``totals``: the same at the last step, plus peak memory."""

    name: str
    evals: list[dict[str, float]] = field(default_factory=list)
    totals: dict[str, float] = field(default_factory=dict)
    teacher_mIoU: float | None = None


def read_run(name: str, folder: str | Path) -> RunCurve:
    """The curve of the run in ``folder`` (its ``metrics.jsonl``); ValueError if it has none."""
    folder = Path(folder)
    path = folder / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{folder}: no metrics.jsonl (not a finished run folder)")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    cumulative = {0: (0.0, 0.0, 0.0)}
    seconds = tokens = rollouts = 0.0
    peak = 0.0
    for row in rows:
        if "loss" in row:
            seconds += row.get("step_time_s", 0.0)
            tokens += row.get("answer_tokens", 0)
            rollouts += row.get("rollouts", 0)
            peak = max(peak, row.get("peak_mem_mb", 0.0))
            cumulative[row["step"]] = (seconds, tokens, rollouts)
    curve = RunCurve(name)
    for row in rows:
        if "eval/mIoU" in row:
            s, t, r = cumulative.get(row["step"], (seconds, tokens, rollouts))
            curve.evals.append(
                {
                    "step": row["step"],
                    "seconds": s,
                    "tokens": t,
                    "rollouts": r,
                    **{k[5:]: v for k, v in row.items() if k.startswith("eval/")},
                }
            )
    last = curve.evals[-1] if curve.evals else {}
    curve.totals = {
        "steps": max(cumulative),
        "seconds": seconds,
        "tokens": tokens,
        "rollouts": rollouts,
        "peak_mem_mb": peak,
        **{k: last.get(k) for k in ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")},
    }
    teacher = folder / "eval_teacher.json"
    if teacher.is_file():
        curve.teacher_mIoU = json.loads(teacher.read_text(encoding="utf-8"))["mIoU"]
    return curve


def comparison_table(curves: Sequence[RunCurve]) -> str:
    """A Markdown table: final held-out metrics and the run's costs, one row per run."""
    head = (
        "| method | steps | R1@0.3 | R1@0.5 | R1@0.7 | mIoU | training s | rollouts | generated tokens | "
        "peak memory MB |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def num(value: Any, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    for c in curves:
        t = c.totals
        lines.append(
            f"| {c.name} | {t['steps']} | {num(t['R1@0.3'], '.2f')} | {num(t['R1@0.5'], '.2f')} | "
            f"{num(t['R1@0.7'], '.2f')} | {num(t['mIoU'], '.2f')} | {t['seconds']:.1f} | {int(t['rollouts'])} | "
            f"{int(t['tokens'])} | {t['peak_mem_mb']:.0f} |"
        )
    teacher = next((c.teacher_mIoU for c in curves if c.teacher_mIoU is not None), None)
    if teacher is not None:
        lines.append(f"\nTeacher held-out mIoU: {teacher:.2f}")
    return "\n".join(lines) + "\n"


def plot_curves(curves: Sequence[RunCurve], path: str | Path) -> None:
    """A PNG of held-out mIoU against optimizer steps, training seconds and generated tokens,
    one line per run, the teacher's mIoU as a horizontal line (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    teacher = next((c.teacher_mIoU for c in curves if c.teacher_mIoU is not None), None)
    for ax, (key, label) in zip(
        axes, (("step", "optimizer steps"), ("seconds", "training seconds"), ("tokens", "student-generated tokens"))
    ):
        for c in curves:
            ax.plot([e[key] for e in c.evals], [e["mIoU"] for e in c.evals], marker="o", label=c.name)
        if teacher is not None:
            ax.axhline(teacher, color="gray", linestyle="--", label="teacher")
        ax.set_xlabel(label)
        ax.set_ylabel("held-out mIoU")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# The training curve a run's plot shows beside its held-out mIoU: the first of these its rows carry.
TRAINING_CURVES = (("reverse_kl", "reverse KL per answer token"), ("reward", "reward per answer"), ("loss", "loss"))


def plot_run(folder: str | Path, path: str | Path) -> None:
    """A PNG of one run (``folder``'s ``metrics.jsonl``): its training curve (reverse KL for OPD,
    the reward for GRPO, else the loss) and its held-out mIoU against optimizer steps, the
    teacher's as a horizontal line (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    rows = [
        json.loads(line) for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    steps = [r for r in rows if "loss" in r]
    key, label = next(((k, name) for k, name in TRAINING_CURVES if any(k in r for r in steps)), TRAINING_CURVES[-1])
    curve = read_run(folder.name, folder)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot([r["step"] for r in steps if key in r], [r[key] for r in steps if key in r])
    left.set_xlabel("optimizer steps")
    left.set_ylabel(label)
    right.plot([e["step"] for e in curve.evals], [e["mIoU"] for e in curve.evals], marker="o", label="student")
    if curve.teacher_mIoU is not None:
        right.axhline(curve.teacher_mIoU, color="gray", linestyle="--", label="teacher")
    right.set_xlabel("optimizer steps")
    right.set_ylabel("held-out mIoU")
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_comparison(runs: dict[str, str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Read ``runs`` ({method: run folder}) and write ``comparison.md``, ``comparison.json``
    and ``comparison.png`` to ``out_dir``; returns the JSON content."""
    out_dir = Path(out_dir)
    curves = [read_run(name, folder) for name, folder in runs.items()]
    table = comparison_table(curves)
    (out_dir / "comparison.md").write_text(table, encoding="utf-8")
    data = {"runs": {c.name: {**asdict(c), "folder": str(runs[c.name])} for c in curves}}
    (out_dir / "comparison.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    try:
        plot_curves(curves, out_dir / "comparison.png")
        data["plot"] = str(out_dir / "comparison.png")
    except ImportError:
        data["plot"] = None  # matplotlib not installed: the table and JSON still stand
    return {**data, "table": table}
