"""The run's metrics file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog"]


class MetricsLog:
    """``metrics.jsonl`` (one JSON object a line, flushed per row) and, when installed,
    TensorBoard scalars. Only the main process creates one."""

    def __init__(self, out_dir: Path):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.handle = (out_dir / "metrics.jsonl").open("w", encoding="utf-8")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))
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
