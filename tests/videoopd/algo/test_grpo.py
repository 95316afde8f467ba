"""GRPO in the one loop: rewards, group advantages against float64 hand computations, a group
of equal rewards giving zero gradient, seeds per group member, a 2-step demo run and a 2-step
`videoopd.compare` run (2 processes: test_distributed.py)."""

from __future__ import annotations

import json

import pytest
import torch

from opd_kernels import policy_gradient_loss
from videoopd import compare as CMP
from videoopd import train as T
from videoopd.algo.grpo import GroupedCollator, GRPOObjective, group_advantages
from videoopd.grounding.rewards import iou_reward, is_exact_format


def test_rewards():
    assert iou_reward("2.00 to 4.00", (2.0, 4.0)) == (1.0, True)
    assert iou_reward("it starts at 3 seconds and ends at 5", (2.0, 4.0)) == (pytest.approx(1 / 3), True)
    assert iou_reward("4.0 to 2.0", (2.0, 4.0)) == (0.0, True)  # start >= end: parsed, scores 0
    assert iou_reward("no idea", (2.0, 4.0)) == (0.0, False)
    assert is_exact_format("12.54 to 17.83") and is_exact_format(" 3 to 5. ")
    assert not is_exact_format("from 3 to 5") and not is_exact_format("3 to 5 seconds")


@pytest.mark.parametrize("mode", ["std", "mean"])
def test_group_advantages_by_hand(mode):
    rewards = torch.tensor([0.1, 0.5, 0.9, 0.3, 0.0, 0.0, 0.0, 0.0, 1.0, 0.2, 0.2, 0.6], dtype=torch.float64)
    got = group_advantages(rewards, 4, mode)
    for g in range(3):
        r = [float(x) for x in rewards[4 * g : 4 * g + 4]]
        mean = sum(r) / 4
        std = (sum((x - mean) ** 2 for x in r) / 3) ** 0.5
        want = [(x - mean) / (std + 1e-4) if mode == "std" else x - mean for x in r]
        assert got[4 * g : 4 * g + 4].tolist() == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert got[4:8].abs().max() == 0  # equal rewards: no signal
    with pytest.raises(ValueError, match="groups"):
        group_advantages(rewards[:10], 4)
    with pytest.raises(ValueError, match="mode"):
        group_advantages(rewards, 4, "median")


def test_equal_rewards_give_zero_gradient():
    lp = (-torch.rand(4, 5, dtype=torch.float64)).requires_grad_()
    advantages = group_advantages(torch.full((4,), 0.7, dtype=torch.float64), 4)
    loss, _ = policy_gradient_loss(
        lp,
        advantages[:, None].expand_as(lp),
        torch.ones(4, 5, dtype=torch.bool),
        old_logprobs=lp.detach(),
        clip_eps=0.2,
    )
    (grad,) = torch.autograd.grad(loss, [lp])
    assert torch.count_nonzero(grad) == 0


def test_grouped_collator_repeats_each_prompt():
    collated = GroupedCollator(lambda items: items, 3)(["a", "b"])
    assert collated == ["a", "a", "a", "b", "b", "b"]
    with pytest.raises(ValueError, match="num_generations"):
        GroupedCollator(lambda items: items, 0)


def test_grpo_options_are_checked():
    with pytest.raises(T.ConfigError, match="num_generations must be >= 2"):
        T.resolve_config(["--algo", "grpo", "--num-generations", "1"])
    with pytest.raises(T.ConfigError, match="--epsilon"):
        T.resolve_config(["--algo", "grpo", "--epsilon", "1.5"])
    from videoopd.algo.algorithms import default_reduction

    assert T.resolve_config(["--algo", "grpo"]).reduction == "mean"  # auto, resolved when parsed
    assert (default_reduction("grpo"), default_reduction("opd")) == ("mean", "sequence_sum")


def test_one_reduction_vocabulary_with_opd_kernels():
    """videoopd's reductions are opd_kernels' names; the old token_mean still works for one
    release, as in opd_kernels: a DeprecationWarning, then the same as mean."""
    import opd_kernels
    from videoopd.algo.objectives import REDUCTIONS, check_reduction

    assert set(REDUCTIONS) <= set(opd_kernels.REDUCTIONS)
    with pytest.warns(DeprecationWarning, match="'token_mean' is deprecated; use 'mean'"):
        assert check_reduction("token_mean") == "mean"
    with pytest.warns(DeprecationWarning, match="'token_mean' is deprecated"):
        cfg = T.resolve_config(["--algo", "grpo", "--reduction", "token_mean"])
    assert cfg.reduction == "mean"  # what config.yaml records
    with pytest.warns(DeprecationWarning):
        objective = GRPOObjective(None, reduction="token_mean")
    assert objective.reduction == "mean" and GRPOObjective(None).reduction == "mean"
    with pytest.raises(ValueError, match="reduction must be one of"):
        check_reduction("tokens")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# 4 two-event videos: 4 prompts, 4 held-out queries
SMALL = ["--demo-videos", "4", "--eval-limit", "2", "--eval-on-start", "false", "--no-progress"]


@pytest.mark.slow
def test_grpo_demo_steps_and_logs(tmp_path):
    out = tmp_path / "grpo"
    assert (
        T.main(
            [
                *SMALL,
                "--algo",
                "grpo",
                "--max-steps",
                "2",
                "--per-device-train-batch-size",
                "2",
                "--num-generations",
                "3",
                "--eval-teacher",
                "false",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["rollouts"] == 6 and 0 <= r["reward"] <= 1 and 0 <= r["parsed_rate"] <= 1
        assert r["importance_ratio"] == pytest.approx(1.0, abs=1e-3)  # the sampler's log-probs are the policy's
        assert "clipped_fraction" in r and "reverse_kl" not in r
    assert (out / "final" / "model.safetensors").is_file()
    assert json.loads((out / "demo_summary.json").read_text())["algo"] == "grpo"


@pytest.mark.slow
def test_compare_demo_writes_table_plot_and_runs(tmp_path):
    out = tmp_path / "cmp"
    assert (
        CMP.main(
            [
                *SMALL,
                "--budget",
                "steps",
                "--budget-value",
                "2",
                "--eval-steps",
                "2",
                "--output-dir",
                str(out),
                "--grpo-args",
                "--per-device-train-batch-size 1 --num-generations 2",
            ]
        )
        == 0
    )
    table = (out / "comparison.md").read_text()
    assert table.splitlines()[0].startswith("| method | steps | R1@0.3")
    assert "| opd | 2 |" in table and "| grpo | 2 |" in table and "Teacher held-out mIoU" in table
    data = json.loads((out / "comparison.json").read_text())
    assert set(data["runs"]) == {"opd", "grpo"}
    # 2 steps each: OPD the demo's batch of 8 prompts over a 4-prompt pool (4 a step) x 1 answer,
    # GRPO 1 prompt x 2 answers
    for name, rollouts in (("opd", 8), ("grpo", 4)):
        run = data["runs"][name]
        assert [e["step"] for e in run["evals"]] == [2] and run["totals"]["rollouts"] == rollouts
        assert run["totals"]["tokens"] > 0 and run["totals"]["peak_mem_mb"] > 0
    assert (out / "comparison.png").stat().st_size > 10_000
    assert (out / "opd" / "metrics.jsonl").is_file() and (out / "grpo" / "metrics.jsonl").is_file()


def test_compare_budgets_become_each_methods_steps(tmp_path):
    argv = CMP.method_argv(
        "grpo", ["--learning-rate", "1e-5"], ["--per-device-train-batch-size", "2"], "samples", 100, 2, tmp_path, 10
    )
    assert argv[argv.index("--max-steps") + 1] == "50" and argv[argv.index("--algo") + 1] == "grpo"
    argv = CMP.method_argv("opd", [], [], "seconds", 30, 8, tmp_path, 10)
    assert argv[argv.index("--time-budget-s") + 1] == "30"
    assert CMP.main(["--methods", "opd,ppo"]) == 2
