"""The non-finite step guard on one process (2 processes: test_faults.py): a step whose gradients
or loss are NaN is skipped (weights, optimizer state and schedule as before it), counted in the
rows with its records, and the run goes on; ``--max-skipped-steps`` stops a run that skips more
in a row, naming the steps and records; a resumed run counts as the uninterrupted one."""

from __future__ import annotations

import contextlib
import json
import math
import traceback

import faults  # noqa: E402  (this folder's)
import pytest
import torch
from torch.overrides import TorchFunctionMode

from videoopd import train as T
from videoopd.data.annotations import load_annotations
from videoopd.qwen.models import prepare_policy
from videoopd.qwen.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer
from videoopd.training import loop
from videoopd.training.guard import TooManySkippedSteps, flag_nonfinite_loss
from videoopd.training.loop import make_accelerator
from videoopd.training.post_training import run_post_training

SMALL_PIXELS = {"min_pixels": 56 * 56, "max_pixels": 64 * 96}  # as in conftest.py


def inject(monkeypatch, fault: str, *steps: int) -> None:
    for step in steps:
        faults.install(fault, 0, step, monkeypatch.setattr)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def train(synthetic_dir, out, steps: int, dtype: torch.dtype = torch.float32, **options):
    """``dtype`` bf16: the student gets fp32 master weights, which AdamW steps."""
    tok = build_tiny_tokenizer("qwen3_vl")
    proc = build_tiny_processor("qwen3_vl", tok)
    student = prepare_policy(
        build_tiny_model("qwen3_vl", tok, seed=1, hidden_size=32).to(dtype),
        trainable=True,
        gradient_checkpointing=False,
    )
    teacher = prepare_policy(build_tiny_model("qwen3_vl", tok, seed=2, hidden_size=64).to(dtype), trainable=False)
    records, _ = load_annotations(synthetic_dir / "annotations.jsonl")
    # a warm-up over every step: each schedule step changes the lr
    cfg = T.TrainConfig(
        learning_rate=1e-3,
        warmup_steps=4,
        max_steps=steps,
        per_device_train_batch_size=1,
        max_new_tokens=6,
        output_dir=str(out),
        progress=False,
        device="cpu",
        **SMALL_PIXELS,
        **options,
    )
    seen = []

    def on_step(run, row, ids):  # after each step: the weights, AdamW's state, the schedule
        moments = [s[k] for s in run.optimizer.state.values() for k in ("exp_avg", "exp_avg_sq", "step")]
        seen.append(
            {
                "weights": flat(run.model.parameters()),
                "stepped": flat(p for g in run.optimizer.param_groups for p in g["params"]),  # bf16: the masters
                "has_masters": run.masters is not None,
                "moments": flat(moments),
                "schedule": run.scheduler.last_epoch,
                "ids": ids,
                "skipped_steps": row["skipped_steps"],
            }
        )

    summary = run_post_training(
        cfg, make_accelerator(cfg), student, teacher, proc, records, None, log=lambda *_: None, on_step=on_step
    )
    return summary, seen


def test_flag_keeps_a_finite_loss_bit_for_bit():
    loss = torch.tensor(2.24405527, requires_grad=True)
    flagged = flag_nonfinite_loss(loss)
    flagged.backward()
    assert torch.equal(flagged, loss) and loss.grad == 1.0
    for bad in (math.nan, math.inf):
        x = torch.tensor(bad, requires_grad=True)
        flag_nonfinite_loss(x).backward()
        assert torch.isnan(x.grad)


# without clipping (--max-grad-norm 0) the guard computes the norm by itself; a bf16 student
# steps fp32 masters
@pytest.mark.parametrize(
    "fault, max_grad_norm, dtype",
    [
        ("nan_gradient", 1.0, torch.float32),
        ("nan_loss", 1.0, torch.float32),
        ("nan_gradient", 0.0, torch.float32),
        ("nan_gradient", 1.0, torch.bfloat16),
    ],
)
def test_a_nonfinite_step_is_skipped_and_the_run_goes_on(
    synthetic_dir, tmp_path, monkeypatch, fault, max_grad_norm, dtype
):
    inject(monkeypatch, fault, 2)
    summary, seen = train(synthetic_dir, tmp_path / "run", 3, dtype, max_grad_norm=max_grad_norm)
    assert seen[0]["has_masters"] == (dtype == torch.bfloat16)
    rows = summary.steps
    assert [r["skipped_steps"] for r in rows] == [s["skipped_steps"] for s in seen] == [0, 1, 1]
    assert "skipped_records" not in rows[0] and "skipped_records" not in rows[2]
    assert rows[1]["skipped_records"] == seen[1]["ids"] and seen[1]["ids"]
    if max_grad_norm:
        assert not math.isfinite(rows[1]["grad_norm"]) and math.isfinite(rows[2]["grad_norm"])
    # step 2 changed nothing: weights, AdamW's moments and step counts, the schedule (its lr)
    assert torch.equal(seen[1]["weights"], seen[0]["weights"])
    assert torch.equal(seen[1]["stepped"], seen[0]["stepped"])
    assert torch.equal(seen[1]["moments"], seen[0]["moments"])
    assert [s["schedule"] for s in seen] == [1, 1, 2] and rows[2]["lr"] == rows[1]["lr"]
    assert not torch.equal(seen[2]["stepped"], seen[1]["stepped"])  # step 3 trains again
    assert torch.isfinite(seen[2]["weights"]).all() and torch.isfinite(seen[2]["stepped"]).all()
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in logged if "loss" in r] == [0, 1, 1]


def test_max_skipped_steps_stops_the_run_naming_steps_and_records(synthetic_dir, tmp_path, monkeypatch):
    inject(monkeypatch, "nan_gradient", 2, 3)
    with pytest.raises(
        TooManySkippedSteps,
        match=r"2 consecutive .*--max-skipped-steps 1.*step 2 \(records "
        r".+\); step 3 \(records .+\)",
    ):
        train(synthetic_dir, tmp_path / "run", 4, max_skipped_steps=1)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in logged if "loss" in r] == [0, 1, 2]  # the last row is written


def test_resume_counts_skipped_steps_as_the_uninterrupted_run(synthetic_dir, tmp_path, monkeypatch):
    """Skipped at step 2, saved, resumed: step 3 skipped too is the second in a row, as it would
    be without the stop, and the total goes on from 1."""
    inject(monkeypatch, "nan_gradient", 2)
    out = tmp_path / "run"
    train(synthetic_dir, out, 2, save_steps=1)
    monkeypatch.undo()
    inject(monkeypatch, "nan_gradient", 3)
    with pytest.raises(TooManySkippedSteps, match=r"step 2 \(records .+\); step 3"):
        train(synthetic_dir, out, 4, max_skipped_steps=1, resume_from_checkpoint="auto")
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in logged if "loss" in r] == [0, 1, 2]


HOST_READS = {"__bool__", "item", "tolist", "__float__", "__int__", "__index__", "numpy", "__array__", "cpu"}


class HostReads(TorchFunctionMode):
    """Every read of a tensor's value by the host (on a GPU: a host sync) but torch.optim's own:
    AdamW reads the step counts it keeps on the CPU for that reason (also on a GPU)."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS and not any("torch/optim/" in f.filename for f in traceback.extract_stack(limit=8)):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0])
def test_the_guard_adds_no_host_sync(synthetic_dir, tmp_path, monkeypatch, max_grad_norm):
    """From the optimizer phase to the update's end (clipping, the agreed norm, the row's reduce,
    the decision, AdamW and the schedule) the host reads one value a step: the row's, which
    brings the norm; on a skipped step too."""
    counting: list[HostReads] = []  # one a step: from its optimizer phase to its update's end

    class CountingTimer(loop.PhaseTimer):
        @contextlib.contextmanager
        def __call__(self, name):
            if name == "optimizer":
                counting.append(HostReads())
                counting[-1].__enter__()
            with super().__call__(name):
                yield

    update = loop.apply_update

    def apply_update(*args):
        try:
            return update(*args)
        finally:
            counting[-1].__exit__(None, None, None)

    monkeypatch.setattr(loop, "apply_update", apply_update)
    monkeypatch.setattr(loop, "PhaseTimer", CountingTimer)
    inject(monkeypatch, "nan_gradient", 2)
    summary, _ = train(synthetic_dir, tmp_path / "run", 3, max_grad_norm=max_grad_norm)
    assert [r["skipped_steps"] for r in summary.steps] == [0, 1, 1]
    assert [mode.seen for mode in counting] == [["tolist"]] * 3
