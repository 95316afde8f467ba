"""TVDF rounds in the loop (the demo, one process): round logs, the teacher scored once per run
and the student every round, the optimizer carried across rounds, and a run stopped by SIGTERM
in round 2 resuming to the uninterrupted run's weights without scoring the teacher again.
(1 vs 2 processes: test_distributed.py; the selection functions: test_curriculum.py.)"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from videoopd import train as T
from videoopd.training import curriculum as C
from videoopd.training import loop as L

ROUNDS = [
    "--demo-videos",
    "8",
    "--rounds",
    "2",
    "--round-size",
    "4",
    "--steps-per-round",
    "2",
    "--per-device-train-batch-size",
    "2",
    "--eval-limit",
    "2",
    "--eval-on-start",
    "false",
    "--eval-teacher",
    "false",
    "--no-progress",
]


@pytest.fixture
def scorings(monkeypatch):
    """The pool scorings the curriculum runs, by tag, and how many answers each generated."""
    calls: list[tuple[str, int]] = []
    evaluate = C.evaluate

    def counted(*args, **kwargs):
        result = evaluate(*args, **kwargs)
        calls.append((kwargs["predictions_path"].name.split(".")[0], len(result.predictions) - result.resumed))
        return result

    monkeypatch.setattr(C, "evaluate", counted)
    return calls


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_two_rounds_log_and_resume(tmp_path, scorings, monkeypatch):
    whole = tmp_path / "whole"
    assert T.main([*ROUNDS, "--output-dir", str(whole)]) == 0
    # the teacher scores the 8-prompt pool once; the student every round
    assert scorings == [("teacher_pool", 8), ("round0_student_pool", 8), ("round1_student_pool", 8)]
    rounds = read_jsonl(whole / "rounds.jsonl")
    assert [(r["round"], r["step"], r["selected"], r["pool_size"]) for r in rounds] == [(0, 1, 4, 8), (1, 3, 4, 8)]
    for r in rounds:
        assert r["dropped_by_teacher"] + r["survivors"] == 8 and sum(r["delta_histogram"]) == r["survivors"]
        assert len(r["selected_ids"]) == 4 and r["teacher_mIoU_selected"] is not None
    assert rounds[0]["student_mIoU_pool"] != rounds[1]["student_mIoU_pool"]  # re-scored after training
    rows = read_jsonl(whole / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [r["round"] for r in rows if "round" in r] == [0, 1]

    # the same run, stopped by a real SIGTERM after step 3 (round 2's first step) and resumed
    scorings.clear()
    stopped = tmp_path / "stopped"
    step_of = L.step_gradients

    def stop_after_three(step, *args, **kwargs):
        out = step_of(step, *args, **kwargs)
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(L, "step_gradients", stop_after_three)
    assert T.main([*ROUNDS, "--output-dir", str(stopped)]) == 128 + signal.SIGTERM
    monkeypatch.setattr(L, "step_gradients", step_of)
    scorings.clear()
    assert T.main([*ROUNDS, "--output-dir", str(stopped), "--resume-from-checkpoint", "auto"]) == 0
    # the teacher's cached scores are read back (no answer generated); round 2's selection comes
    # from the checkpoint, so nothing is scored again
    assert scorings in ([], [("teacher_pool", 0)])
    a, b = (
        load_file(str(whole / "final" / "model.safetensors")),
        load_file(str(stopped / "final" / "model.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_jsonl(stopped / "rounds.jsonl") == rounds
    assert [r["step"] for r in read_jsonl(stopped / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]


def test_curriculum_options_are_checked():
    with pytest.raises(T.ConfigError, match="--teacher-iou-min"):
        T.resolve_config(["--rounds", "2", "--teacher-iou-min", "1.5"])
    with pytest.raises(T.ConfigError, match="invalid choice: 'best'"):
        T.resolve_config(["--rounds", "2", "--selector", "best"])
    cfg = T.resolve_config(["--preset", "video-opd", "--student", "s", "--teacher", "t"])
    assert (cfg.rounds, cfg.round_size, cfg.selector) == (3, 2500, "topk")
