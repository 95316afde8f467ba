"""The fused losses hand the gradients formed in their forward to autograd without a copy:
``W.grad`` is the op's own buffer, a scaled loss scales it, and a second backward through a
retained graph recomputes the same gradients."""

from __future__ import annotations

import pytest
import torch

from opd_kernels import fused_policy_gradient_loss, fused_reverse_kl
from tests.opd_kernels.helpers import make_rkl_inputs

N, V, D_S, D_T = 13, 37, 8, 12


def _rkl(reduction, backend):
    h_s, W_s, h_t, W_t = make_rkl_inputs((N,), V, D_S, D_T)
    mask = torch.rand(N, generator=torch.Generator().manual_seed(1)) > 0.3

    def loss():
        return fused_reverse_kl(
            h_s.unsqueeze(0) if reduction == "sequence_sum" else h_s,
            W_s,
            h_t.unsqueeze(0) if reduction == "sequence_sum" else h_t,
            W_t,
            mask=mask.unsqueeze(0) if reduction == "sequence_sum" else mask,
            reduction=reduction,
            backend=backend,
            chunk_size=4,
        )

    return h_s, W_s, loss


def _pg(reduction, backend):
    h, W, _, _ = make_rkl_inputs((2, 7), V, D_S, D_T)
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, V, (2, 7), generator=gen)
    mask = torch.rand(2, 7, generator=gen) > 0.3
    teacher = -torch.rand(2, 7, generator=gen) * 3
    old = -torch.rand(2, 7, generator=gen) * 3

    def loss():
        return fused_policy_gradient_loss(
            h,
            W,
            tokens,
            mask,
            teacher_logprobs=teacher,
            old_logprobs=old,
            reduction=reduction,
            backend=backend,
            chunk_size=4,
        )[0]

    return h, W, loss


CASES = [(_rkl, r) for r in ("mean", "sum")] + [(_pg, r) for r in ("mean", "sequence_sum", "sum")]


@pytest.mark.parametrize("make,reduction", CASES, ids=[f"{m.__name__[1:]}-{r}" for m, r in CASES])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_weight_grad_is_the_forward_buffer(make, reduction, backend):
    h, W, loss_fn = make(reduction, backend)
    loss = loss_fn()
    buffer = loss.grad_fn.forward_grads[1].data_ptr()  # the address only: a reference would force a copy
    loss.backward()
    assert W.grad.data_ptr() == buffer  # no [V, D] copy
    assert loss.grad_fn.forward_grads is None


@pytest.mark.parametrize("make,reduction", CASES, ids=[f"{m.__name__[1:]}-{r}" for m, r in CASES])
def test_scaled_and_repeated_backward(make, reduction):
    h, W, loss_fn = make(reduction, "torch")
    want_h, want_W = torch.autograd.grad(loss_fn(), (h, W))
    loss = loss_fn()
    first = torch.autograd.grad(loss * 3.0, (h, W), retain_graph=True)  # handed over, scaled
    second = torch.autograd.grad(loss * -0.5, (h, W))  # recomputed from the saved inputs
    for got, want in zip(first, (want_h, want_W)):
        torch.testing.assert_close(got, 3.0 * want, rtol=1e-5, atol=1e-6)
    for got, want in zip(second, (want_h, want_W)):
        torch.testing.assert_close(got, -0.5 * want, rtol=1e-5, atol=1e-6)
