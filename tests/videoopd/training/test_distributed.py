"""The loop on 2 real processes (accelerate launch, gloo on the CPU) against 1 process.

2 processes x batch b must step exactly like 1 process x batch 2b (same seed, fp32): the same
loss per step, the same final weights within 1e-5, the same held-out prediction rows; each
process draws different prompts whose union is the global batch; only the main process
writes. For DDP and for FSDP2 (student and teacher sharded). A run whose loss bypasses the
engine (no gradient all-reduce, the bug this guards against) must fail the comparison.

Note: ``accelerate launch --cpu --num_processes 2`` starts ONE process (accelerate runs CPU
multi-process jobs only through MPI); on a machine without CUDA, ``accelerate launch
--num_processes 2`` (no --cpu) starts 2 processes on gloo. The launches below do that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launching import ROOT, accelerate_launch, launch_env

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]  # 2-process launches: not in the fast lane

STUDENT = ROOT / "videoopd" / "demo" / "assets" / "demo_student" / "model.safetensors"
RUNNER = Path(__file__).with_name("distributed_opd.py")


def launch(
    args: list[str], processes: int, config: str | None = None, timeout: int = 420, mixed_precision: str | None = "no"
) -> None:
    cmd = (
        [sys.executable, *args]
        if processes == 1
        else accelerate_launch(processes, config, *args, mixed_precision=mixed_precision)
    )
    result = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


def run(
    data: Path,
    out: Path,
    processes: int,
    batch_size: int,
    config: str | None = None,
    *extra: str,
    mixed_precision: str = "no",
) -> dict:
    launch(
        [str(RUNNER), "--data", str(data), "--out", str(out), "--per-device-train-batch-size", str(batch_size), *extra],
        processes,
        config,
        mixed_precision=mixed_precision,
    )
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]
    return {"ranks": ranks, "weights": torch.load(out / "weights.pt"), "out": out}


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    return run(data, tmp_path_factory.mktemp("one_process"), 1, 2)


def max_weight_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("config", ["ddp.yaml", "fsdp2.yaml"])
def test_two_processes_step_like_one(config, data, reference, tmp_path):
    two = run(data, tmp_path, 2, 1, config)
    ref = reference["ranks"][0]
    rank0, rank1 = two["ranks"]
    assert ref["world"] == 1 and rank0["world"] == rank1["world"] == 2
    assert rank0["distributed_type"].endswith("FSDP" if config == "fsdp2.yaml" else "MULTI_CPU")
    sharded = config == "fsdp2.yaml"
    assert rank0["student_sharded"] is sharded and rank0["teacher_sharded"] is sharded
    # the same loss per step (the logged loss is the global one, on every process)
    assert rank0["losses"] == pytest.approx(ref["losses"], rel=1e-5, abs=1e-7)
    assert rank1["losses"] == rank0["losses"]
    assert rank0["reverse_kl"] == pytest.approx(ref["reverse_kl"], rel=1e-5, abs=1e-7)
    # each process drew different prompts; together they are the one-process batch
    for step, (mine, theirs, both) in enumerate(
        zip(rank0["step_records"], rank1["step_records"], ref["step_records"]), start=1
    ):
        assert not set(mine) & set(theirs), f"step {step}: both processes drew {set(mine) & set(theirs)}"
        assert sorted(mine + theirs) == sorted(both), f"step {step}"
    # the same final weights
    assert max_weight_difference(two["weights"], reference["weights"]) < 1e-5
    # held-out evaluation split over the processes gives the rows and metrics of one process
    for tag in ("step0", "step3"):
        assert (tmp_path / "run" / f"eval_{tag}.predictions.jsonl").read_text() == (
            reference["out"] / "run" / f"eval_{tag}.predictions.jsonl"
        ).read_text()
        assert json.loads((tmp_path / "run" / f"eval_{tag}.json").read_text()) == json.loads(
            (reference["out"] / "run" / f"eval_{tag}.json").read_text()
        )
    assert rank0["evals"] == rank1["evals"] == ref["evals"]
    # only the main process writes
    assert rank1["opened_for_writing"] == []
    assert {"config.yaml", "metrics.jsonl", "eval_step3.json"} <= set(rank0["opened_for_writing"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(r["processes"] == 2 and len(r["peak_mem_mb_per_rank"]) == 2 for r in steps)
    # the saved model is the trained one, loadable on its own
    from videoopd.qwen.models import load_policy

    final = load_policy(tmp_path / "run" / "final", trainable=False)
    saved = final.state_dict()
    assert max(float((saved[k] - reference["weights"][k]).abs().max()) for k in saved) < 1e-5


def test_unsynchronised_gradients_fail_the_comparison(data, reference, tmp_path):
    """The loss through the unwrapped model (no DDP all-reduce): each process steps on its own
    half of the batch, and the weights leave the one-process run's."""
    broken = run(data, tmp_path, 2, 1, "ddp.yaml", "--unsynchronised")
    assert max_weight_difference(broken["weights"], reference["weights"]) > 1e-3


def test_fsdp2_mixed_precision_keeps_fp32_sharded_masters(data, reference, tmp_path):
    """A bf16 student under FSDP2 with mixed_precision bf16: FSDP2's policy computes in bf16 and
    steps fp32 sharded parameters (videoopd's own MasterWeights stay off); the run tracks the
    fp32 one to bf16 precision and saves fp32 trained weights (the frozen vision tower stays bf16)."""
    mixed = run(data, tmp_path, 2, 1, "fsdp2.yaml", "--student-dtype", "bfloat16", mixed_precision="bf16")
    rank0 = mixed["ranks"][0]
    assert rank0["student_sharded"] and rank0["trained_dtypes"] == ["torch.float32"]
    assert rank0["losses"] == pytest.approx(reference["ranks"][0]["losses"], rel=3e-2)
    trained = {k: v for k, v in mixed["weights"].items() if ".visual." not in k}  # the vision tower is frozen
    assert {v.dtype for v in trained.values()} == {torch.float32}
    assert max_weight_difference(mixed["weights"], reference["weights"]) < 3e-2


def test_accelerate_launch_demo_cli(tmp_path):
    """The command users run: the demo, shortened, on 2 processes with FSDP2 and the config as it
    is (mixed_precision bf16): the demo computes in fp32 there too, so its held-out score
    before training is the one-process demo's."""
    out = tmp_path / "demo"
    launch(
        [
            "-m",
            "videoopd.train",
            "--max-steps",
            "3",
            "--demo-videos",
            "8",
            "--eval-steps",
            "3",
            "--output-dir",
            str(out),
            "--no-progress",
        ],
        2,
        "fsdp2.yaml",
        mixed_precision=None,
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert all(r["processes"] == 2 for r in rows if "loss" in r)
    one = tmp_path / "one"
    launch(
        [
            "-m",
            "videoopd.train",
            "--max-steps",
            "1",
            "--demo-videos",
            "8",
            "--eval-steps",
            "0",
            "--eval-teacher",
            "false",
            "--output-dir",
            str(one),
            "--no-progress",
        ],
        1,
    )
    step0 = [
        [
            r
            for r in (json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines())
            if r["step"] == 0 and "eval/mIoU" in r
        ][0]
        for folder in (out, one)
    ]
    assert step0[0] == step0[1]
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["processes"] == 2 and len(summary["reverse_kl"]) == 3
    from videoopd.qwen.models import load_policy

    assert load_policy(out / "final", trainable=False).config.model_type == "qwen3_vl"


@pytest.fixture(scope="module")
def lora_reference(data, tmp_path_factory):
    return run(data, tmp_path_factory.mktemp("lora_one_process"), 1, 2, None, "--lora-r", "4")


@pytest.mark.parametrize("config", ["ddp.yaml", "fsdp2.yaml"])
def test_lora_two_processes_step_like_one(config, data, lora_reference, tmp_path):
    """LoRA (peft) under DDP and FSDP2: the adapters train as on one process, nothing else moves."""
    two = run(data, tmp_path, 2, 1, config, "--lora-r", "4")
    assert two["ranks"][0]["losses"] == pytest.approx(lora_reference["ranks"][0]["losses"], rel=1e-5, abs=1e-7)
    assert max_weight_difference(two["weights"], lora_reference["weights"]) < 1e-5
    lora_b = [v for k, v in two["weights"].items() if "lora_B" in k]
    assert lora_b and max(float(v.abs().max()) for v in lora_b) > 0, "adapters did not train"
    adapter = tmp_path / "run" / "final" / "adapter_model.safetensors"
    assert adapter.is_file() and not (tmp_path / "run" / "final" / "model.safetensors").exists()


def test_fsdp2_sigterm_then_resume_equals_an_uninterrupted_run(data, tmp_path):
    """2 processes, FSDP2: a run stopped by SIGTERM (sent to the whole launch, as a scheduler
    does) after step 2 or later saves sharded state (torch.distributed.checkpoint, no gather)
    and, resumed with --resume-from-checkpoint auto, ends with the weights of an uninterrupted 6-step run."""
    import signal
    import time

    whole = run(data, tmp_path / "whole", 2, 1, "fsdp2.yaml", "--steps", "6")
    out = tmp_path / "stopped"
    cmd = accelerate_launch(
        2, "fsdp2.yaml", str(RUNNER), "--data", str(data), "--out", str(out), "--per-device-train-batch-size", "1"
    )
    proc = subprocess.Popen(
        [*cmd, "--steps", "6"],
        env=launch_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    metrics = out / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.is_file() and any('"step": 2, "loss"' in line for line in metrics.read_text().splitlines())):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-4000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and "stopped by SIGTERM after step" in log, log[-4000:]
    checkpoints = sorted((out / "run" / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and (checkpoints[0] / "trainer_state.json").is_file(), log[-4000:]
    saved = {p.name for p in checkpoints[0].iterdir()}
    assert {"pytorch_model_fsdp_0", "optimizer_0", "random_states_0.pkl", "random_states_1.pkl"} <= saved
    assert "model" not in saved  # sharded save: no full copy gathered on one process

    resumed = run(data, out, 2, 1, "fsdp2.yaml", "--steps", "6", "--resume-from-checkpoint", "auto")
    assert max_weight_difference(resumed["weights"], whole["weights"]) == 0.0
    assert resumed["ranks"][0]["losses"] == whole["ranks"][0]["losses"]
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_curriculum_selects_the_same_on_two_processes(data, tmp_path):
    """TVDF rounds under FSDP2 (teacher and student sharded, the pool scored in shares and
    gathered): the same selections, in the same order, as on one process."""
    one = run(data, tmp_path / "one", 1, 2, None, "--rounds", "2", "--round-size", "2")
    two = run(data, tmp_path / "two", 2, 1, "fsdp2.yaml", "--rounds", "2", "--round-size", "2")
    rounds_one, rounds_two = one["ranks"][0]["rounds"], two["ranks"][0]["rounds"]
    assert [r["round"] for r in rounds_one] == [0, 1] and len(rounds_one[0]["selected_ids"]) == 2
    assert [r["selected_ids"] for r in rounds_two] == [r["selected_ids"] for r in rounds_one]
    assert two["ranks"][1]["rounds"] == rounds_two
    assert max_weight_difference(two["weights"], one["weights"]) < 1e-5


def test_grpo_two_processes_step_like_one(tmp_path):
    """GRPO on the demo (the shipped student earns real IoU rewards, so groups carry signal),
    groups of 3 answers a prompt: 2 processes x 1 prompt step like 1 process x 2 prompts."""
    from safetensors.torch import load_file

    common = [
        "-m",
        "videoopd.train",
        "--algo",
        "grpo",
        "--num-generations",
        "3",
        "--max-steps",
        "2",
        "--demo-videos",
        "8",
        "--eval-limit",
        "2",
        "--eval-on-start",
        "false",
        "--eval-teacher",
        "false",
        "--no-progress",
    ]
    launch([*common, "--per-device-train-batch-size", "2", "--output-dir", str(tmp_path / "one")], 1)
    launch([*common, "--per-device-train-batch-size", "1", "--output-dir", str(tmp_path / "two")], 2, "ddp.yaml")
    rows = {
        n: [json.loads(line) for line in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
        for n in ("one", "two")
    }
    one, two = ([r for r in rows[n] if "loss" in r] for n in ("one", "two"))
    assert [r["rollouts"] for r in two] == [6, 6] and all(r["processes"] == 2 for r in two)
    assert [r["reward"] for r in two] == pytest.approx([r["reward"] for r in one], rel=1e-6)
    assert any(r["equal_reward_groups"] < 1 for r in one), "no group with different rewards: nothing tested"
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-5, abs=1e-7)
    # step 2 starts from weights that differ by AdamW's amplified rounding (below, ~0.2% of the
    # move): its loss differed by 1.1e-5 to 1.3e-4 relative over three fresh-clone runs
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-3, abs=1e-7)
    a, b = (load_file(str(tmp_path / n / "final" / "model.safetensors")) for n in ("one", "two"))
    # AdamW divides each gradient entry by its own running scale: an entry whose gradient is ~0
    # turns fp32 summation-order differences into an update difference up to lr (3e-4) a step,
    # so single entries may differ by a fraction of the training move. Compare the moves as a
    # whole: the two-process move equals the one-process move up to a small relative error.
    start = load_file(str(STUDENT))
    moved = sum(float((a[k] - start[k]).double().square().sum()) for k in a) ** 0.5
    apart = sum(float((a[k] - b[k]).double().square().sum()) for k in a) ** 0.5
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 3e-4  # it trained
    assert apart < 0.02 * moved, (apart, moved)


def test_fsdp2_rollouts_gather_the_student_once_per_generate_call(data, tmp_path):
    """The step's rollouts in one generate call on full weights: FSDP2's all-gathers in the
    rollout phase do not grow with the answer length (they did: once per unit per generated
    token), and 2 processes x batch 1 still step like 1 process x batch 2, micro-batches joined."""
    common = ["--steps", "2", "--gradient-accumulation-steps", "2", "--eval-steps", "0", "--eval-limit", "2"]
    short = run(data, tmp_path / "short", 2, 1, "fsdp2.yaml", *common, "--max-new-tokens", "4")
    long = run(data, tmp_path / "long", 2, 1, "fsdp2.yaml", *common, "--max-new-tokens", "24")
    rollout = [two["ranks"][0]["all_gathers"]["rollout"] for two in (short, long)]
    assert rollout[1] <= 1.15 * rollout[0], rollout
    assert long["ranks"][0]["rows"][0]["mean_answer_len"] > short["ranks"][0]["rows"][0]["mean_answer_len"]
    one = run(data, tmp_path / "one", 1, 2, None, *common, "--max-new-tokens", "24")
    assert long["ranks"][0]["losses"] == pytest.approx(one["ranks"][0]["losses"], rel=1e-5, abs=1e-7)
    assert max_weight_difference(long["weights"], one["weights"]) < 1e-5
    # and the student's forward and backward gather as they do without it: the first rollout
    # (the model's first forward) left the root kept unsharded after forward, as FSDP2 makes it
    per_unit = run(
        data,
        tmp_path / "per_unit",
        2,
        1,
        "fsdp2.yaml",
        *common,
        "--max-new-tokens",
        "4",
        "--gather-for-generation",
        "false",
    )
    student = [two["ranks"][0]["all_gathers"]["student"] for two in (short, per_unit)]
    assert student[0] == student[1], student


def test_fsdp2_exact_objective_keeps_one_teacher_head(data, tmp_path):
    """Under FSDP2 the exact objective copies the gathered teacher head once for the run, not once
    per micro-batch: with a 262,144-row head (64 MiB in fp32) the step's peak memory grows by
    less than one head from --gradient-accumulation-steps 1 to 8 (it grew by one head per micro-batch)."""
    head_mib = 262_144 * 64 * 4 / 2**20
    common = [
        "--steps",
        "1",
        "--objective",
        "full",
        "--teacher-head-rows",
        "262144",
        "--eval-steps",
        "0",
        "--eval-limit",
        "1",
    ]
    peaks = []
    for accumulation in (1, 8):
        two = run(
            data,
            tmp_path / f"ga{accumulation}",
            2,
            1,
            "fsdp2.yaml",
            *common,
            "--gradient-accumulation-steps",
            str(accumulation),
        )
        peaks.append(max(two["ranks"][0]["rows"][0]["peak_mem_mb_per_rank"]))
    assert peaks[1] - peaks[0] < head_mib, peaks
