"""The sampled OPD objective's variance reductions: the per-prompt group baseline against a
float64 hand computation, the options' checks, and a 2-step demo run with both."""

from __future__ import annotations

import json

import pytest
import torch

from videoopd import train as T
from videoopd.algo.objectives import group_mean_baseline
from videoopd.qwen.generation import group_rollout_seeds, rollout_seed


def test_group_mean_baseline_by_hand():
    values = torch.tensor(
        [[1.0, 2.0, float("nan")], [3.0, float("inf"), 5.0], [7.0, 8.0, 9.0], [1.0, 1.0, 1.0]], dtype=torch.float64
    )
    mask = torch.tensor([[True, True, False], [True, False, True], [False, False, False], [False, False, False]])
    got = group_mean_baseline(values, mask, group_size=2)
    want = torch.tensor([[11.0 / 4], [11.0 / 4], [0.0], [0.0]], dtype=torch.float64)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="groups \\* 3"):
        group_mean_baseline(values, mask, group_size=3)


def test_group_copies_sample_with_their_own_seeds():
    class Record:
        def __init__(self, id):
            self.id = id

    seeds = group_rollout_seeds(0, 5, [Record("a"), Record("a"), Record("b"), Record("b")])
    assert len(set(seeds)) == 4
    assert seeds[0] == rollout_seed(0, 5, "a#0") and seeds[3] == rollout_seed(0, 5, "b#1")


def test_variance_options_are_checked():
    from videoopd.algo.algorithms import default_num_generations

    assert T.resolve_config([]).num_generations == 1  # unset: resolved when parsed (opd: 1), as --reduction auto
    assert (default_num_generations("opd"), default_num_generations("grpo")) == (1, 8)
    with pytest.raises(T.ConfigError, match="--advantage-clip must be >= 0 and finite"):
        T.resolve_config(["--advantage-clip", "-1"])
    with pytest.raises(T.ConfigError, match="--objective sampled only"):
        T.resolve_config(["--objective", "full", "--advantage-clip", "2"])
    with pytest.raises(T.ConfigError, match="--objective sampled only"):
        T.resolve_config(["--algo", "grpo", "--advantage-clip", "2"])


@pytest.mark.slow
def test_sampled_demo_with_group_baseline_and_clip(tmp_path):
    out = tmp_path / "opd"
    assert (
        T.main(
            [
                "--demo-videos",
                "8",
                "--eval-limit",
                "2",
                "--eval-on-start",
                "false",
                "--no-progress",
                "--objective",
                "sampled",
                "--num-generations",
                "2",
                "--advantage-clip",
                "2",
                "--per-device-train-batch-size",
                "2",
                "--max-steps",
                "2",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["rollouts"] == 4 and 0 <= r["advantage_clipped_fraction"] <= 1
        assert r["importance_ratio"] == pytest.approx(1.0, abs=1e-3)
    config = (out / "config.yaml").read_text()
    assert "num_generations: 2" in config and "advantage_clip: 2.0" in config
