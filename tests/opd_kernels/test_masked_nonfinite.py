"""A masked token contributes exactly 0 even when its hidden state holds NaN or inf (padding).

Each case runs the op twice, once with NaN/inf in the masked rows of the hidden states and once
with those rows zeroed, and wants the same (finite) loss and gradients, with exactly-zero dh on
the masked rows. Shapes are small: the Triton kernels run under the interpreter on CPU.
"""

import pytest
import torch
from helpers import RKL_IMPL_IDS, RKL_IMPLS, make_rkl_inputs

from opd_kernels import fused_reverse_kl, sampled_reverse_kl_loss, token_logprobs

# 40 tokens: with the fp32 fused configs (32-token blocks) the first block is partially masked
# and the second (tokens 32..39) fully masked.
N, V, D_S, D_T = 40, 203, 16, 24


def _mask(n):
    mask = torch.rand(n, generator=torch.Generator().manual_seed(5)) < 0.6
    mask[:2] = True
    mask[2:6] = False
    mask[32:] = False
    return mask


def _poison(h, mask, values):
    """h with the masked rows cycling through the given non-finite values (not in place)."""
    h = h.detach().clone()
    for i, row in enumerate(torch.nonzero(~mask).flatten().tolist()):
        h[row] = values[i % len(values)]
        if i % 3 == 2:  # a single bad entry in an otherwise finite row
            h[row] = 0.5
            h[row, 1] = values[i % len(values)]
    return h


def _zeroed(h, mask):
    return torch.where(mask[:, None], h.detach(), 0.0)


def _assert_same(got, want, name):
    assert torch.isfinite(got).all(), f"{name}: not finite"
    torch.testing.assert_close(got, want, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend,schedule", RKL_IMPLS, ids=RKL_IMPL_IDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reverse_kl_ignores_non_finite_masked_rows(backend, schedule, reduction):
    h_s, W_s, h_t, W_t = make_rkl_inputs(N, V, D_S, D_T, requires_grad=False)
    mask = _mask(N)
    bad_s = _poison(h_s, mask, [float("nan"), float("inf"), float("-inf")])
    bad_t = _poison(h_t, mask, [float("inf"), float("nan"), float("-inf")])
    upstream = torch.rand(N, generator=torch.Generator().manual_seed(9)) if reduction == "none" else None

    def run(hs, ht):
        hs = hs.clone().requires_grad_(True)
        W = W_s.clone().requires_grad_(True)
        loss = fused_reverse_kl(
            hs, W, ht, W_t, mask=mask, reduction=reduction, backend=backend, schedule=schedule, chunk_size=16
        )
        loss.backward(upstream)
        return loss.detach(), hs.grad, W.grad

    got = run(bad_s, bad_t)
    want = run(_zeroed(h_s, mask), _zeroed(h_t, mask))
    for name, g, w in zip(["loss", "student_hidden grad", "student_weight grad"], got, want):
        _assert_same(g, w, name)
    assert (got[1][~mask] == 0).all(), "masked tokens must get exactly zero hidden gradient"
    if reduction == "none":
        assert (got[0][~mask] == 0).all(), "masked tokens must contribute exactly 0"


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("with_entropy", [False, True])
def test_token_logprobs_zero_upstream_rows_ignore_non_finite_hidden(backend, with_entropy):
    h, W, _, _ = make_rkl_inputs(N, V, D_S, D_S, requires_grad=False)
    tokens = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(2))
    mask = _mask(N)
    bad = _poison(h, mask, [float("nan"), float("inf"), float("-inf")])

    def run(hidden):
        hidden = hidden.clone().requires_grad_(True)
        weight = W.clone().requires_grad_(True)
        out = token_logprobs(hidden, weight, tokens, backend=backend, return_entropy=with_entropy)
        lp, entropy = out if with_entropy else (out, None)
        loss = torch.where(mask, lp, 0.0).sum()
        if entropy is not None:
            loss = loss + 0.3 * torch.where(mask, entropy, 0.0).sum()
        loss.backward()
        return torch.where(mask, lp, 0.0).detach(), hidden.grad, weight.grad

    got = run(bad)
    want = run(_zeroed(h, mask))
    for name, g, w in zip(["selected log-probs", "hidden grad", "weight grad"], got, want):
        _assert_same(g, w, name)
    assert (got[1][~mask] == 0).all(), "rows with zero upstream gradient must get exactly zero gradient"


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_sampled_loss_through_token_logprobs_ignores_non_finite_padding(backend):
    """The paper's estimator end to end: padding rows of both models hold NaN/inf."""
    h_s, W_s, h_t, W_t = make_rkl_inputs((2, N // 2), V, D_S, D_T, requires_grad=False)
    tokens = torch.randint(0, V, (2, N // 2), generator=torch.Generator().manual_seed(4))
    mask = _mask(N).reshape(2, N // 2)
    flat = mask.reshape(-1)
    bad_s = _poison(h_s.reshape(N, D_S), flat, [float("nan"), float("inf")]).reshape(h_s.shape)
    bad_t = _poison(h_t.reshape(N, D_T), flat, [float("-inf"), float("nan")]).reshape(h_t.shape)

    def run(hs, ht):
        hs = hs.clone().requires_grad_(True)
        W = W_s.clone().requires_grad_(True)
        with torch.no_grad():
            teacher_lp = token_logprobs(ht, W_t, tokens, backend=backend)
        student_lp = token_logprobs(hs, W, tokens, backend=backend)
        loss, metrics = sampled_reverse_kl_loss(student_lp, teacher_lp, mask, reduction="sequence_sum")
        loss.backward()
        return loss.detach(), metrics["reverse_kl"], hs.grad, W.grad

    got = run(bad_s, bad_t)
    want = run(
        _zeroed(h_s.reshape(N, D_S), flat).reshape(h_s.shape), _zeroed(h_t.reshape(N, D_T), flat).reshape(h_t.shape)
    )
    for name, g, w in zip(["loss", "reverse_kl metric", "hidden grad", "weight grad"], got, want):
        _assert_same(g, w, name)
    assert (got[2][~mask] == 0).all()
