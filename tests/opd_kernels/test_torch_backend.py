"""The one-pass torch backend: the default chunk rule (of every chunked backend), eager vs
torch.compile row math, and the fallback."""

import warnings

import pytest
import torch
from helpers import assert_close_grad, float64_leaves, make_rkl_inputs

from opd_kernels import _torch_rows as rows
from opd_kernels import fused_reverse_kl, token_logprobs
from opd_kernels._params import default_chunk_size
from opd_kernels.testing import MemoryTracker, reverse_kl_reference


@pytest.mark.parametrize(
    "vocab,dim,logit_bytes,want",
    [
        (32000, 256, 8, 256),  # torch reverse KL (two fp32 blocks): C = D_s
        (32003, 32, 8, 32),  # the memory test's shapes
        (16384, 256, 4, 512),  # torch log-probs (one fp32 block): C = 2 D
        (151_936, 4096, 8, 880),  # 1 GiB cap: 2^30 / (8 * 151,936) = 883 -> 880
        (151_936, 4096, 10, 704),  # Triton chunked reverse KL, bf16: 2^30 / (10 * 151,936) = 706 -> 704
        (151_936, 4096, 12, 576),  # Triton chunked reverse KL, fp32: 588 -> 576
        (32000, 2048, 10, 1632),  # Triton chunked, bf16: the head bound 8 * 2048 / 10 = 1638 -> 1632
        (2048, 8, 8, 16),  # floor
        (64, 8192, 4, 4096),  # ceiling
    ],
)
def test_default_chunk_rule(vocab, dim, logit_bytes, want):
    assert default_chunk_size(vocab, dim, logit_bytes) == want


def test_every_chunked_backend_takes_the_one_rule():
    from opd_kernels import logprobs_torch, reverse_kl_torch, reverse_kl_triton

    assert reverse_kl_torch.LOGIT_BYTES == 8 and logprobs_torch.LOGIT_BYTES == 4
    assert [reverse_kl_triton.chunk_logit_bytes(d) for d in (torch.bfloat16, torch.float16, torch.float32)] == [
        10,
        10,
        12,
    ]


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_default_chunk_keeps_under_the_tracker_limit(reduction):
    # tests/opd_kernels/test_reverse_kl_memory.py's shapes, but with the default chunk size (C = D_s = 32).
    n, vocab = 1024, 32003
    h_s, W_s, h_t, W_t = make_rkl_inputs(n, vocab, 32, 48, dtype=torch.bfloat16)
    mask = torch.rand(n, generator=torch.Generator().manual_seed(0)) < 0.7
    with MemoryTracker(numel_limit=n * vocab // 8) as tracker:
        loss = fused_reverse_kl(h_s, W_s, h_t, W_t, mask=mask, reduction=reduction, backend="torch")
        loss.sum().backward() if reduction == "none" else loss.backward()
    assert tracker.host_syncs == []
    # The [32, V] logit blocks, and the fp32 copy of the bf16 teacher head [V, 48], are the largest.
    assert tracker.largest.numel <= 48 * vocab


def _run_rkl(monkeypatch, setting, dtype):
    monkeypatch.setenv(rows.COMPILE_ENV, setting)
    h_s, W_s, h_t, W_t = make_rkl_inputs(53, 1423, 40, 56, dtype=dtype)
    mask = torch.rand(53, generator=torch.Generator().manual_seed(1)) < 0.8
    loss = fused_reverse_kl(h_s, W_s, h_t, W_t, mask=mask, temperature=0.9, backend="torch", chunk_size=16)
    dh, dW = torch.autograd.grad(loss, [h_s, W_s])
    return loss, dh, dW, (h_s, W_s, h_t, W_t, mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_and_compiled_reverse_kl_agree_with_float64(monkeypatch, dtype):
    eager = _run_rkl(monkeypatch, "0", dtype)
    compiled = _run_rkl(monkeypatch, "auto", dtype)
    h_s, W_s, h_t, W_t, mask = float64_leaves(*eager[3][:4]) + [eager[3][4]]
    ref = reverse_kl_reference(h_s, W_s, h_t, W_t, mask=mask, temperature=0.9)
    ref_dh, ref_dW = torch.autograd.grad(ref, [h_s, W_s])
    for got in (eager, compiled):
        torch.testing.assert_close(got[0].double(), ref, rtol=1e-5, atol=1e-6)
        assert_close_grad(got[1], ref_dh, dtype, "dh")
        assert_close_grad(got[2], ref_dW, dtype, "dW")


@pytest.mark.parametrize("setting", ["0", "auto"])
def test_eager_and_compiled_token_logprobs_agree(monkeypatch, setting):
    monkeypatch.setenv(rows.COMPILE_ENV, setting)
    h, W, _, _ = make_rkl_inputs(45, 1423, 40, 40)
    tokens = torch.randint(0, 1423, (45,), generator=torch.Generator().manual_seed(2))
    lp, ent = token_logprobs(h, W, tokens, temperature=1.3, return_entropy=True, backend="torch")
    go = torch.rand(2, 45, generator=torch.Generator().manual_seed(3))
    dh, dW = torch.autograd.grad((lp * go[0]).sum() + (ent * go[1]).sum(), [h, W])
    h64, W64 = float64_leaves(h, W)
    log_p = torch.log_softmax(h64 @ W64.t() / 1.3, dim=-1)
    ref_lp = log_p.gather(-1, tokens[:, None])[:, 0]
    ref_ent = -(log_p.exp() * log_p).sum(-1)
    torch.testing.assert_close(lp.double(), ref_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent.double(), ref_ent, rtol=1e-5, atol=1e-5)
    ref_dh, ref_dW = torch.autograd.grad((ref_lp * go[0].double()).sum() + (ref_ent * go[1].double()).sum(), [h64, W64])
    assert_close_grad(dh, ref_dh, torch.float32, "dh")
    assert_close_grad(dW, ref_dW, torch.float32, "dW")


def test_compiler_failure_falls_back_to_eager_once(monkeypatch):
    monkeypatch.setenv(rows.COMPILE_ENV, "auto")
    calls = []

    def eager(x):
        calls.append("eager")
        return x + 1

    def fused(x):
        raise RuntimeError("no C++ compiler")

    fn = rows.RowFunction("test", eager, fused)
    monkeypatch.setattr(torch, "compile", lambda f, **kw: f)
    x = torch.zeros(3)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        torch.testing.assert_close(fn(x), x + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(fn(x), x + 1)
    assert calls == ["eager", "eager"] and fn.broken.startswith("RuntimeError")


@pytest.mark.parametrize("value,want", [("", "auto"), ("AUTO", "auto"), ("0", "0"), ("1", "1")])
def test_compile_setting(monkeypatch, value, want):
    monkeypatch.setenv(rows.COMPILE_ENV, value)
    assert rows.compile_mode() == want


def test_unknown_compile_setting_warns(monkeypatch):
    monkeypatch.setenv(rows.COMPILE_ENV, "yes please")
    with pytest.warns(UserWarning, match="OPD_KERNELS_TORCH_COMPILE"):
        assert rows.compile_mode() == "auto"


def test_auto_backend_per_op():
    """'auto' follows the H200 measurements (README): the reverse KL takes Triton's chunked
    schedule on CUDA, the log-prob ops the torch backend everywhere."""
    from opd_kernels import _validation as v

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert v.resolve_backend("auto", cuda, (torch.bfloat16,)) == "triton"
    assert v.resolve_backend("auto", cuda, (torch.bfloat16,), auto_triton_on_cuda=False) == "torch"
    assert v.resolve_backend("auto", cuda, (torch.float64,)) == "torch"
    assert v.resolve_backend("auto", cpu, (torch.bfloat16,)) == "torch"
