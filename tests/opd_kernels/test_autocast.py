"""Every op under torch.autocast: matmuls in autocast's dtype (as F.linear's), fp32 accumulation
and losses, each input's gradient in its own dtype; outside autocast mixed dtypes still raise.

Liger-Kernel's test_amp situation is the main case: bf16 hidden states, an fp32 LM head, bf16
autocast. The float64 references take the operands as autocast hands them to the matmul
(rounded to bf16), so what is left is the op's own error.
"""

import pytest
import torch
from helpers import RKL_IMPL_IDS, RKL_IMPLS, cosine, float64_leaves, make_rkl_inputs

from opd_kernels import FusedReverseKL, fused_reverse_kl, token_logprobs, topk_logprobs
from opd_kernels.testing import reference_logits, reverse_kl_reference

impls = pytest.mark.parametrize("backend,schedule", RKL_IMPLS, ids=RKL_IMPL_IDS)
backends = pytest.mark.parametrize("backend", ["torch", "triton"])
# (hidden dtype, head dtype) as mixed-precision training holds them
MIXES = [(torch.bfloat16, torch.float32), (torch.float32, torch.float32), (torch.float32, torch.bfloat16)]
MIX_IDS = ["bf16-hidden-fp32-head", "fp32-both", "fp32-hidden-bf16-head"]
mixes = pytest.mark.parametrize("h_dtype,w_dtype", MIXES, ids=MIX_IDS)
AMP = torch.bfloat16
N, V, D_S, D_T = 37, 300, 24, 40


def _autocast(test_device):
    return torch.autocast("cuda" if test_device == "cuda" else "cpu", dtype=AMP)


def _leaf(t, dtype, grad=True):
    return t.detach().to(dtype).requires_grad_(grad)


def _as_autocast_sees(*tensors):
    """float64 leaves holding what the matmul sees under autocast: each operand rounded to bf16."""
    return [t.detach().to(AMP).double().requires_grad_(t.requires_grad) for t in tensors]


def _assert_grad(got, want, dtype, name):
    assert got.dtype == dtype, f"{name}: gradient dtype {got.dtype}, expected the input's {dtype}"
    assert torch.isfinite(got).all(), f"{name}: non-finite gradient"
    c = cosine(got, want)
    assert c >= 0.999, f"{name}: cosine similarity {c:.6f} < 0.999"
    torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


@impls
@mixes
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_reverse_kl_under_autocast_against_float64(backend, schedule, h_dtype, w_dtype, reduction, test_device):
    h_s, W_s, h_t, W_t = make_rkl_inputs((3, 13), V, D_S, D_T, seed=4, requires_grad=False)
    h_s, W_s = _leaf(h_s, h_dtype), _leaf(W_s, w_dtype)
    h_t, W_t = _leaf(h_t, h_dtype, grad=False), _leaf(W_t, w_dtype, grad=False)
    mask = torch.rand(h_s.shape[:-1], generator=torch.Generator().manual_seed(5)) < 0.7
    with _autocast(test_device):
        got = fused_reverse_kl(
            h_s,
            W_s,
            h_t,
            W_t,
            mask=mask,
            temperature=0.8,
            reduction=reduction,
            backend=backend,
            schedule=schedule,
            chunk_size=16,
        )
    assert got.dtype == torch.float32, "the loss is fp32 under autocast"
    ref = _as_autocast_sees(h_s, W_s, h_t, W_t)
    want = reverse_kl_reference(*ref, mask=mask, temperature=0.8, reduction=reduction)
    torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-4)

    upstream = torch.rand(want.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    grads = torch.autograd.grad(got, [h_s, W_s], grad_outputs=upstream.float())
    ref_grads = torch.autograd.grad(want, ref[:2], grad_outputs=upstream)
    for name, g, r, t in zip(["student_hidden", "student_weight"], grads, ref_grads, (h_s, W_s)):
        _assert_grad(g, r, t.dtype, name)
    assert (grads[0][~mask] == 0).all(), "masked tokens get exactly zero gradient under autocast too"


@impls
def test_reverse_kl_under_autocast_is_the_op_on_cast_inputs(backend, schedule, test_device):
    """Inside the op autocast is off: its result is bit for bit the op's on inputs cast to bf16
    by hand outside autocast (fp32 logits and accumulation, not autocast's bf16 matmul outputs)."""
    h_s, W_s, h_t, W_t = make_rkl_inputs(N, V, D_S, D_T, seed=7, requires_grad=False)
    kwargs = dict(backend=backend, schedule=schedule, chunk_size=16, reduction="sum")
    fp32 = [_leaf(t, torch.float32, i < 2) for i, t in enumerate((h_s, W_s, h_t, W_t))]
    with _autocast(test_device):
        under = fused_reverse_kl(*fp32, **kwargs)
        under.backward()  # a backward inside the autocast region too
    cast = [_leaf(t, AMP, i < 2) for i, t in enumerate((h_s, W_s, h_t, W_t))]
    outside = fused_reverse_kl(*cast, **kwargs)
    outside.backward()
    torch.testing.assert_close(under, outside, rtol=0, atol=0)
    for name, a, b in zip(["student_hidden", "student_weight"], fp32[:2], cast[:2]):
        assert a.grad.dtype == torch.float32, f"{name}: an fp32 input gets an fp32 gradient"
        torch.testing.assert_close(a.grad, b.grad.float(), rtol=0, atol=0)


def test_reverse_kl_module_and_frozen_head_under_autocast(test_device):
    h_s, W_s, h_t, W_t = make_rkl_inputs(N, V, D_S, D_T, seed=8, requires_grad=False)
    h_s, W_s = _leaf(h_s, AMP), _leaf(W_s, torch.float32, grad=False)  # a frozen fp32 head (LoRA)
    with _autocast(test_device):
        loss = FusedReverseKL(backend="torch")(h_s, W_s, h_t, W_t)
    loss.backward()
    assert loss.dtype == torch.float32 and h_s.grad.dtype == AMP and W_s.grad is None
    want = reverse_kl_reference(*_as_autocast_sees(h_s, W_s, h_t, W_t))
    torch.testing.assert_close(loss.double(), want, rtol=1e-3, atol=1e-4)


@backends
@mixes
def test_token_logprobs_under_autocast_against_float64(backend, h_dtype, w_dtype, test_device):
    h, W, _, _ = make_rkl_inputs((2, 19), V, D_S, D_S, seed=9, requires_grad=False)
    h, W = _leaf(h, h_dtype), _leaf(W, w_dtype)
    tokens = torch.randint(0, V, h.shape[:-1], generator=torch.Generator().manual_seed(10))
    with _autocast(test_device):
        lp, entropy = token_logprobs(h, W, tokens, temperature=1.3, return_entropy=True, backend=backend)
    assert lp.dtype == entropy.dtype == torch.float32
    ref_h, ref_W = _as_autocast_sees(h, W)
    log_p = torch.log_softmax(reference_logits(ref_h, ref_W, 1.3), dim=-1)
    ref_lp = log_p.gather(-1, tokens[..., None])[..., 0]
    ref_entropy = -(log_p.exp() * log_p).sum(-1)
    torch.testing.assert_close(lp.double(), ref_lp, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(entropy.double(), ref_entropy, rtol=1e-3, atol=1e-4)
    grads = torch.autograd.grad(lp.sum() + 0.5 * entropy.sum(), [h, W])
    ref_grads = torch.autograd.grad(ref_lp.sum() + 0.5 * ref_entropy.sum(), [ref_h, ref_W])
    for name, g, r, t in zip(["hidden", "weight"], grads, ref_grads, (h, W)):
        _assert_grad(g, r, t.dtype, name)


@backends
def test_topk_under_autocast_is_topk_on_cast_inputs(backend, test_device):
    h, W, _, _ = make_rkl_inputs(4, 64, 16, 16, seed=11, requires_grad=False)  # the interpreter's top-k is slow
    with _autocast(test_device):
        values, ids = topk_logprobs(h.to(AMP), W, 5, backend=backend)  # bf16 hidden, fp32 head
    want_values, want_ids = topk_logprobs(h.to(AMP), W.to(AMP), 5, backend=backend)
    assert values.dtype == torch.float32
    torch.testing.assert_close(values, want_values, rtol=0, atol=0)
    assert torch.equal(ids, want_ids)


def test_float64_is_left_alone_under_autocast(test_device):
    """autocast does not cast float64 (nor does it for F.linear): the op runs in float64."""
    h_s, W_s, h_t, W_t = float64_leaves(*make_rkl_inputs(N, V, D_S, D_T, seed=12))
    with _autocast(test_device):
        got = fused_reverse_kl(h_s, W_s, h_t, W_t, backend="torch")
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, reverse_kl_reference(h_s, W_s, h_t, W_t), rtol=1e-10, atol=1e-12)
    with _autocast(test_device), pytest.raises(ValueError, match="which leaves float64 as it is"):
        fused_reverse_kl(h_s, W_s.float(), h_t, W_t, backend="torch")


@pytest.mark.parametrize(
    "call",
    [
        lambda h, W, t: fused_reverse_kl(h.to(AMP), W, h, W),
        lambda h, W, t: token_logprobs(h.to(AMP), W, t),
        lambda h, W, t: topk_logprobs(h, W.to(AMP), 3),
    ],
    ids=["fused_reverse_kl", "token_logprobs", "topk_logprobs"],
)
def test_mixed_dtypes_outside_autocast_raise(call):
    h, W, _, _ = make_rkl_inputs(N, V, D_S, D_S, requires_grad=False)
    tokens = torch.zeros(N, dtype=torch.long)
    with pytest.raises(ValueError, match="must share a dtype.*torch.autocast"):
        call(h, W, tokens)
