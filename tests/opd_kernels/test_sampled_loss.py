"""sampled_reverse_kl_loss: the policy-gradient formula by hand in float64."""

import pytest
import torch

from opd_kernels import sampled_reverse_kl_loss


def _batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    student = -torch.rand(3, 7, generator=gen, dtype=torch.float64) * 3
    teacher = -torch.rand(3, 7, generator=gen, dtype=torch.float64) * 3
    old = student - 0.1 * torch.randn(3, 7, generator=gen, dtype=torch.float64)
    mask = torch.rand(3, 7, generator=gen) < 0.7
    mask[2] = False  # a sequence with no completion tokens
    return student.requires_grad_(), teacher, old, mask


@pytest.mark.parametrize("reduction", ["mean", "sequence_sum", "sum"])
@pytest.mark.parametrize("with_old", [False, True])
def test_gradient_is_the_policy_gradient(reduction, with_old):
    student, teacher, old, mask = _batch()
    loss, metrics = sampled_reverse_kl_loss(
        student, teacher, mask, old_logprobs=old if with_old else None, reduction=reduction
    )
    (grad,) = torch.autograd.grad(loss, [student])

    # by hand: d loss / d lp_s = -A * ratio * (normaliser), A = lp_t - lp_s, ratio = exp(lp_s - lp_old)
    s, m = student.detach(), mask.double()
    ratio = torch.exp(s - old) if with_old else torch.ones_like(s)
    per_token_grad = -(teacher - s) * ratio * m
    norm = {"mean": 1 / m.sum(), "sequence_sum": 1 / s.shape[0], "sum": 1.0}[reduction]
    torch.testing.assert_close(grad, per_token_grad * norm, rtol=1e-12, atol=1e-12)
    want_loss = (-(teacher - s) * ratio * s * m).sum() * norm
    torch.testing.assert_close(loss.detach(), want_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(metrics["reverse_kl"], ((s - teacher) * m).sum() / m.sum())
    assert metrics["tokens"].item() == mask.sum().item()
    assert not any(t.requires_grad for t in metrics.values())
    if with_old:
        torch.testing.assert_close(metrics["importance_ratio"], (ratio * m).sum() / m.sum())


def test_student_equal_teacher_gives_zero_loss_and_gradient():
    student, _, _, mask = _batch()
    loss, metrics = sampled_reverse_kl_loss(student, student.detach().clone(), mask)
    (grad,) = torch.autograd.grad(loss, [student])
    assert loss.item() == 0 and (grad == 0).all() and metrics["reverse_kl"].item() == 0


def test_masked_tokens_contribute_exactly_zero_even_if_infinite():
    student, teacher, _, mask = _batch()
    poisoned = student.detach().clone()
    poisoned[~mask] = float("-inf")
    poisoned.requires_grad_()
    loss, _ = sampled_reverse_kl_loss(poisoned, teacher, mask)
    loss.backward()
    assert torch.isfinite(loss) and (poisoned.grad[~mask] == 0).all()


def test_all_masked_gives_zero_not_nan():
    student, teacher, _, mask = _batch()
    for reduction in ("mean", "sequence_sum", "sum"):
        loss, metrics = sampled_reverse_kl_loss(student, teacher, torch.zeros_like(mask), reduction=reduction)
        (grad,) = torch.autograd.grad(loss, [student])
        assert loss.item() == 0 and (grad == 0).all() and metrics["reverse_kl"].item() == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(teacher_logprobs=torch.zeros(3, 6)), "teacher_logprobs has shape"),
        (dict(mask=torch.ones(3, 7)), "mask must be a bool"),
        (dict(mask=torch.ones(3, 6, dtype=torch.bool)), "mask has shape"),
        (dict(old_logprobs=torch.zeros(7)), "old_logprobs has shape"),
        (dict(reduction="batchmean"), "reduction"),
        (dict(teacher_logprobs=torch.zeros(3, 7, dtype=torch.long)), "teacher_logprobs must be a floating"),
    ],
)
def test_bad_input(kwargs, match):
    student, teacher, _, mask = _batch()
    args = dict(student_logprobs=student, teacher_logprobs=teacher, mask=mask)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sampled_reverse_kl_loss(args.pop("student_logprobs"), args.pop("teacher_logprobs"), args.pop("mask"), **args)
