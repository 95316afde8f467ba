"""The loop's sampled-OPD and GRPO losses (fused_policy_gradient_loss) against the unfused reference
they replaced: token_logprobs, then sampled_reverse_kl_loss / policy_gradient_loss; values,
logged metric sums and gradients."""

from __future__ import annotations

import pytest
import torch

from opd_kernels import policy_gradient_loss, sampled_reverse_kl_loss, token_logprobs
from videoopd.algo.grpo import GRPOObjective
from videoopd.algo.objectives import DistillationObjective, answer_slice, group_mean_baseline
from videoopd.qwen.generation import Rollout

PROMPT, ANSWER, D, V = 3, 6, 16, 97


def _rollout(batch: int, seed: int = 0, sampler: bool = True) -> tuple[Rollout, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sequences = torch.randint(0, V, (batch, PROMPT + ANSWER), generator=gen)
    answer_mask = torch.zeros(batch, PROMPT + ANSWER, dtype=torch.bool)
    lengths = torch.randint(0, ANSWER + 1, (batch,), generator=gen)
    for row, length in enumerate(lengths.tolist()):
        answer_mask[row, PROMPT : PROMPT + length] = True
    sampler_lp = -torch.rand(batch, ANSWER, generator=gen) * 4 if sampler else None
    rollout = Rollout(
        sequences=sequences,
        attention_mask=torch.ones_like(answer_mask),
        answer_mask=answer_mask,
        prompt_length=PROMPT,
        answers=[""] * batch,
        sampler_logprobs=sampler_lp,
    )
    hidden = torch.randn(batch, PROMPT + ANSWER, D, generator=gen).requires_grad_()
    weight = (torch.randn(V, D, generator=gen) * 0.3).requires_grad_()
    return rollout, hidden, weight


def _compare(loss, sums, want, want_sums, hidden, weight):
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-5)
    assert set(sums) == set(want_sums)
    for name, value in want_sums.items():
        torch.testing.assert_close(sums[name], value, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    got = torch.autograd.grad(loss, [hidden, weight])
    expected = torch.autograd.grad(want, [hidden, weight])
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("num_generations, advantage_clip", [(1, None), (1, 0.5), (2, 0.5), (2, None)])
@pytest.mark.parametrize("sampler", [True, False])
def test_sampled_opd_loss_equals_the_unfused_reference(num_generations, advantage_clip, sampler):
    rollout, hidden, weight = _rollout(4, sampler=sampler)
    objective = DistillationObjective(
        None, None, num_generations=num_generations, advantage_clip=advantage_clip, temperature=0.8
    )
    teacher_lp = -torch.rand(4, ANSWER, generator=torch.Generator().manual_seed(9)) * 4
    loss, sums = objective.loss(hidden, weight, rollout, {"teacher_logprobs": teacher_lp})

    h, tokens, mask = answer_slice(hidden, rollout)
    lp = token_logprobs(h, weight, tokens, temperature=0.8)
    baseline = group_mean_baseline((teacher_lp - lp).detach(), mask, num_generations) if num_generations > 1 else None
    want, m = sampled_reverse_kl_loss(
        lp,
        teacher_lp,
        mask,
        old_logprobs=rollout.sampler_logprobs,
        baseline=baseline,
        advantage_clip=advantage_clip,
        reduction="sum",
    )
    want_sums = {"reverse_kl_sum": (m["reverse_kl"] * m["tokens"]).double()}
    for name in ("importance_ratio", "advantage_clipped_fraction"):
        if name in m:
            want_sums[f"{name}_sum"] = (m[name] * m["tokens"]).double()
    _compare(loss, sums, want, want_sums, hidden, weight)


@pytest.mark.parametrize("beta", [0.0, 0.1])
@pytest.mark.parametrize("sampler", [True, False])
def test_grpo_loss_equals_the_unfused_reference(beta, sampler):
    rollout, hidden, weight = _rollout(4, seed=1, sampler=sampler)
    objective = GRPOObjective(None, num_generations=2, beta=beta, reference=object() if beta else None, temperature=1.2)
    advantages = torch.tensor([0.7, -0.7, 1.1, -1.1], dtype=torch.float64)
    reference = -torch.rand(4, ANSWER, generator=torch.Generator().manual_seed(4)) * 4 if beta else None
    loss, sums = objective.loss(hidden, weight, rollout, advantages, reference)

    h, tokens, mask = answer_slice(hidden, rollout)
    lp = token_logprobs(h, weight, tokens, temperature=1.2)
    old = rollout.sampler_logprobs
    want, m = policy_gradient_loss(
        lp,
        advantages.float()[:, None].expand_as(lp),
        mask,
        old_logprobs=old,
        clip_eps=0.2 if old is not None else None,
        reference_logprobs=reference,
        beta=beta,
        reduction="sum",
    )
    want_sums = {
        f"{name}_sum": (m[name] * m["tokens"].double()).double()
        for name in ("importance_ratio", "clipped_fraction", "reference_kl")
        if name in m
    }
    _compare(loss, sums, want, want_sums, hidden, weight)
