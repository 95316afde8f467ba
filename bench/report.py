"""Benchmark results: one record per measured (or skipped) case, written as JSON, CSV, PNG, Markdown.

``python -m bench.report RESULTS.json`` rewrites the CSV, PNG and Markdown beside a JSON
file (e.g. after changing the table layout) without re-running anything.

The kernel benchmarks' rows are :class:`Row`; the writers every benchmark's reports go through
(any dataclass rows: :func:`write_json`, :func:`read_json`, :func:`merge_rows`,
:func:`write_csv_table`, :func:`markdown_table`, :func:`pyplot`, :func:`write_files`,
:func:`git_commit`) are here, once.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import subprocess
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .providers import OP_MODES, PROVIDER_NAMES, PROVIDER_NOTES

# Liger-Kernel's benchmark CSV columns (benchmark/data/all_benchmark_data.csv upstream names the
# last one liger_version and adds x_label; this project's issue 5 fixes the list below).
CSV_COLUMNS = (
    "kernel_name",
    "kernel_provider",
    "kernel_operation_mode",
    "metric_name",
    "metric_unit",
    "x_name",
    "x_value",
    "y_value_50",
    "y_value_20",
    "y_value_80",
    "extra_benchmark_config_str",
    "gpu_name",
    "timestamp",
    "version",
)

MB = 2**20
OK = "ok"
FORMATS = ("json", "csv", "md", "png")
REPO_ROOT = Path(__file__).resolve().parents[1]
R = TypeVar("R")


@dataclass
class Row:
    kind: str  # "speed" | "accuracy"
    kernel: str
    mode: str  # "forward" | "full"
    provider: str
    family: str  # "ours" | "floor" | "naive" | "peer"
    tokens: int
    vocab: int
    student_dim: int
    teacher_dim: int
    hidden_dim: int | None  # D of the single-model ops (D_t for teacher-side, D_s for student-side)
    topk: int | None
    dtype: str
    temperature: float
    status: str = OK  # "ok", or why there is no figure: "skipped: ...", "failed: ...", "OOM: ..."
    median_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    rounds: int | None = None
    flops: int | None = None
    tflops: float | None = None
    peak_fraction: float | None = None  # of the device's bf16 dense peak
    peak_extra_mb: float | None = None
    max_abs_error: float | None = None  # output vs float64
    grad_max_rel_error: float | None = None  # max |g - g64| / max |g64| over dh and dW
    timestamp: str = ""  # when this case ran (rows of several runs on one day may be merged)

    @property
    def ok(self) -> bool:
        return self.status == OK

    def config(self) -> dict:
        cfg = {"V": self.vocab, "D_s": self.student_dim, "D_t": self.teacher_dim}
        if self.hidden_dim is not None:
            cfg["D"] = self.hidden_dim
        if self.topk is not None:
            cfg["k"] = self.topk
        cfg.update(dtype=self.dtype, temperature=self.temperature)
        if self.rounds is not None:
            cfg["rounds"] = self.rounds
        if self.flops is not None:
            cfg["flops"] = self.flops
        cfg["status"] = self.status
        return cfg

    def table_key(self) -> tuple:
        return (self.kernel, self.mode, self.student_dim, self.teacher_dim, self.vocab)


# --------------------------------------------------------------------------------------------
# JSON


def write_json(path: Path, rows: Sequence[Any], meta: dict) -> None:
    """``{"meta": meta, "rows": [row as a dict, ...]}`` (rows: dataclass instances)."""
    payload = {"meta": meta, "rows": [dataclasses.asdict(r) for r in rows]}
    path.write_text(json.dumps(payload, indent=1) + "\n")


def read_json(path: Path, row_type: Callable[..., Any] = Row) -> tuple[list[Any], dict]:
    """The rows (as ``row_type``) and meta of a :func:`write_json` file."""
    payload = json.loads(path.read_text())
    return [row_type(**r) for r in payload["rows"]], payload["meta"]


def merge_rows(old_rows: Iterable[R], new_rows: Iterable[R], key: Callable[[R], Hashable]) -> list[R]:
    """The old rows with each replaced by the new row of the same ``key``, in their places;
    then the new rows no old one had."""
    fresh = {key(r): r for r in new_rows}
    merged = [fresh.pop(key(r), r) for r in old_rows]
    return merged + list(fresh.values())


def merge_runs(old_rows: list[Row], old_meta: dict, new_rows: list[Row], meta: dict) -> tuple[list[Row], dict]:
    """Rows of an earlier run of the same setup (device, grid, dtype, timing) that the new run
    did not re-measure are kept, so a large grid can be measured one --bench-ops at a time.
    A different setup replaces the earlier file."""
    same_setup = all(old_meta.get(k) == meta[k] for k in ("device_name", "grid", "dtype", "timing_mode"))
    if not same_setup:
        return new_rows, meta

    def key(r: Row):
        return (r.kind, r.kernel, r.mode, r.provider, r.tokens, r.vocab, r.student_dim, r.teacher_dim)

    return merge_rows(old_rows, new_rows, key), {**meta, "runs": old_meta.get("runs", []) + meta["runs"]}


# --------------------------------------------------------------------------------------------
# CSV (Liger's format)


def _metrics(row: Row) -> list[tuple[str, str, float | None, float | None, float | None]]:
    """(metric_name, metric_unit, y50, y20, y80) of one record."""
    if row.kind == "accuracy":
        metrics = [("max_abs_error", "abs", row.max_abs_error, row.max_abs_error, row.max_abs_error)]
        if row.grad_max_rel_error is not None or (row.mode == "full" and not row.ok):
            metrics.append(
                ("grad_max_rel_error", "rel", row.grad_max_rel_error, row.grad_max_rel_error, row.grad_max_rel_error)
            )
        return metrics
    metrics = [("speed", "ms", row.median_ms, row.p20_ms, row.p80_ms)]
    if row.ok:
        metrics.append(("memory", "MB", row.peak_extra_mb, row.peak_extra_mb, row.peak_extra_mb))
        if row.median_ms and row.flops:
            # TFLOP/s at the median, 20th and 80th percentile times (fast time = high throughput).
            metrics.append(
                ("throughput", "TFLOP/s", row.tflops, row.flops / (row.p20_ms * 1e9), row.flops / (row.p80_ms * 1e9))
            )
        if row.peak_fraction is not None:
            scale = row.peak_fraction / row.tflops
            metrics.append(
                ("peak_fraction", "fraction", row.peak_fraction, metrics[-1][3] * scale, metrics[-1][4] * scale)
            )
    return metrics


def write_csv_table(path: Path, header: Sequence[str], lines: Iterable[Sequence[Any]]) -> None:
    """A CSV file: the header, then one line per sequence of cells (None as an empty cell)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(["" if cell is None else cell for cell in line] for line in lines)


def write_csv(path: Path, rows: list[Row], meta: dict) -> None:
    config = {id(row): json.dumps(row.config()) for row in rows}
    write_csv_table(
        path,
        CSV_COLUMNS,
        (
            [
                row.kernel,
                row.provider,
                row.mode,
                name,
                unit,
                "N",
                row.tokens,
                y50,
                y20,
                y80,
                config[id(row)],
                meta["device_name"],
                row.timestamp,
                meta["version"],
            ]
            for row in rows
            for name, unit, y50, y20, y80 in _metrics(row)
        ),
    )


# --------------------------------------------------------------------------------------------
# Markdown

_OUTPUT_NAME = {
    "fused_reverse_kl": "loss",
    "token_logprobs": "log-probs",
    "topk_logprobs": "top-k values",
    "policy_gradient_loss": "loss",
}


def markdown_table(header: Sequence[str], lines: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table's lines: the header, its rule, one line per sequence of cells."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(cells) + " |" for cells in lines
    ]


def _fmt_number(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _fmt_bytes(mb: float) -> str:
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{_fmt_number(mb)} MB"


def _fmt_error(x: float | None) -> str:
    return "–" if x is None else ("0" if x == 0 else f"{x:.1e}")


def short_status(status: str) -> str:
    """The status up to its explanation, for a table cell; the full text goes under the table."""
    return status.split(" (", 1)[0]


def _speed_cell(row: Row) -> str:
    if not row.ok:
        return short_status(row.status)
    parts = [f"{_fmt_number(row.median_ms)} ms [{_fmt_number(row.p20_ms)}–{_fmt_number(row.p80_ms)}]"]
    if row.tflops is not None:
        throughput = f"{row.tflops:.3g} TFLOP/s"
        if row.peak_fraction is not None:
            throughput += f" ({100 * row.peak_fraction:.0f}%)"
        parts.append(throughput)
    if row.peak_extra_mb is not None:
        parts.append(_fmt_bytes(row.peak_extra_mb))
    return "<br>".join(parts)


def _provider_order(rows: list[Row]) -> list[str]:
    family_rank = {"ours": 0, "floor": 1, "naive": 2, "peer": 3}
    first_seen = {}
    for i, r in enumerate(rows):
        first_seen.setdefault(r.provider, (family_rank.get(r.family, 3), i))
    return sorted(first_seen, key=first_seen.get)


def markdown(rows: list[Row], meta: dict) -> str:
    peak = meta.get("peak_tflops")
    acc = meta["accuracy_shape"]
    runs = meta.get("runs", [])
    command = (
        f"`{meta['command']}`"
        if len(runs) <= 1
        else ("merged runs " + ", ".join(f"`{run['command']}`" for run in runs))
    )
    lines = [
        f"### Kernel benchmarks: {meta['device_name']}, {meta['date']}",
        "",
        f"{command} (grid `{meta['grid']}`, {meta['dtype']} inputs, temperature {meta['temperature']}, "
        f"k = {meta['topk']} for top-k; timing: {meta['timing_mode']}); opd_kernels {meta['version']}, "
        + ", ".join(f"{k} {v}" for k, v in meta["packages"].items() if k != "opd_kernels")
        + ".",
        "",
        "Each cell: median ms [20th–80th percentile] over the rounds, TFLOP/s from the FLOP count "
        + (f"(and % of the {peak:g} TFLOP/s bf16 dense peak), " if peak else "")
        + f"and peak extra memory ({meta['memory_method']}); gradients of h and W are part of the extra memory "
        "of forward + backward. The error columns compare with float64 computed from the same (rounded) inputs at "
        f"N = {acc['tokens']:,}, V = {acc['vocab']:,}, D_s = {acc['student_dim']}, D_t = {acc['teacher_dim']}: "
        "max |output - output64|, and for gradients max |g - g64| / max |g64| over dh and dW.",
        "",
    ]
    speed = [r for r in rows if r.kind == "speed"]
    accuracy = {(r.kernel, r.mode, r.provider): r for r in rows if r.kind == "accuracy"}
    tables = defaultdict(list)
    for r in speed:
        tables[r.table_key()].append(r)
    for (kernel, mode, d_s, d_t, vocab), table_rows in tables.items():
        any_row = table_rows[0]
        op = OP_MODES[f"{kernel}-{mode}"]
        dims = (
            f"D_s = {d_s}, D_t = {d_t}"
            if op.side == "both"
            else (f"D = D_t = {d_t}" if op.side == "teacher" else f"D = D_s = {d_s}")
        )
        topk = f", k = {any_row.topk}" if any_row.topk is not None else ""
        lines += [f"#### {op.title}: V = {vocab:,}, {dims}{topk}; FLOPs counted {op.flop_formula}", ""]
        token_counts = sorted({r.tokens for r in table_rows})
        header = ["provider", *[f"N = {n:,}" for n in token_counts], f"max abs err ({_OUTPUT_NAME[kernel]})"]
        if mode == "full":
            header.append("max rel err (grads)")
        cells = {(r.provider, r.tokens): r for r in table_rows}
        notes = {}
        table = []
        for provider in _provider_order(table_rows):
            row_cells = [f"`{provider}`"]
            for n in token_counts:
                r = cells.get((provider, n))
                row_cells.append(_speed_cell(r) if r else "")
                if r and not r.ok:
                    notes[short_status(r.status)] = r.status
            a = accuracy.get((kernel, mode, provider))
            if a is None:
                row_cells.append("–")
            elif a.ok:
                row_cells.append(_fmt_error(a.max_abs_error))
            else:
                row_cells.append(short_status(a.status))
                notes[short_status(a.status)] = a.status
            if mode == "full":
                row_cells.append(_fmt_error(a.grad_max_rel_error) if a is not None and a.ok else "–")
            table.append(row_cells)
        lines += markdown_table(header, table)
        full_notes = [status for short, status in notes.items() if status != short]
        full_notes += [PROVIDER_NOTES[p] for p in _provider_order(table_rows) if p in PROVIDER_NOTES]
        if full_notes:
            lines += ["", *[f"- {status}" for status in full_notes]]
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Plot


def pyplot() -> tuple[Any, str | None]:
    """(matplotlib.pyplot on the Agg backend, None), or (None, why not) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return None, f"no plot: matplotlib is not installed ({e})"
    return plt, None


def write_plot(path: Path, rows: list[Row], meta: dict) -> str | None:
    """Time and peak memory against N, one line per provider; returns why not, if it cannot."""
    plt, problem = pyplot()
    if plt is None:
        return problem

    tables = defaultdict(list)
    for r in rows:
        if r.kind == "speed":
            tables[r.table_key()].append(r)
    if not tables:
        return "no plot: no speed results"
    fig, axes = plt.subplots(len(tables), 2, figsize=(12, 3.6 * len(tables)), squeeze=False)
    # One colour per provider across all panels.
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {name: palette[i % len(palette)] for i, name in enumerate(PROVIDER_NAMES)}
    for (kernel, mode, d_s, d_t, vocab), (ax_time, ax_mem) in zip(tables, axes):
        table_rows = tables[(kernel, mode, d_s, d_t, vocab)]
        op = OP_MODES[f"{kernel}-{mode}"]
        for provider in _provider_order(table_rows):
            ok = sorted((r for r in table_rows if r.provider == provider and r.ok), key=lambda r: r.tokens)
            if not ok:
                continue
            n = [r.tokens for r in ok]
            style = "-" if ok[0].family == "ours" else "--"
            ax_time.plot(n, [r.median_ms for r in ok], style, marker="o", color=colour.get(provider), label=provider)
            ax_mem.plot(n, [r.peak_extra_mb for r in ok], style, marker="o", color=colour.get(provider), label=provider)
        dims = f"D_s={d_s}, D_t={d_t}" if op.side == "both" else f"D={table_rows[0].hidden_dim}"
        for ax, what in ((ax_time, "median time (ms)"), (ax_mem, "peak extra memory (MB)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("N (tokens)")
            ax.set_ylabel(what)
            ax.set_title(f"{op.title}\nV={vocab:,}, {dims}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
        ax_time.legend(fontsize=7)
    fig.suptitle(f"{meta['device_name']}, {meta['date']} ({meta['dtype']}, {meta['timing_mode']})", fontsize=10)
    # Leave the top 0.4 inch for the figure title.
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------------------------
# All files


def write_files(
    out_dir: Path, stem: str, writers: dict[str, Callable[[Path], Any]], formats: Sequence[str] = FORMATS
) -> tuple[list[Path], list[str]]:
    """``<stem>.<ext>`` under ``out_dir`` for each of ``formats`` (in that order), by
    ``writers[ext](path)``, which returns a str saying why when it wrote nothing; returns the
    paths written and those reasons."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written, problems = [], []
    for ext in formats:
        path = out_dir / f"{stem}.{ext}"
        problem = writers[ext](path)
        if isinstance(problem, str):
            problems.append(problem)
        else:
            written.append(path)
    return written, problems


def write_all(out_dir: Path, stem: str, rows: list[Row], meta: dict) -> tuple[list[Path], list[str]]:
    """Writes <stem>.json/.csv/.md/.png; returns the paths written and problems (never raises for the plot)."""
    return write_files(
        out_dir,
        stem,
        {
            "json": lambda path: write_json(path, rows, meta),
            "csv": lambda path: write_csv(path, rows, meta),
            "md": lambda path: path.write_text(markdown(rows, meta)),
            "png": lambda path: write_plot(path, rows, meta),
        },
    )


def git_commit(dirty_paths: Sequence[str] = ()) -> str:
    """This checkout's short commit, ``-dirty`` when files under ``dirty_paths`` (relative to the
    repository) have changes; "unknown" in a copy without git."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", *dirty_paths) if dirty_paths else ""
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results_json", type=Path)
    args = parser.parse_args(argv)
    rows, meta = read_json(args.results_json)
    written, problems = write_all(args.results_json.parent, args.results_json.stem, rows, meta)
    for path in written:
        print(path)
    for problem in problems:
        print(problem)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
