"""fused_reverse_kl against a float64 reference with materialised logits."""

import pytest
import torch
from helpers import RKL_IMPL_IDS, RKL_IMPLS, assert_close_grad, float64_leaves, make_rkl_inputs

from opd_kernels import FusedReverseKL, fused_reverse_kl
from opd_kernels.testing import reverse_kl_reference

impls = pytest.mark.parametrize("backend,schedule", RKL_IMPLS, ids=RKL_IMPL_IDS)


def _check(
    backend,
    schedule,
    leading,
    vocab,
    d_s,
    d_t,
    *,
    dtype=torch.float32,
    temperature=1.0,
    mask_kind="partial",
    teacher_vocab=None,
    reduction="mean",
    frozen_weight=False,
    chunk_size=None,
    seed=0,
):
    h_s, W_s, h_t, W_t = make_rkl_inputs(leading, vocab, d_s, d_t, dtype=dtype, teacher_vocab=teacher_vocab, seed=seed)
    if frozen_weight:
        W_s.requires_grad_(False)
    lead = h_s.shape[:-1]
    gen = torch.Generator().manual_seed(seed + 1)
    mask = {
        "none": None,
        "partial": torch.rand(lead, generator=gen) < 0.6,
        "empty": torch.zeros(lead, dtype=torch.bool),
    }[mask_kind]

    ref_inputs = float64_leaves(h_s, W_s, h_t, W_t)
    want = reverse_kl_reference(*ref_inputs, mask=mask, temperature=temperature, reduction=reduction)
    got = fused_reverse_kl(
        h_s,
        W_s,
        h_t,
        W_t,
        mask=mask,
        temperature=temperature,
        reduction=reduction,
        backend=backend,
        schedule=schedule,
        chunk_size=chunk_size,
    )
    assert got.dtype == torch.float32
    assert got.shape == want.shape
    if dtype == torch.float32:
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    else:
        torch.testing.assert_close(got.double(), want, rtol=1e-2, atol=1e-3)
    if mask is not None and reduction == "none":
        assert (got[~mask] == 0).all(), "masked tokens must contribute exactly 0"

    # a non-trivial upstream gradient for "none" checks the per-token backward path
    upstream = torch.rand(want.shape, generator=gen, dtype=torch.float64) if reduction == "none" else None
    wrt = [t for t in (h_s, W_s) if t.requires_grad]
    ref_wrt = [r for r, t in zip(ref_inputs[:2], (h_s, W_s)) if t.requires_grad]
    grads = torch.autograd.grad(got, wrt, grad_outputs=upstream.float() if upstream is not None else None)
    ref_grads = torch.autograd.grad(want, ref_wrt, grad_outputs=upstream)
    for name, g, r in zip(["student_hidden", "student_weight"], grads, ref_grads):
        assert_close_grad(g, r, dtype, name)
    if mask is not None:
        assert (grads[0][~mask] == 0).all(), "masked tokens must get exactly zero gradient"
    return got


@impls
@pytest.mark.parametrize("n", [1, 37, 1000])
def test_token_counts(backend, schedule, n):
    _check(backend, schedule, n, 1423, 48, 80)


@impls
@pytest.mark.parametrize("vocab", [1423, 4096, 32003])
def test_vocab_sizes(backend, schedule, vocab):
    _check(backend, schedule, 37, vocab, 32, 40, chunk_size=16)


@impls
@pytest.mark.parametrize("temperature", [0.9, 1.0, 2.0])
def test_temperatures(backend, schedule, temperature):
    _check(backend, schedule, 37, 1423, 48, 80, temperature=temperature)


@impls
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision(backend, schedule, dtype):
    _check(backend, schedule, (3, 29), 4096, 64, 96, dtype=dtype, temperature=0.9)


@impls
@pytest.mark.parametrize("reduction", ["mean", "sum", "sequence_sum", "none"])
@pytest.mark.parametrize("mask_kind", ["none", "partial", "empty"])
def test_reductions_and_masks(backend, schedule, reduction, mask_kind):
    _check(backend, schedule, (2, 19), 1423, 48, 80, reduction=reduction, mask_kind=mask_kind)


@impls
def test_padded_teacher_head_and_frozen_student_weight(backend, schedule):
    _check(backend, schedule, 37, 1423, 48, 80, teacher_vocab=1500, frozen_weight=True)
    _check(backend, schedule, 37, 1423, 48, 80, teacher_vocab=1500, dtype=torch.bfloat16)


@impls
def test_chunk_boundaries(backend, schedule):
    # chunk sizes that do not divide N, and one larger than N
    for chunk in (7, 64):
        _check(backend, schedule, 37, 1423, 48, 80, chunk_size=chunk, reduction="none")


@impls
def test_empty_mask_gives_zero_loss_and_zero_grads(backend, schedule):
    h_s, W_s, h_t, W_t = make_rkl_inputs(16, 1423, 32, 32)
    mask = torch.zeros(16, dtype=torch.bool)
    loss = fused_reverse_kl(h_s, W_s, h_t, W_t, mask=mask, backend=backend, schedule=schedule)
    loss.backward()
    assert loss.item() == 0.0
    assert (h_s.grad == 0).all() and (W_s.grad == 0).all()


@impls
def test_identical_models_have_zero_kl(backend, schedule):
    h_s, W_s, _, _ = make_rkl_inputs(37, 1423, 48, 48)
    loss = fused_reverse_kl(h_s, W_s, h_s.detach(), W_s.detach(), reduction="none", backend=backend, schedule=schedule)
    assert loss.abs().max().item() < 1e-5


@impls
def test_non_contiguous_inputs(backend, schedule):
    h_s, W_s, h_t, W_t = make_rkl_inputs(37, 600, 48, 80, requires_grad=False)
    h_s_nc = h_s.t().contiguous().t().requires_grad_()  # column-major rows
    W_s_nc = torch.cat([W_s, W_s], dim=1)[:, ::2].requires_grad_()  # strided columns
    h_t_nc = torch.cat([h_t, h_t], dim=0)[::2]
    W_t_nc = W_t.t().contiguous().t()
    assert not (h_s_nc.is_contiguous() and W_s_nc.is_contiguous() and h_t_nc.is_contiguous())
    got = fused_reverse_kl(h_s_nc, W_s_nc, h_t_nc, W_t_nc, temperature=0.9, backend=backend, schedule=schedule)
    got.backward()
    ref_inputs = float64_leaves(h_s_nc, W_s_nc, h_t_nc, W_t_nc)
    want = reverse_kl_reference(*ref_inputs, temperature=0.9)
    want.backward()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
    assert_close_grad(h_s_nc.grad, ref_inputs[0].grad, torch.float32, "student_hidden")
    assert_close_grad(W_s_nc.grad, ref_inputs[1].grad, torch.float32, "student_weight")


@impls
def test_none_reduction_with_expanded_upstream_gradient(backend, schedule):
    # loss.sum().backward() hands the op a stride-0 gradient
    h_s, W_s, h_t, W_t = make_rkl_inputs(37, 1423, 48, 80)
    fused_reverse_kl(h_s, W_s, h_t, W_t, reduction="none", backend=backend, schedule=schedule).sum().backward()
    ref_inputs = float64_leaves(h_s, W_s, h_t, W_t)
    reverse_kl_reference(*ref_inputs, reduction="none").sum().backward()
    assert_close_grad(h_s.grad, ref_inputs[0].grad, torch.float32, "student_hidden")
    assert_close_grad(W_s.grad, ref_inputs[1].grad, torch.float32, "student_weight")


@impls
def test_no_grad_and_grad_output_scaling(backend, schedule):
    h_s, W_s, h_t, W_t = make_rkl_inputs(37, 1423, 48, 80)
    with torch.no_grad():
        no_grad_loss = fused_reverse_kl(h_s, W_s, h_t, W_t, backend=backend, schedule=schedule)
    assert not no_grad_loss.requires_grad
    loss = fused_reverse_kl(h_s, W_s, h_t, W_t, backend=backend, schedule=schedule)
    torch.testing.assert_close(no_grad_loss, loss.detach())
    (3.0 * loss).backward()
    ref_inputs = float64_leaves(h_s, W_s, h_t, W_t)
    (3.0 * reverse_kl_reference(*ref_inputs)).backward()
    assert_close_grad(h_s.grad, ref_inputs[0].grad, torch.float32, "student_hidden")


def test_teacher_gets_no_gradient():
    h_s, W_s, h_t, W_t = make_rkl_inputs(8, 300, 16, 16)
    h_t.requires_grad_(True)
    W_t.requires_grad_(True)
    fused_reverse_kl(h_s, W_s, h_t, W_t, backend="torch").backward()
    assert h_t.grad is None and W_t.grad is None
    assert h_s.grad is not None


def test_float64_torch_backend_returns_float64():
    h_s, W_s, h_t, W_t = make_rkl_inputs(8, 300, 16, 16, dtype=torch.float64)
    assert fused_reverse_kl(h_s, W_s, h_t, W_t).dtype == torch.float64


def test_module_wrapper_matches_function():
    h_s, W_s, h_t, W_t = make_rkl_inputs((2, 5), 300, 16, 24)
    mask = torch.rand(2, 5) < 0.5
    module = FusedReverseKL(temperature=0.9, reduction="sum", backend="torch")
    assert "temperature=0.9" in repr(module)
    torch.testing.assert_close(
        module(h_s, W_s, h_t, W_t, mask=mask),
        fused_reverse_kl(h_s, W_s, h_t, W_t, mask=mask, temperature=0.9, reduction="sum", backend="torch"),
    )


def test_auto_backend_is_torch_on_cpu(monkeypatch):
    import opd_kernels.reverse_kl as rk

    seen = []
    real = rk._implementation
    monkeypatch.setattr(rk, "_implementation", lambda params: seen.append(params.backend) or real(params))
    h_s, W_s, h_t, W_t = make_rkl_inputs(4, 100, 8, 8)
    fused_reverse_kl(h_s, W_s, h_t, W_t)
    assert seen == ["torch"]
