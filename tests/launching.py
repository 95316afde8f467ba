"""How the tests start real processes with ``accelerate launch`` (gloo on the CPU): the
command and its environment, for the 2-process tests of every folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"


def launch_env() -> dict[str, str]:
    """This environment, offline, one thread a process, and the torch backend on the CPU (no
    Triton interpreter: its speed is not what a launch test is about)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    return env


def accelerate_launch(processes: int, config: str, *args: str, mixed_precision: str | None = "no") -> list[str]:
    """``accelerate launch`` of ``args`` (a script and its arguments, or ``-m module ...``) on
    ``processes`` processes with ``configs/accelerate/{config}`` and a free port; no ``--cpu``,
    with which accelerate would start one process. ``mixed_precision`` None: the config's."""
    precision = [] if mixed_precision is None else ["--mixed_precision", mixed_precision]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(processes),
        "--config_file",
        str(CONFIGS / config),
        *precision,
        "--main_process_port",
        "0",
        *args,
    ]
