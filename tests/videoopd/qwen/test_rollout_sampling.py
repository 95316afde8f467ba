"""SeededSampler: exact sampling from softmax(z / T) (with top-p), one generator per prompt."""

import pytest
import torch

from videoopd.qwen.generation import SeededSampler, rollout_seed


def _draws(z, seeds, **kw):
    sampler = SeededSampler(seeds, **kw)
    return sampler(None, z.expand(len(seeds), -1)).argmax(dim=-1)


@pytest.mark.parametrize("temperature", [0.7, 1.0, 2.0])
def test_frequencies_match_the_tempered_softmax(temperature):
    torch.manual_seed(0)
    z = torch.randn(6) * 2
    draws = _draws(z, range(40_000), temperature=temperature)
    freq = torch.bincount(draws, minlength=6).double() / len(draws)
    expected = torch.softmax(z.double() / temperature, dim=0)
    # 40k draws: 4 standard errors of the largest probability is < 0.01
    torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)


def test_top_p_keeps_the_nucleus_only():
    z = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    draws = _draws(z, range(20_000), top_p=0.8)
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    assert freq[2] == 0 and freq[3] == 0  # outside the smallest prefix reaching 0.8
    torch.testing.assert_close(freq[:2], torch.tensor([0.5, 0.3], dtype=torch.float64) / 0.8, atol=0.015, rtol=0)


def test_a_rows_sample_depends_on_its_seed_only():
    z = torch.randn(3, 50)
    alone = SeededSampler([11])(None, z[1:2].clone())
    together = SeededSampler([7, 11, 13])(None, z.clone())
    assert torch.equal(alone[0], together[1])  # same noise whatever the other rows are
    second = SeededSampler([11])
    second(None, z[1:2].clone())
    assert not torch.equal(second(None, z[1:2].clone()), alone)  # the next token draws fresh noise


def test_rollout_seed_is_stable_and_spread():
    assert rollout_seed(0, 1, "a") == rollout_seed(0, 1, "a")
    assert len({rollout_seed(0, step, rid) for step in range(5) for rid in "abcd"}) == 20
    assert 0 <= rollout_seed(3, 2, "x") < 2**63


def test_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        SeededSampler([1], temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        SeededSampler([1], top_p=1.5)
    with pytest.raises(ValueError, match="2 seeds for a batch of 3"):
        SeededSampler([1, 2])(None, torch.zeros(3, 4))


def test_sampler_records_the_log_probs_it_drew_from():
    """The log-prob of each drawn token under the tempered, nucleus-filtered distribution: what
    the policy-gradient losses use as the old policy's."""
    gen = torch.Generator().manual_seed(0)
    steps = [torch.randn(2, 9, generator=gen) for _ in range(3)]
    sampler = SeededSampler([5, 6], temperature=0.7, top_p=0.8)
    ids = torch.zeros(2, 1, dtype=torch.long)
    drawn = []
    for z in steps:
        token = sampler(ids, z.clone()).argmax(dim=-1, keepdim=True)
        drawn.append(token)
        ids = torch.cat([ids, token], dim=1)
    got = sampler.sampled_logprobs(ids[:, 1:])
    for k, z in enumerate(steps):
        scaled = z / 0.7
        probs = scaled.softmax(-1)
        sorted_p, order = probs.sort(-1, descending=True)
        keep_sorted = sorted_p.cumsum(-1) - sorted_p < 0.8
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        want = scaled.masked_fill(~keep, float("-inf")).log_softmax(-1).gather(1, drawn[k]).squeeze(1)
        torch.testing.assert_close(got[:, k], want)
    assert (got <= 0).all()
