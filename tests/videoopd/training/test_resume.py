"""Checkpoints, resume, preemption and repeatability on one process (the 2-process FSDP2 case is
in test_distributed.py): identical demo processes give identical runs; a demo run of 6 steps,
and the same run stopped by a real SIGTERM part way and resumed with ``--resume-from-checkpoint auto``, end with
bitwise-equal weights and one metrics row per step; bad resume inputs are refused before any
training."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from videoopd import train as T
from videoopd.training.checkpoint import STATE_FILE, complete_checkpoints

ROOT = Path(__file__).resolve().parents[3]
DEMO = [
    "--demo-videos",
    "8",
    "--max-steps",
    "6",
    "--per-device-train-batch-size",
    "2",
    "--eval-limit",
    "2",
    "--eval-on-start",
    "false",
    "--eval-teacher",
    "false",
    "--max-new-tokens",
    "8",
    "--no-progress",
]


def env() -> dict[str, str]:
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    e.pop("TRITON_INTERPRET", None)
    return e


def launch(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "videoopd.train", *DEMO, "--output-dir", str(out), *extra],
        env=env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def logged_steps(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    proc = launch(out)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    return out


@pytest.mark.slow
def test_identical_processes_give_identical_runs(tmp_path):
    """Three processes of the same demo command: the same videos, byte for byte (they are
    generated afresh by each), and the same losses (the bug this guards against: about 1 in
    100 libx264 encodes differed, so most demo runs of 160 videos differed somewhere)."""
    runs = [tmp_path / f"run{i}" for i in range(3)]
    procs = [
        launch(out, "--demo-videos", "160", "--max-steps", "2", "--eval-steps", "0", "--save-final", "false")
        for out in runs
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
    videos = [{p.name: p.read_bytes() for p in (out / "demo_data" / "videos").glob("*.mp4")} for out in runs]
    assert len(videos[0]) == 160 and videos[1] == videos[0] and videos[2] == videos[0]
    losses = [[r["loss"] for r in logged_steps(out) if "loss" in r] for out in runs]
    assert len(losses[0]) == 2 and losses[1] == losses[0] and losses[2] == losses[0]


@pytest.mark.slow
@pytest.mark.parametrize("save_every, stop_after", [(0, 2), (3, 4)])
def test_sigterm_then_resume_auto_equals_an_uninterrupted_run(uninterrupted, tmp_path, save_every, stop_after):
    """Stopped by SIGTERM at a step that is no --save-steps step, then resumed: the run the
    uninterrupted one was, loss for loss and weight for weight (twice, with and without
    scheduled checkpoints)."""
    out = tmp_path / "run"
    proc = launch(out, "--save-steps", str(save_every))
    deadline = time.time() + 240
    while not any(r.get("step") == stop_after and "loss" in r for r in logged_steps(out)):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "stopped by SIGTERM after step" in stderr and "--resume-from-checkpoint auto" in stderr
    saved = complete_checkpoints(out)
    stopped_at = json.loads((saved[-1] / STATE_FILE).read_text())["step"]
    assert stop_after <= stopped_at < 6 and saved[-1].name == f"step-{stopped_at}"
    assert not save_every or stopped_at % save_every  # the stop's own checkpoint, not a scheduled one
    assert len(saved) == (1 if not save_every else 2)
    assert not (out / "final").exists()

    proc = launch(out, "--resume-from-checkpoint", "auto", "--save-steps", str(save_every))
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    a, b = weights(uninterrupted / "final"), weights(out / "final")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run's"
    rows = [r for r in logged_steps(out) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    reference = [r["loss"] for r in logged_steps(uninterrupted) if "loss" in r]
    assert [r["loss"] for r in rows] == reference
    evals = [r["step"] for r in logged_steps(out) if "eval/mIoU" in r]
    assert evals == [6]


def test_save_every_keeps_the_newest_and_a_rerun_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        *DEMO,
        "--max-steps",
        "4",
        "--save-steps",
        "1",
        "--save-total-limit",
        "2",
        "--output-dir",
        str(out),
        "--overwrite",
        "false",
        "--eval-steps",
        "0",
    ]
    assert T.main(argv) == 0
    assert [p.name for p in complete_checkpoints(out)] == ["step-3", "step-4"]
    assert not list((out / "checkpoints").glob(".*partial"))
    capsys.readouterr()
    # the same command again would replace the run: refused, nothing touched
    before = (out / "metrics.jsonl").read_text()
    assert T.main(argv) == 2
    err = capsys.readouterr().err
    assert "holds a finished run" in err and "resume it with --resume-from-checkpoint auto" in err, err
    assert (out / "metrics.jsonl").read_text() == before
    # resuming a finished run does nothing more and keeps its files
    assert T.main([*argv, "--resume-from-checkpoint", "auto"]) == 0
    assert (out / "metrics.jsonl").read_text() == before


def test_resume_auto_without_a_checkpoint_is_refused_and_changes_nothing(tmp_path, capsys):
    """A run stopped before its first checkpoint: --resume-from-checkpoint auto would start again from step 0 and
    replace its files, so it is refused, offering only --overwrite or another folder."""
    out = tmp_path / "run"
    argv = [*DEMO, "--max-steps", "2", "--output-dir", str(out), "--eval-steps", "1", "--eval-on-start", "true"]
    assert T.main(argv) == 0
    capsys.readouterr()
    # what a run killed at step 2 leaves: its rows and evaluations, no summary, no final weights
    (out / "summary.json").unlink()
    shutil.rmtree(out / "final")
    before = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert T.main([*argv, "--resume-from-checkpoint", "auto", "--max-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "holds an earlier run that saved no checkpoint" in err, err
    assert "--resume-from-checkpoint auto" not in err.split("nothing was changed", 1)[1], err
    assert {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    # --overwrite replaces it
    assert T.main([*argv, "--overwrite", "true", "--max-steps", "1"]) == 0
    assert [r["step"] for r in logged_steps(out) if "loss" in r] == [1]
    assert not list(out.glob("eval_step2*"))


def test_bad_resume_inputs_are_refused_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    base = [*DEMO, "--max-steps", "2", "--save-steps", "2", "--output-dir", str(out), "--eval-steps", "0"]
    assert T.main(base) == 0
    capsys.readouterr()
    checkpoint = complete_checkpoints(out)[-1]

    def refused(argv: list[str], message: str) -> None:
        assert T.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err, err

    refused([*base, "--resume-from-checkpoint", str(tmp_path / "nowhere")], "checkpoint folder not found")
    partial = out / "checkpoints" / "step-9"
    partial.mkdir()
    refused([*base, "--resume-from-checkpoint", str(partial)], "not a complete checkpoint")
    refused(
        [
            *base,
            "--resume-from-checkpoint",
            str(checkpoint),
            "--learning-rate",
            "1e-3",
            "--per-device-train-batch-size",
            "4",
        ],
        "learning_rate: 0.0003 -> 0.001; per_device_train_batch_size: 2 -> 4",
    )
    # another model: the checkpoint's signature differs from the student's (a LoRA student)
    refused(
        [*base, "--resume-from-checkpoint", str(checkpoint), "--lora-r", "4", "--resume-override"],
        "is of another model",
    )
    refused([*base, "--resume-from-checkpoint", "auto", "--overwrite", "true"], "contradict")


def test_a_checkpoint_saved_under_the_old_option_names_is_still_compared():
    """A checkpoint's config.yaml written before the options took their HF / TRL names (lr,
    batch_size, reduction token_mean): its run-defining options are compared under the new names,
    so a changed learning rate is still refused and an unchanged reduction is not."""
    from videoopd.training.checkpoint import config_differences

    cfg = T.resolve_config(["--algo", "grpo", "--learning-rate", "1e-3"])
    saved = {
        "lr": 3e-4,
        "batch_size": cfg.per_device_train_batch_size,
        "reduction": "token_mean",
        "algo": "grpo",
        "grad_accum": 1,
    }
    assert config_differences(saved, cfg) == ["learning_rate: 0.0003 -> 0.001"]
