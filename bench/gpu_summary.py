"""``python -m bench.gpu_summary OUT``: the short summary of a ``bench/gpu_check.sh`` run, from the files in OUT.

Reads the part lines of OUT/gpu_check.log, the last line of OUT/kernel_tests.log, the bench
results (OUT/<device>-<date>.json, the ``pytest bench/`` format) and OUT/opd_step.json; prints
the summary and writes it to OUT/summary.md. The issue's GPU goals are checked where the rows
exist: fused_reverse_kl forward + backward at >= 60% of the bf16 dense peak and >= 3x Liger's
fused linear JSD at the same shape; token_logprobs forward at >= 65% of the peak; and the
speed goals relative to another row (issue 25): fused_policy_gradient_loss >= 1.25x naive and
faster than Liger's fused linear GRPO loss, fused_reverse_kl forward + backward at >= 90% and
topk_logprobs at >= 85% of the speed of their matmuls alone (``matmul-floor``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.report import Row, read_json

PART_PREFIX = "PART\t"
GOALS = (
    # (kernel, mode, minimum fraction of the bf16 dense peak, peer to beat, by how much)
    ("fused_reverse_kl", "full", 0.60, "liger-fused-linear-jsd", 3.0),
    ("token_logprobs", "forward", 0.65, None, None),
)
RELATIVE_GOALS = (
    # (kernel, mode, our provider (None: our fastest row), the other row, its time / ours at least)
    ("policy_gradient_loss", "full", "ours-torch", "naive", 1.25),
    ("policy_gradient_loss", "full", "ours-torch", "liger-fused-linear-grpo", 1.0),
    ("fused_reverse_kl", "full", None, "matmul-floor", 0.90),
    ("topk_logprobs", "forward", None, "matmul-floor", 0.85),
)


def _parts(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [
        line[len(PART_PREFIX) :].rstrip("\n").split("\t")
        for line in log.read_text(errors="replace").splitlines()
        if line.startswith(PART_PREFIX)
    ]


def _pytest_outcome(path: Path) -> str:
    """pytest's closing line (``12 passed, 1 skipped in 30s``), or, for a run that was killed
    before it, the outcome letters of its progress lines counted."""
    if not path.exists():
        return "no log"
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("=") or line[:1].isdigit():
            if " passed" in line or " failed" in line or " error" in line or " skipped" in line:
                return line.strip("= ")
    progress = "".join(line.split(" [")[0] for line in lines if set(line.split(" [")[0]) <= set(".FEsxX"))
    counts = {
        name: progress.count(ch)
        for ch, name in (
            (".", "passed"),
            ("F", "failed"),
            ("E", "errors"),
            ("s", "skipped"),
            ("x", "xfailed"),
            ("X", "xpassed"),
        )
    }
    done = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    return f"no closing line (stopped early?); so far: {done or 'nothing'}"


def _fmt_mb(mb: float | None) -> str:
    if mb is None:
        return "? MB"
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.3g} MB"


def _best_ours(rows: list[Row], kernel: str, mode: str, tokens: int) -> Row | None:
    ours = [
        r
        for r in rows
        if r.kind == "speed"
        and r.kernel == kernel
        and r.mode == mode
        and r.tokens == tokens
        and r.family == "ours"
        and r.ok
    ]
    return min(ours, key=lambda r: r.median_ms) if ours else None


def _row(rows: list[Row], kernel: str, mode: str, tokens: int, provider: str) -> Row | None:
    for r in rows:
        if r.kind == "speed" and (r.kernel, r.mode, r.tokens, r.provider) == (kernel, mode, tokens, provider):
            return r
    return None


def bench_lines(rows: list[Row]) -> list[str]:
    lines = []
    keys = sorted({(r.kernel, r.mode) for r in rows if r.kind == "speed"})
    for kernel, mode in keys:
        for tokens in sorted({r.tokens for r in rows if r.kind == "speed" and (r.kernel, r.mode) == (kernel, mode)}):
            best = _best_ours(rows, kernel, mode, tokens)
            cells = []
            if best is not None:
                peak = f", {100 * best.peak_fraction:.0f}% of peak" if best.peak_fraction is not None else ""
                cells.append(
                    f"ours best `{best.provider}` {best.median_ms:.3g} ms, {best.tflops:.3g} TFLOP/s{peak}, "
                    f"{_fmt_mb(best.peak_extra_mb)}"
                )
            else:
                cells.append("no ours row")
            for other in sorted(
                {
                    r.provider
                    for r in rows
                    if r.kind == "speed"
                    and r.family != "ours"
                    and (r.kernel, r.mode, r.tokens) == (kernel, mode, tokens)
                }
            ):
                r = _row(rows, kernel, mode, tokens, other)
                if r.ok and best is not None:
                    cells.append(f"`{other}` {r.median_ms:.3g} ms ({r.median_ms / best.median_ms:.2f}x ours' time)")
                else:
                    cells.append(f"`{other}` {r.status.split(' (', 1)[0]}")
            lines.append(f"- {kernel} {mode}, N = {tokens:,}: " + "; ".join(cells))
    return lines


def goal_lines(rows: list[Row]) -> list[str]:
    lines = []
    for kernel, mode, fraction, peer, factor in GOALS:
        for tokens in sorted({r.tokens for r in rows if (r.kernel, r.mode) == (kernel, mode) and r.kind == "speed"}):
            best = _best_ours(rows, kernel, mode, tokens)
            if best is None or best.peak_fraction is None:
                lines.append(f"- {kernel} {mode} N = {tokens:,}: no measured row with a known peak")
                continue
            verdict = "met" if best.peak_fraction >= fraction else "NOT met"
            text = (
                f"- {kernel} {mode} N = {tokens:,}: {100 * best.peak_fraction:.0f}% of peak "
                f"(goal >= {100 * fraction:.0f}%): {verdict}"
            )
            if peer:
                theirs = _row(rows, kernel, mode, tokens, peer)
                if theirs is not None and theirs.ok:
                    speedup = theirs.median_ms / best.median_ms
                    text += (
                        f"; {speedup:.2f}x `{peer}` (goal >= {factor:g}x): {'met' if speedup >= factor else 'NOT met'}"
                    )
                else:
                    text += f"; `{peer}`: {theirs.status if theirs else 'no row'}"
            floor = _row(rows, kernel, mode, tokens, "matmul-floor")
            if floor is not None and floor.ok:
                text += f"; at {100 * floor.median_ms / best.median_ms:.0f}% of the speed of its matmuls alone"
            lines.append(text)
    return lines


def relative_goal_lines(rows: list[Row]) -> list[str]:
    lines = []
    for kernel, mode, ours, other, factor in RELATIVE_GOALS:
        for tokens in sorted({r.tokens for r in rows if (r.kernel, r.mode) == (kernel, mode) and r.kind == "speed"}):
            mine = _best_ours(rows, kernel, mode, tokens) if ours is None else _row(rows, kernel, mode, tokens, ours)
            theirs = _row(rows, kernel, mode, tokens, other)
            head = f"- {kernel} {mode} N = {tokens:,}, `{mine.provider if mine else ours}` against `{other}`"
            if mine is None or not mine.ok or theirs is None or not theirs.ok:
                why = "no row" if mine is None or theirs is None else (mine.status if not mine.ok else theirs.status)
                lines.append(f"{head}: {why}")
                continue
            ratio = theirs.median_ms / mine.median_ms
            verdict = "met" if ratio >= factor else "NOT met"
            lines.append(f"{head}: {ratio:.2f}x its speed (goal >= {factor:g}x): {verdict}")
    return lines


def step_lines(path: Path) -> list[str]:
    """The OPD step grid (``python -m bench.opd_step``'s JSON report): a line per row, then
    the longest video each provider ran."""
    if not path.exists():
        return ["- no opd_step.json (the step did not start or was stopped before writing)"]
    record = json.loads(path.read_text())
    meta, rows = record["meta"], record["rows"]
    lines = [
        f"- {meta['device']}: student {meta['student']}, teacher {meta['teacher']}, V = {meta['vocab']:,}, "
        f"{meta['dtype']}, at most {meta['answer_tokens']} answer tokens; trl {meta.get('trl') or 'not installed'}"
    ]
    longest: dict[str, int] = {}
    for row in rows:
        name = row["provider"] if not row["provider"].startswith("ours") else f"{row['provider']} ({row['objective']})"
        if row["status"] != "ok":
            lines.append(f"  - {name}, {row['video_tokens_requested']:,} video tokens: {row['status']}")
            continue
        longest[name] = max(longest.get(name, 0), row["video_tokens"])
        mfu = f", MFU {100 * row['mfu']:.1f}%" if row.get("mfu") is not None else ""
        lines.append(
            f"  - {name}, {row['video_tokens']:,} video tokens: step {row['step_s']:.2f} s (rollout "
            f"{row['rollout_s']:.2f}, teacher {row['teacher_s']:.2f}, student {row['student_s']:.2f}, "
            f"optimizer {row['optimizer_s']:.2f}), peak growth {row['peak_growth_mib'] / 1024:.1f} GiB{mfu}"
        )
    if longest:
        lines.append("  - longest video run: " + ", ".join(f"{k} {v:,}" for k, v in longest.items()))
    return lines


def summary(out: Path) -> str:
    lines = ["# GPU check summary", ""]
    parts = _parts(out / "gpu_check.log")
    if parts:
        lines += ["| part | status | seconds |", "|---|---|---|"]
        lines += [f"| {p[0]} | {p[1] if len(p) > 1 else ''} | {p[2] if len(p) > 2 else ''} |" for p in parts]
        lines.append("")
    lines += ["## Kernel tests", "", f"- {_pytest_outcome(out / 'kernel_tests.log')}", ""]
    results = sorted(p for p in out.glob("*.json") if p.name != "opd_step.json")
    rows: list[Row] = []
    for path in results:
        try:
            file_rows, meta = read_json(path)
        except (KeyError, TypeError, ValueError):
            continue
        rows += file_rows
        lines += [
            f"## Kernel benchmarks ({path.name}: {meta.get('device_name')}, grid {meta.get('grid')}, "
            f"{meta.get('dtype')})",
            "",
        ]
    if rows:
        lines += bench_lines(rows) + ["", "Goals:", *goal_lines(rows), *relative_goal_lines(rows), ""]
    else:
        lines += ["## Kernel benchmarks", "", "- no results file", ""]
    lines += ["## OPD training step", "", *step_lines(out / "opd_step.json"), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.gpu_summary OUT", file=sys.stderr)
        return 2
    out = Path(args[0])
    text = summary(out)
    (out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
