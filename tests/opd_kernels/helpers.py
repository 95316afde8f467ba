"""Shared test helpers: input factories and comparisons against float64 references."""

from __future__ import annotations

import torch

# (backend, schedule) pairs every reverse-KL test runs through.
RKL_IMPLS = [("torch", "auto"), ("triton", "chunked"), ("triton", "fused")]
RKL_IMPL_IDS = ["torch", "triton-chunked", "triton-fused"]


def make_rkl_inputs(
    leading, vocab, d_s, d_t, *, dtype=torch.float32, teacher_vocab=None, seed=0, weight_scale=None, requires_grad=True
):
    """Student/teacher hidden states and heads whose logits have O(1) spread, like real models."""
    gen = torch.Generator().manual_seed(seed)
    teacher_vocab = teacher_vocab or vocab
    if isinstance(leading, int):
        leading = (leading,)
    scale_s = weight_scale or 2.0 / d_s**0.5
    scale_t = weight_scale or 2.0 / d_t**0.5
    h_s = torch.randn(*leading, d_s, generator=gen).to(dtype)
    W_s = (torch.randn(vocab, d_s, generator=gen) * scale_s).to(dtype)
    h_t = torch.randn(*leading, d_t, generator=gen).to(dtype)
    W_t = (torch.randn(teacher_vocab, d_t, generator=gen) * scale_t).to(dtype)
    if requires_grad:
        h_s.requires_grad_(True)
        W_s.requires_grad_(True)
    return h_s, W_s, h_t, W_t


def float64_leaves(*tensors):
    return [t.detach().double().requires_grad_(t.requires_grad) for t in tensors]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    denom = a.norm() * b.norm()
    if denom == 0:
        return 1.0 if torch.equal(a, b) else 0.0
    return float(a @ b / denom)


def assert_close_grad(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, name: str):
    assert got.dtype == dtype, f"{name}: gradient dtype {got.dtype}, expected {dtype}"
    assert torch.isfinite(got).all(), f"{name}: non-finite gradient"
    if dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(
            got.double(), want, rtol=1e-4, atol=1e-6 * max(1.0, want.abs().max().item()), msg=lambda m: f"{name}: {m}"
        )
    else:
        c = cosine(got, want)
        assert c >= 0.999, f"{name}: cosine similarity {c:.6f} < 0.999"
