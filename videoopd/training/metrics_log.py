"""The run's metrics file."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog"]


class MetricsLog:
    """``metrics.jsonl`` (one JSON object a line, flushed per row) and, when installed,
    TensorBoard scalars. Only the main process creates one.

    A fresh run starts the file; a run resumed from step K (``resume_step``) keeps the rows of
    steps <= K (:attr:`kept`), drops those written after the checkpoint (they are computed
    again) and appends: no step is missing or repeated.
    """

    def __init__(self, out_dir: Path, resume_step: int | None = None):
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
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides what an earlier attempt logged after the checkpoint
            self.tb = SummaryWriter(str(out_dir / "tensorboard"),
                                    purge_step=None if resume_step is None else resume_step + 1)
        except Exception:  # tensorboard not installed
            self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self.handle.close()
        if self.tb is not None:
            self.tb.close()
