"""Faults on one of 2 real processes (accelerate launch, gloo on the CPU; faults.py injects them
through distributed_opd.py): NaN gradients on one process at one micro-batch skip that step on
both and the run finishes; an exception on one process in any phase of a step ends the launch
within 120 s, its output naming the process and the error, and what was written before stays."""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
from pathlib import Path

import faults  # this folder's
import pytest
import torch
from launching import ROOT, accelerate_launch, launch_env

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]  # 2-process launches: not in the fast lane

RUNNER = Path(__file__).with_name("distributed_opd.py")


def launch(data: Path, out: Path, config: str, *extra: str, timeout: int = 420) -> tuple[int, str, float]:
    """(exit status, output, seconds) of distributed_opd.py on 2 processes."""
    cmd = accelerate_launch(2, config, str(RUNNER), "--data", str(data), "--out", str(out), "--eval-limit", "2", *extra)
    start = time.monotonic()
    result = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return result.returncode, result.stdout + result.stderr, time.monotonic() - start


@pytest.mark.parametrize("config, ddp_timeout", [("ddp.yaml", None), ("fsdp2.yaml", 300)])
def test_nan_gradients_on_one_process_skip_the_step_on_both(config, ddp_timeout, data, tmp_path):
    """Process 1's gradients are NaN at the first of step 2's two micro-batches (accumulated
    without synchronisation, then all-reduced or reduce-scattered with the second)."""
    timeout = [] if ddp_timeout is None else ["--ddp-timeout", str(ddp_timeout)]
    # with a tracker under DDP: closing it on the main process once destroyed the process group the other
    # process still saved the final model with
    tracker = ["--report-to", "tensorboard"] if config == "ddp.yaml" else []
    code, output, _ = launch(
        data,
        tmp_path,
        config,
        "--steps",
        "3",
        "--gradient-accumulation-steps",
        "2",
        "--fault",
        "nan_gradient",
        "--fault-rank",
        "1",
        "--fault-step",
        "2",
        *timeout,
        *tracker,
    )
    assert code == 0, output[-6000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank in ranks:
        rows = rank["rows"]
        assert [r["skipped_steps"] for r in rows] == [0, 1, 1]
        assert "skipped_records" in rows[1] and "skipped_records" not in rows[2]
        assert all(math.isfinite(r["loss"]) for r in rows)  # the loss was finite: only gradients were NaN
        assert not math.isfinite(rows[1]["grad_norm"]) and math.isfinite(rows[2]["grad_norm"])
        assert rank["process_group_timeout_s"] == (600 if ddp_timeout is None else ddp_timeout)
    # the records of both processes, named alike by both
    drawn = {i for rank in ranks for i in rank["step_records"][1]}
    assert set(ranks[0]["rows"][1]["skipped_records"]) == drawn == set(ranks[1]["rows"][1]["skipped_records"])
    weights = torch.load(tmp_path / "weights.pt")
    assert all(torch.isfinite(w).all() for w in weights.values())
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in logged if "loss" in r] == [0, 1, 1]


# The main process (0) where it writes while the other waits (evaluation, checkpoint), else process 1;
# under FSDP2 a rollout, where the other process generates with synced_gpus (its forwards all-gather).
@pytest.mark.parametrize(
    "phase, rank, config",
    [
        ("rollout", 1, "ddp.yaml"),
        ("rollout", 1, "fsdp2.yaml"),
        ("teacher", 1, "ddp.yaml"),
        ("student", 1, "ddp.yaml"),
        ("optimizer", 1, "ddp.yaml"),
        ("evaluation", 0, "ddp.yaml"),
        ("checkpoint", 0, "ddp.yaml"),
    ],
)
def test_a_raising_process_ends_the_launch_with_its_cause(phase, rank, config, data, tmp_path):
    code, output, _ = launch(
        data,
        tmp_path,
        config,
        "--steps",
        "2",
        "--save-steps",
        "1",
        "--fault",
        phase,
        "--fault-rank",
        str(rank),
        "--fault-step",
        "2",
    )
    ended = time.time()
    assert code != 0
    cause = re.search(
        rf"InjectedFault: injected fault in the {phase} phase of step 2 on process {rank} "
        r"at unix time ([\d.]+)",
        output,
    )
    assert cause, output[-6000:]
    assert ended - float(cause.group(1)) < 120, f"{ended - float(cause.group(1)):.0f} s from the fault to the end"
    assert f"[rank{rank}]: Traceback" in output  # the process, as the launcher prefixes its lines
    # step 1's row, evaluation and checkpoint are whole
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r][:1] == [1]
    assert (run / "eval_step0.json").is_file()
    state = json.loads((run / "checkpoints" / "step-1" / "trainer_state.json").read_text())
    assert state["step"] == 1


def test_faults_are_known():
    with pytest.raises(ValueError, match="fault must be one of"):
        faults.install("disk", 0, 1)
