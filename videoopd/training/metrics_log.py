"""The run's metrics: ``metrics.jsonl``, the trackers of ``--report-to``, and the report at the
end (``summary.json``, ``curves.png``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__: list[str] = []  # nothing here is promised: docs/api.md


class MetricsLog:
    """``metrics.jsonl`` (one JSON object a line, flushed per row) and the run's accelerate
    trackers (``--report-to``: the accelerator's ``log_with``; TensorBoard under
    ``OUTPUT_DIR/tensorboard``), which get every number of every row at its step. Only the main
    process creates one.

    A fresh run starts the file; a run resumed from step K (``resume_step``) keeps the rows of
    steps <= K (:attr:`kept`), drops those written after the checkpoint (they are computed
    again) and appends: no step is missing or repeated. TensorBoard hides what an earlier
    attempt logged after step K.
    """

    def __init__(
        self,
        out_dir: Path,
        resume_step: int | None = None,
        accelerator: Any = None,
        config: dict[str, Any] | None = None,
    ):
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "metrics.jsonl"
        self.kept: list[dict[str, Any]] = []
        if resume_step is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:  # a line cut short by a killed process
                    continue
                if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= resume_step:
                    self.kept.append(row)
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(row) + "\n" for row in self.kept), encoding="utf-8")
            os.replace(tmp, path)
        self.handle = path.open("a" if resume_step is not None else "w", encoding="utf-8")
        self.accelerator = accelerator if accelerator is not None and accelerator.log_with else None
        if self.accelerator is not None:
            # trackers take numbers and strings only (TensorBoard's hparams refuse None)
            hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in (config or {}).items()}
            self.accelerator.init_trackers(
                "tensorboard",
                config=hparams,
                init_kwargs={"tensorboard": {"purge_step": None if resume_step is None else resume_step + 1}},
            )

    def write(self, row: dict[str, Any]) -> None:
        self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()
        if self.accelerator is not None:
            numbers = {
                k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"
            }
            self.accelerator.log(numbers, step=row["step"])

    def close(self) -> None:
        self.handle.close()
        if self.accelerator is not None:
            # not accelerator.end_training(): it also destroys the process group, and only the main process
            # closes this log, while the others still save the final model with it
            for tracker in self.accelerator.trackers:
                tracker.finish()


def write_run_report(out_dir: Path, summary: Any) -> list[Path]:
    """Write ``out_dir/summary.json`` (``summary.as_dict()``: every step row, the evaluations,
    the best, the rounds, the last checkpoint, ...) and, with matplotlib installed, the run's
    curves as ``out_dir/curves.png``; returns the files written. The main process calls it."""
    from videoopd.evaluation.comparison import plot_run

    written = [out_dir / "summary.json"]
    written[0].write_text(json.dumps(summary.as_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    try:
        plot_run(out_dir, out_dir / "curves.png")
        written.append(out_dir / "curves.png")
    except ImportError:  # matplotlib is not installed: summary.json and metrics.jsonl still stand
        pass
    return written
