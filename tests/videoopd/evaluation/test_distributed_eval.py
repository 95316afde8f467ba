"""``evaluate`` split over 2 real processes (accelerate launch, gloo on the CPU) against 1: the
same prediction rows in the same order, the same metrics, on every process; only the main
process writes the predictions file. 5 records: the shares are unequal (3 and 2), so the
second process pads its share and the padding must not reach the rows; one video is missing,
so failed rows must come back in their places, one in each share."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from launching import ROOT, accelerate_launch, launch_env

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]  # 2-process launches: not in the fast lane

RUNNER = Path(__file__).with_name("distributed_eval.py")


def launch(data: Path, out: Path, processes: int) -> list[dict]:
    args = [str(RUNNER), "--data", str(data), "--out", str(out)]
    cmd = [sys.executable, *args] if processes == 1 else accelerate_launch(processes, "ddp.yaml", *args)
    result = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]


def test_two_processes_give_the_rows_and_metrics_of_one(synthetic_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    annotations = [json.loads(line) for line in (data / "annotations.jsonl").read_text().splitlines()]
    assert annotations[2]["video"] == annotations[3]["video"]  # records 2 and 3: one in each share
    (data / annotations[3]["video"]).write_bytes(b"not a video")  # kept by the loader, fails to decode
    one = launch(data / "annotations.jsonl", tmp_path / "one", 1)
    two = launch(data / "annotations.jsonl", tmp_path / "two", 2)
    assert one[0]["world"] == 1 and two[0]["world"] == two[1]["world"] == 2
    ids = [row["id"] for row in one[0]["rows"]]
    assert len(ids) == 5 and len(set(ids)) == 5
    assert [row["error"] is not None for row in one[0]["rows"]] == [False, False, True, True, False]
    assert two[0] == two[1] == {**one[0], "world": 2}
    assert (tmp_path / "two" / "predictions.jsonl").read_text() == (tmp_path / "one" / "predictions.jsonl").read_text()
    assert one[0]["failed"] == [[ids[i], one[0]["rows"][i]["error"]] for i in (2, 3)]
