"""One reduction vocabulary across the ops (opd_kernels.REDUCTIONS); the losses' old "token_mean"
still works, with a DeprecationWarning."""

import typing
import warnings

import pytest
import torch
from helpers import float64_leaves, make_rkl_inputs

from opd_kernels import (
    REDUCTIONS,
    FusedReverseKL,
    Reduction,
    fused_reverse_kl,
    policy_gradient_loss,
    sampled_reverse_kl_loss,
)
from opd_kernels.testing import reverse_kl_reference


def _losses_batch():
    gen = torch.Generator().manual_seed(0)
    lp = (-torch.rand(3, 5, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    other = -torch.rand(3, 5, generator=gen, dtype=torch.float64) * 3
    mask = torch.rand(3, 5, generator=gen) < 0.7
    mask[2] = False
    return lp, other, mask


def _loss_ops():
    return {
        "policy_gradient_loss": lambda lp, other, mask, **kw: policy_gradient_loss(lp, other, mask, **kw)[0],
        "sampled_reverse_kl_loss": lambda lp, other, mask, **kw: sampled_reverse_kl_loss(lp, other, mask, **kw)[0],
    }


def test_the_vocabulary_is_declared_once():
    assert REDUCTIONS == typing.get_args(Reduction) == ("mean", "sum", "sequence_sum", "none")


@pytest.mark.parametrize("op", ["policy_gradient_loss", "sampled_reverse_kl_loss"])
def test_token_mean_is_deprecated_and_means_mean(op):
    fn = _loss_ops()[op]
    lp, other, mask = _losses_batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name warns about nothing
        want = fn(lp, other, mask, reduction="mean")
    with pytest.warns(DeprecationWarning, match="'token_mean' is deprecated; use reduction='mean'"):
        got = fn(lp, other, mask, reduction="token_mean")
    assert torch.equal(got, want)
    (g_old,) = torch.autograd.grad(got, [lp])
    (g_new,) = torch.autograd.grad(want, [lp])
    assert torch.equal(g_old, g_new)


def test_the_deprecation_points_at_the_caller():
    lp, other, mask = _losses_batch()
    with pytest.warns(DeprecationWarning) as record:
        policy_gradient_loss(lp, other, mask, reduction="token_mean")
    assert record[0].filename == __file__
    with pytest.warns(DeprecationWarning) as record:
        FusedReverseKL(reduction="token_mean")
    assert record[0].filename == __file__


def test_the_defaults_are_mean_and_warn_about_nothing():
    lp, other, mask = _losses_batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn in _loss_ops().values():
            assert torch.equal(fn(lp, other, mask), fn(lp, other, mask, reduction="mean"))


@pytest.mark.parametrize("op", ["policy_gradient_loss", "sampled_reverse_kl_loss"])
def test_losses_reduction_none_is_the_per_token_loss(op):
    fn = _loss_ops()[op]
    lp, other, mask = _losses_batch()
    per_token = fn(lp, other, mask, reduction="none")
    assert per_token.shape == lp.shape and (per_token[~mask] == 0).all()
    torch.testing.assert_close(per_token.sum(), fn(lp, other, mask, reduction="sum"), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        per_token.sum() / mask.sum(), fn(lp, other, mask, reduction="mean"), rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(
        per_token.sum(dim=-1).mean(), fn(lp, other, mask, reduction="sequence_sum"), rtol=1e-12, atol=1e-12
    )
    upstream = torch.rand(lp.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    (g_none,) = torch.autograd.grad(per_token, [lp], grad_outputs=upstream)
    (g_sum,) = torch.autograd.grad((fn(lp, other, mask, reduction="none") * upstream).sum(), [lp])
    assert torch.equal(g_none, g_sum)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_every_op_takes_every_reduction(reduction):
    lp, other, mask = _losses_batch()
    for fn in _loss_ops().values():
        fn(lp, other, mask, reduction=reduction)
    h_s, W_s, h_t, W_t = make_rkl_inputs((2, 3), 50, 8, 12)
    fused_reverse_kl(h_s, W_s, h_t, W_t, reduction=reduction, backend="torch")
    FusedReverseKL(reduction=reduction, backend="torch")(h_s, W_s, h_t, W_t)


def test_reverse_kl_sequence_sum_is_the_sum_over_sequences_averaged():
    h_s, W_s, h_t, W_t = make_rkl_inputs((3, 2, 7), 50, 8, 12)
    mask = torch.rand(3, 2, 7, generator=torch.Generator().manual_seed(2)) < 0.6
    got = fused_reverse_kl(h_s, W_s, h_t, W_t, mask=mask, reduction="sequence_sum", backend="torch")
    leaves = float64_leaves(h_s, W_s, h_t, W_t)
    want = reverse_kl_reference(*leaves, mask=mask, reduction="sequence_sum")
    per_token = reverse_kl_reference(*leaves, mask=mask, reduction="none")
    torch.testing.assert_close(want, per_token.sum(dim=-1).mean(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    (dh,) = torch.autograd.grad(got, [h_s])
    (want_dh,) = torch.autograd.grad(want, [leaves[0]])
    torch.testing.assert_close(dh.double(), want_dh, rtol=1e-4, atol=1e-6)


def test_reverse_kl_sequence_sum_needs_a_sequence_dim():
    h_s, W_s, h_t, W_t = make_rkl_inputs(4, 50, 8, 12)
    with pytest.raises(ValueError, match="reduction='sequence_sum' needs a sequence dim"):
        fused_reverse_kl(h_s[0], W_s, h_t[0], W_t, reduction="sequence_sum", backend="torch")
    # a single sequence [T, D]: the sum
    torch.testing.assert_close(
        fused_reverse_kl(h_s, W_s, h_t, W_t, reduction="sequence_sum", backend="torch"),
        fused_reverse_kl(h_s, W_s, h_t, W_t, reduction="sum", backend="torch"),
    )
