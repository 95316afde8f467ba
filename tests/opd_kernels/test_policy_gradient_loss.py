"""policy_gradient_loss (GRPO / PPO token loss) against float64 hand computations; the OPD
sampled loss is the same loss with A = lp_t - lp_s."""

import pytest
import torch

from opd_kernels import policy_gradient_loss, sampled_reverse_kl_loss


def _batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    lp = -torch.rand(4, 6, generator=gen, dtype=torch.float64) * 3
    adv = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    old = lp - 0.4 * torch.randn(4, 6, generator=gen, dtype=torch.float64)  # ratios well outside 1 +- 0.2
    ref = lp - 0.3 * torch.randn(4, 6, generator=gen, dtype=torch.float64)
    mask = torch.rand(4, 6, generator=gen) < 0.75
    mask[3] = False
    return lp.requires_grad_(), adv, old, ref, mask


@pytest.mark.parametrize("reduction", ["mean", "sequence_sum", "sum"])
@pytest.mark.parametrize("clip_eps", [None, 0.2])
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_against_the_clipped_surrogate_by_hand(reduction, clip_eps, beta):
    lp, adv, old, ref, mask = _batch()
    loss, metrics = policy_gradient_loss(
        lp, adv, mask, old_logprobs=old, clip_eps=clip_eps, reference_logprobs=ref, beta=beta, reduction=reduction
    )
    (grad,) = torch.autograd.grad(loss, [lp])

    # by hand: PPO's clipped surrogate, differentiated by autograd in float64
    x = lp.detach().clone().requires_grad_()
    ratio = torch.exp(x - old)
    clipped = ratio if clip_eps is None else torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    surrogate = -torch.minimum(ratio * adv, clipped * adv)
    k3 = torch.exp(ref - x) - (ref - x) - 1
    per_token = (surrogate + beta * k3) * mask
    m = mask.double()
    norm = {"mean": 1 / m.sum(), "sequence_sum": 1 / x.shape[0], "sum": 1.0}[reduction]
    (want_grad,) = torch.autograd.grad(per_token.sum() * norm, [x])
    torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-12)
    # the value: -A * w * lp (w the detached ratio, 0 where the surrogate is flat) + beta * k3
    r = torch.exp(lp.detach() - old)
    flat = (
        torch.zeros_like(mask)
        if clip_eps is None
        else ((adv > 0) & (r > 1 + clip_eps)) | ((adv < 0) & (r < 1 - clip_eps))
    )
    w = torch.where(flat, torch.zeros_like(r), r)
    want = ((-adv * w * lp.detach() + beta * k3.detach()) * m).sum() * norm
    torch.testing.assert_close(loss.detach(), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(metrics["importance_ratio"], (r * m).sum() / m.sum())
    torch.testing.assert_close(metrics["reference_kl"], (k3.detach() * m).sum() / m.sum())
    if clip_eps is not None:
        assert 0 < metrics["clipped_fraction"] < 1  # the batch does exercise the clip
        torch.testing.assert_close(metrics["clipped_fraction"], (flat & mask).double().sum() / m.sum())
    assert metrics["tokens"] == mask.sum() and not any(t.requires_grad for t in metrics.values())


def test_equal_rewards_give_zero_loss_and_zero_gradient():
    lp, _, old, _, mask = _batch()
    loss, _ = policy_gradient_loss(lp, torch.zeros_like(lp), mask, old_logprobs=old, clip_eps=0.2)
    (grad,) = torch.autograd.grad(loss, [lp])
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0


def test_all_masked_and_nonfinite_masked_tokens_contribute_zero():
    lp, adv, old, ref, mask = _batch()
    poisoned = lp.detach().clone()
    poisoned[~mask] = float("nan")
    poisoned.requires_grad_()
    old_p, ref_p, adv_p = old.clone(), ref.clone(), adv.clone()
    old_p[~mask], ref_p[~mask], adv_p[~mask] = -float("inf"), float("nan"), float("inf")
    loss, _ = policy_gradient_loss(
        poisoned, adv_p, mask, old_logprobs=old_p, clip_eps=0.2, reference_logprobs=ref_p, beta=0.1
    )
    (grad,) = torch.autograd.grad(loss, [poisoned])
    clean, _ = policy_gradient_loss(lp, adv, mask, old_logprobs=old, clip_eps=0.2, reference_logprobs=ref, beta=0.1)
    torch.testing.assert_close(loss, clean.detach())
    assert torch.isfinite(grad).all() and torch.count_nonzero(grad[~mask]) == 0
    none = torch.zeros_like(mask)
    loss, metrics = policy_gradient_loss(lp, adv, none)
    (grad,) = torch.autograd.grad(loss, [lp])
    assert loss.item() == 0.0 and torch.count_nonzero(grad) == 0 and metrics["tokens"] == 0


@pytest.mark.parametrize("with_old", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sequence_sum", "sum"])
def test_sampled_opd_loss_is_the_policy_gradient_loss(with_old, reduction):
    lp, _, old, teacher, mask = _batch(1)
    a, am = sampled_reverse_kl_loss(lp, teacher, mask, old_logprobs=old if with_old else None, reduction=reduction)
    (ga,) = torch.autograd.grad(a, [lp])
    b, _ = policy_gradient_loss(
        lp, (teacher - lp).detach(), mask, old_logprobs=old if with_old else None, reduction=reduction
    )
    (gb,) = torch.autograd.grad(b, [lp])
    assert torch.equal(a, b) and torch.equal(ga, gb)
    m = mask.double()
    torch.testing.assert_close(am["reverse_kl"], ((lp.detach() - teacher) * m).sum() / m.sum())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"clip_eps": 0.2}, "clip_eps needs old_logprobs"),
        ({"clip_eps": 1.5, "old_logprobs": True}, "clip_eps must be a number in"),
        ({"beta": 0.1}, "beta > 0 needs reference_logprobs"),
        ({"beta": -1.0}, "beta must be a finite number"),
        ({"reduction": "token_sum"}, "reduction"),
    ],
)
def test_bad_arguments(kwargs, message):
    lp, adv, old, _, mask = _batch()
    if kwargs.get("old_logprobs") is True:
        kwargs["old_logprobs"] = old
    with pytest.raises(ValueError, match=message):
        policy_gradient_loss(lp, adv, mask, **kwargs)
    with pytest.raises(ValueError, match="advantages has shape"):
        policy_gradient_loss(lp, adv[:, :3], mask)


@pytest.mark.parametrize("baseline", [None, -0.7])
def test_expected_sampled_gradient_is_the_exact_reverse_kl_gradient(baseline):
    """On a small categorical, the sampled OPD loss's gradient averaged over every token y
    (weighted by the student's p_y) equals the gradient of the exact KL(p || q), with or
    without a constant baseline."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(7, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.log_softmax(torch.randn(7, generator=gen, dtype=torch.float64), dim=0)
    log_p = torch.log_softmax(logits, dim=0)
    (exact,) = torch.autograd.grad((log_p.exp() * (log_p - teacher)).sum(), [logits])
    expected = torch.zeros_like(logits)
    for y in range(7):
        lp = torch.log_softmax(logits, dim=0)[y].reshape(1, 1)
        b = None if baseline is None else torch.full((1, 1), baseline, dtype=torch.float64)
        loss, _ = sampled_reverse_kl_loss(lp, teacher[y].reshape(1, 1), torch.ones(1, 1, dtype=torch.bool), baseline=b)
        (g,) = torch.autograd.grad(loss, [logits])
        expected += log_p.detach()[y].exp() * g
    torch.testing.assert_close(expected, exact, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sequence_sum", "sum"])
def test_sampled_opd_baseline_and_advantage_clip_against_float64(reduction):
    lp, _, old, teacher, mask = _batch(2)
    baseline = torch.linspace(-1.0, 1.0, lp.shape[0], dtype=torch.float64)[:, None]
    loss, metrics = sampled_reverse_kl_loss(
        lp, teacher, mask, old_logprobs=old, baseline=baseline, advantage_clip=0.5, reduction=reduction
    )
    (grad,) = torch.autograd.grad(loss, [lp])
    lp64 = lp.detach().double().requires_grad_()
    m = mask.double()
    advantage = ((teacher.double() - lp64.detach()) - baseline).clamp(-0.5, 0.5) * m
    ratio = torch.exp(lp64.detach() - old.double()) * m
    per_token = -advantage * ratio * lp64 * m
    want = {"mean": per_token.sum() / m.sum(), "sum": per_token.sum(), "sequence_sum": per_token.sum(dim=-1).mean()}[
        reduction
    ]
    (want_grad,) = torch.autograd.grad(want, [lp64])
    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-6, atol=1e-7)
    raw = ((teacher.double() - lp.detach().double()) - baseline) * m
    torch.testing.assert_close(
        metrics["advantage_clipped_fraction"].double(), ((raw.abs() > 0.5) & mask).sum().double() / m.sum()
    )
    torch.testing.assert_close(metrics["reverse_kl"].double(), ((lp.detach().double() - teacher) * m).sum() / m.sum())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"advantage_clip": 0.0}, "advantage_clip must be a finite number > 0"),
        ({"advantage_clip": True}, "advantage_clip must be"),
        ({"baseline": torch.zeros(3, 2)}, "baseline has shape"),
        ({"baseline": torch.zeros(1, 1, dtype=torch.long)}, "baseline must be a floating tensor"),
    ],
)
def test_sampled_opd_bad_variance_options(kwargs, message):
    lp, _, _, teacher, mask = _batch()
    with pytest.raises(ValueError, match=message):
        sampled_reverse_kl_loss(lp, teacher, mask, **kwargs)
