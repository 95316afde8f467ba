"""Zero tokens in: empty outputs, loss 0 and zero gradients out, on every backend, no error."""

import pytest
import torch
from helpers import RKL_IMPL_IDS, RKL_IMPLS, make_rkl_inputs

from opd_kernels import fused_reverse_kl, sampled_reverse_kl_loss, token_logprobs, topk_logprobs

V, D_S, D_T = 203, 16, 24
EMPTY_LEADING = [(0,), (3, 0)]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("leading", EMPTY_LEADING, ids=str)
@pytest.mark.parametrize("with_entropy", [False, True])
def test_token_logprobs_of_no_tokens(backend, leading, with_entropy):
    h, W, _, _ = make_rkl_inputs(leading, V, D_S, D_S)
    tokens = torch.zeros(leading, dtype=torch.long)
    out = token_logprobs(h, W, tokens, backend=backend, return_entropy=with_entropy)
    outs = out if with_entropy else (out,)
    for t in outs:
        assert t.shape == leading and t.dtype == torch.float32
    grad_h, grad_W = torch.autograd.grad(sum(t.sum() for t in outs), [h, W])
    assert grad_h.shape == h.shape
    assert grad_W.shape == W.shape and (grad_W == 0).all()
    with torch.no_grad():
        assert token_logprobs(h, W, tokens, backend=backend).shape == leading


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("leading", EMPTY_LEADING, ids=str)
def test_topk_logprobs_of_no_tokens(backend, leading):
    h, W, _, _ = make_rkl_inputs(leading, V, D_S, D_S, requires_grad=False)
    values, indices = topk_logprobs(h, W, 5, backend=backend)
    assert values.shape == (*leading, 5) and values.dtype == torch.float32
    assert indices.shape == (*leading, 5) and indices.dtype == torch.int64


@pytest.mark.parametrize("backend,schedule", RKL_IMPLS, ids=RKL_IMPL_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_reverse_kl_of_no_tokens(backend, schedule, reduction, with_mask):
    leading = (2, 0)
    h_s, W_s, h_t, W_t = make_rkl_inputs(leading, V, D_S, D_T)
    mask = torch.zeros(leading, dtype=torch.bool) if with_mask else None
    loss = fused_reverse_kl(h_s, W_s, h_t, W_t, mask=mask, reduction=reduction, backend=backend, schedule=schedule)
    assert loss.dtype == torch.float32
    if reduction == "none":
        assert loss.shape == leading
    else:
        assert loss.shape == () and loss.item() == 0.0
    grad_h, grad_W = torch.autograd.grad(loss.sum(), [h_s, W_s])
    assert grad_h.shape == h_s.shape
    assert grad_W.shape == W_s.shape and (grad_W == 0).all()
    with torch.no_grad():  # the forward-only path
        again = fused_reverse_kl(h_s, W_s, h_t, W_t, mask=mask, reduction=reduction, backend=backend)
    assert again.shape == loss.shape


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_sampled_loss_pipeline_of_no_tokens(backend):
    h_s, W_s, h_t, W_t = make_rkl_inputs((2, 0), V, D_S, D_T)
    tokens = torch.zeros((2, 0), dtype=torch.long)
    with torch.no_grad():
        teacher_lp = token_logprobs(h_t, W_t, tokens, backend=backend)
    student_lp = token_logprobs(h_s, W_s, tokens, backend=backend)
    for reduction in ("mean", "sequence_sum", "sum"):
        loss, metrics = sampled_reverse_kl_loss(
            student_lp, teacher_lp, torch.zeros((2, 0), dtype=torch.bool), reduction=reduction
        )
        assert loss.item() == 0.0 and metrics["tokens"].item() == 0 and metrics["reverse_kl"].item() == 0.0
        (grad_W,) = torch.autograd.grad(loss, [W_s], retain_graph=True)
        assert (grad_W == 0).all()
