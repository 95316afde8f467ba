"""fused_policy_gradient_loss against the unfused path (token_logprobs + the loss) and a float64 reference."""

import pytest
import torch
from helpers import assert_close_grad, float64_leaves, make_rkl_inputs

from opd_kernels import (
    REDUCTIONS,
    fused_policy_gradient_loss,
    policy_gradient_loss,
    sampled_reverse_kl_loss,
    token_logprobs,
)
from opd_kernels.testing import MemoryTracker, reference_logits

backends = pytest.mark.parametrize("backend", ["torch", "triton"])


def _batch(leading, vocab, d, *, dtype=torch.float32, padded_vocab=None, seed=0, kind="teacher", with_old=True):
    """hidden, head, sampled tokens, a ragged mask (one empty sequence), and the per-token signals."""
    h, W, _, _ = make_rkl_inputs(leading, padded_vocab or vocab, d, d, dtype=dtype, seed=seed)
    shape = h.shape[:-1]
    gen = torch.Generator().manual_seed(seed + 11)
    tokens = torch.randint(0, vocab, shape, generator=gen)
    mask = torch.rand(shape, generator=gen) < 0.75
    if len(shape) > 1:
        mask[-1] = False  # a sequence without completion tokens
    with torch.no_grad():
        lp = token_logprobs(h, W, tokens, vocab_size=vocab if padded_vocab else None)
    signal = (
        lp - torch.rand(shape, generator=gen) * 2 + 0.5
        if kind == "teacher"
        else torch.randn(shape[:-1] + (1,), generator=gen).expand(shape)
    )
    old = lp + 0.3 * torch.randn(shape, generator=gen) if with_old else None
    return h, W, tokens, mask, signal, old


def _reference(
    h,
    W,
    tokens,
    mask,
    *,
    kind,
    signal,
    old=None,
    baseline=None,
    clip_eps=None,
    advantage_clip=None,
    reference_logprobs=None,
    beta=0.0,
    temperature=1.0,
    reduction="sequence_sum",
    vocab=None,
):
    """The loss by its formula in float64 from materialised logits (differentiable w.r.t. h, W)."""
    vocab = vocab or W.shape[0]
    log_p = torch.log_softmax(reference_logits(h, W[:vocab], temperature), dim=-1)
    lp = log_p.gather(-1, tokens[..., None])[..., 0]

    def sel(t):
        return torch.where(mask, t.double(), torch.zeros((), dtype=torch.float64))

    lp = sel(lp)
    c = lp.detach()
    advantage = sel(signal) - c if kind == "teacher" else sel(signal)
    if baseline is not None:
        advantage = advantage - sel(baseline.expand(mask.shape))
    if advantage_clip is not None:
        advantage = advantage.clamp(-advantage_clip, advantage_clip)
    weight = torch.ones_like(c)
    if old is not None:
        ratio = sel(torch.exp(c - sel(old)))
        weight = ratio
        if clip_eps is not None:
            flat = ((advantage > 0) & (ratio > 1 + clip_eps)) | ((advantage < 0) & (ratio < 1 - clip_eps))
            weight = torch.where(flat, 0.0, ratio)
    per_token = -advantage * weight * lp
    if beta > 0:
        delta = sel(reference_logprobs) - lp
        per_token = per_token + beta * sel(torch.exp(delta) - delta - 1)
    if reduction == "none":
        return per_token
    if reduction == "sum":
        return per_token.sum()
    if reduction == "mean":
        return per_token.sum() / mask.sum().clamp_min(1)
    return per_token.sum(-1).mean() if per_token.numel() else per_token.sum()


def _unfused(
    h,
    W,
    tokens,
    mask,
    *,
    kind,
    signal,
    old=None,
    clip_eps=None,
    temperature=1.0,
    reduction="sequence_sum",
    vocab=None,
    advantage_clip=None,
):
    lp = token_logprobs(h, W, tokens, temperature=temperature, vocab_size=vocab)
    if kind == "teacher":
        return sampled_reverse_kl_loss(
            lp, signal, mask, old_logprobs=old, advantage_clip=advantage_clip, reduction=reduction
        )
    return policy_gradient_loss(
        lp, signal, mask, old_logprobs=old, clip_eps=clip_eps if old is not None else None, reduction=reduction
    )


def _signal_kwargs(kind, signal):
    return {"teacher_logprobs": signal} if kind == "teacher" else {"advantages": signal}


def _check(
    leading,
    vocab,
    d,
    *,
    dtype=torch.float32,
    kind="teacher",
    with_old=True,
    reduction="sequence_sum",
    temperature=1.0,
    padded_vocab=None,
    frozen_weight=False,
    chunk_size=None,
    backend="torch",
):
    h, W, tokens, mask, signal, old = _batch(
        leading, vocab, d, dtype=dtype, padded_vocab=padded_vocab, kind=kind, with_old=with_old
    )
    if frozen_weight:
        W.requires_grad_(False)
    # sampled_reverse_kl_loss never clips the ratio; policy_gradient_loss (GRPO) does.
    clip_eps = None if kind == "teacher" else 0.2
    common = dict(old=old, temperature=temperature, reduction=reduction, vocab=vocab if padded_vocab else None)
    loss, metrics = fused_policy_gradient_loss(
        h,
        W,
        tokens,
        mask,
        **_signal_kwargs(kind, signal),
        old_logprobs=old,
        clip_eps=clip_eps,
        temperature=temperature,
        reduction=reduction,
        vocab_size=common["vocab"],
        chunk_size=chunk_size,
        backend=backend,
    )
    want, want_metrics = _unfused(h, W, tokens, mask, kind=kind, signal=signal, clip_eps=clip_eps, **common)
    wrt = [t for t in (h, W) if t.requires_grad]
    assert loss.dtype == torch.float32 and loss.shape == want.shape
    go = torch.rand(loss.shape, generator=torch.Generator().manual_seed(5)) + 0.5  # a non-trivial grad_output
    grads = torch.autograd.grad((loss * go).sum(), wrt)
    want_grads = torch.autograd.grad((want * go).sum(), wrt)

    ref_h, ref_W = float64_leaves(h, W)
    ref = _reference(
        ref_h,
        ref_W,
        tokens,
        mask,
        kind=kind,
        signal=signal,
        old=old,
        clip_eps=clip_eps,
        temperature=temperature,
        reduction=reduction,
        vocab=vocab,
    )
    ref_wrt = [r for r, t in zip((ref_h, ref_W), (h, W)) if t.requires_grad]
    ref_grads = torch.autograd.grad((ref * go.double()).sum(), ref_wrt)

    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=5e-2)
    torch.testing.assert_close(loss, want, **tol)
    torch.testing.assert_close(loss.double(), ref, **tol)
    assert set(metrics) == set(want_metrics) | ({"clipped_fraction"} if with_old and clip_eps else set())
    for name, value in want_metrics.items():
        assert not metrics[name].requires_grad
        torch.testing.assert_close(metrics[name], value, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    for name, g, w, r in zip(["hidden", "weight"], grads, want_grads, ref_grads):
        assert_close_grad(g, r, dtype, name)
        assert_close_grad(g, w.double(), dtype, f"{name} (against the unfused path)")
    if frozen_weight:
        assert W.grad is None


@backends
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["teacher", "advantages"])
@pytest.mark.parametrize("with_old", [False, True])
def test_matches_unfused_and_float64(reduction, kind, with_old, backend):
    _check((3, 23), 1423, 48, kind=kind, with_old=with_old, reduction=reduction, backend=backend)


@backends
@pytest.mark.parametrize("kind", ["teacher", "advantages"])
@pytest.mark.parametrize("reduction", ["sequence_sum", "mean"])
def test_bf16(kind, reduction, backend):
    _check((2, 37), 1423, 64, dtype=torch.bfloat16, kind=kind, reduction=reduction, backend=backend)


@backends
@pytest.mark.parametrize("temperature", [0.7, 2.0])
@pytest.mark.parametrize("kind", ["teacher", "advantages"])
def test_temperatures(temperature, kind, backend):
    _check((2, 17), 1423, 48, kind=kind, temperature=temperature, backend=backend)


@backends
@pytest.mark.parametrize("leading", [1, 37, (1, 1), (2, 3, 5)])
def test_odd_shapes(leading, backend):
    _check(leading, 257, 24, reduction="sequence_sum" if not isinstance(leading, int) else "mean", backend=backend)


@backends
def test_many_chunks(backend):
    """Chunks of 16 rows over 101 tokens: the per-chunk coefficient reads the right rows."""
    _check((1, 101), 1423, 48, chunk_size=16, kind="advantages", backend=backend)
    _check((1, 101), 1423, 48, chunk_size=16, kind="teacher", reduction="mean", backend=backend)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["teacher", "advantages"])
def test_triton_rows_over_several_column_blocks(kind):
    """V = 5,003: the row kernels' online lse and gradient loop over three 2,048-column blocks."""
    _check((2, 41), 5003, 32, kind=kind, backend="triton")
    _check((2, 41), 5003, 32, kind=kind, dtype=torch.bfloat16, backend="triton")


@backends
@pytest.mark.parametrize("kind", ["teacher", "advantages"])
def test_padded_vocabulary(kind, backend):
    _check((2, 19), 1000, 32, padded_vocab=1024, kind=kind, backend=backend)


@backends
@pytest.mark.parametrize("kind", ["teacher", "advantages"])
def test_frozen_weight(kind, backend):
    _check((2, 19), 1000, 32, frozen_weight=True, kind=kind, backend=backend)


@pytest.mark.parametrize("kind", ["teacher", "advantages"])
def test_advantage_clip_and_baseline(kind):
    h, W, tokens, mask, signal, old = _batch((4, 13), 700, 32, kind=kind)
    baseline = torch.randn(4, 1, generator=torch.Generator().manual_seed(2)) * 0.5
    loss, metrics = fused_policy_gradient_loss(
        h,
        W,
        tokens,
        mask,
        **_signal_kwargs(kind, signal),
        old_logprobs=old,
        baseline=baseline,
        advantage_clip=0.4,
        clip_eps=0.2,
    )
    ref_h, ref_W = float64_leaves(h, W)
    ref = _reference(
        ref_h,
        ref_W,
        tokens,
        mask,
        kind=kind,
        signal=signal,
        old=old,
        baseline=baseline,
        advantage_clip=0.4,
        clip_eps=0.2,
    )
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(loss, [h, W])
    ref_grads = torch.autograd.grad(ref, [ref_h, ref_W])
    for name, g, r in zip(["hidden", "weight"], grads, ref_grads):
        assert_close_grad(g, r, torch.float32, name)
    assert 0 < metrics["advantage_clipped_fraction"] < 1
    assert 0 <= metrics["clipped_fraction"] < 1
    if kind == "teacher":
        # sampled_reverse_kl_loss with the same baseline and clamp (no ratio clip there)
        loss_nc, m_nc = fused_policy_gradient_loss(
            h,
            W,
            tokens,
            mask,
            teacher_logprobs=signal,
            old_logprobs=old,
            baseline=baseline,
            advantage_clip=0.4,
            clip_eps=None,
        )
        want, want_m = sampled_reverse_kl_loss(
            token_logprobs(h, W, tokens),
            signal,
            mask,
            old_logprobs=old,
            baseline=baseline,
            advantage_clip=0.4,
            reduction="sequence_sum",
        )
        torch.testing.assert_close(loss_nc, want, rtol=1e-5, atol=1e-5)
        for name, value in want_m.items():
            torch.testing.assert_close(m_nc[name], value, rtol=1e-5, atol=1e-6)


def test_reference_kl_penalty_matches_policy_gradient_loss():
    h, W, tokens, mask, signal, old = _batch((3, 11), 500, 32, kind="advantages")
    reference = old - 0.2
    loss, metrics = fused_policy_gradient_loss(
        h,
        W,
        tokens,
        mask,
        advantages=signal,
        old_logprobs=old,
        reference_logprobs=reference,
        beta=0.05,
        reduction="mean",
    )
    want, want_m = policy_gradient_loss(
        token_logprobs(h, W, tokens),
        signal,
        mask,
        old_logprobs=old,
        clip_eps=0.2,
        reference_logprobs=reference,
        beta=0.05,
        reduction="mean",
    )
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    assert set(metrics) == set(want_m)
    for name, value in want_m.items():
        torch.testing.assert_close(metrics[name], value, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(loss, [h, W])
    want_grads = torch.autograd.grad(want, [h, W])
    for name, g, w in zip(["hidden", "weight"], grads, want_grads):
        assert_close_grad(g, w.double(), torch.float32, name)


def test_deprecated_token_mean_warns_and_means_mean():
    h, W, tokens, mask, signal, old = _batch((2, 9), 300, 16)
    with pytest.warns(DeprecationWarning, match="token_mean"):
        old_name, _ = fused_policy_gradient_loss(h, W, tokens, mask, teacher_logprobs=signal, reduction="token_mean")
    new_name, _ = fused_policy_gradient_loss(h, W, tokens, mask, teacher_logprobs=signal, reduction="mean")
    torch.testing.assert_close(old_name, new_name, rtol=0, atol=0)


@backends
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_masked_rows_with_nan_contribute_exactly_zero(reduction, backend):
    h, W, tokens, mask, signal, old = _batch((3, 15), 400, 24)
    with torch.no_grad():
        h[~mask] = float("nan")
        signal = signal.clone()
        signal[~mask] = float("nan")
        old = old.clone()
        old[~mask] = float("-inf")
    loss, metrics = fused_policy_gradient_loss(
        h, W, tokens, mask, teacher_logprobs=signal, old_logprobs=old, reduction=reduction, backend=backend
    )
    loss.sum().backward()
    assert torch.isfinite(loss).all() and all(torch.isfinite(m).all() for m in metrics.values())
    assert (h.grad[~mask] == 0).all() and torch.isfinite(h.grad).all() and torch.isfinite(W.grad).all()
    if reduction == "none":
        assert (loss[~mask] == 0).all()


@backends
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["teacher", "advantages"])
def test_all_masked_gives_zero_loss_and_zero_gradients(reduction, kind, backend):
    h, W, tokens, mask, signal, old = _batch((2, 7), 300, 16, kind=kind)
    mask = torch.zeros_like(mask)
    loss, metrics = fused_policy_gradient_loss(
        h, W, tokens, mask, **_signal_kwargs(kind, signal), old_logprobs=old, reduction=reduction, backend=backend
    )
    loss.sum().backward()
    assert (loss == 0).all() and (h.grad == 0).all() and (W.grad == 0).all()
    assert metrics["tokens"] == 0 and all(torch.isfinite(m) for m in metrics.values())


@backends
@pytest.mark.parametrize("leading", [(0,), (0, 5), (3, 0)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_no_tokens(leading, reduction, backend):
    h = torch.randn(*leading, 8, requires_grad=True)
    W = torch.randn(40, 8, requires_grad=True)
    tokens = torch.zeros(leading, dtype=torch.long)
    mask = torch.ones(leading, dtype=torch.bool)
    loss, metrics = fused_policy_gradient_loss(
        h, W, tokens, mask, advantages=torch.ones(leading), reduction=reduction, backend=backend
    )
    loss.sum().backward()
    assert loss.shape == (leading if reduction == "none" else ())
    assert (loss == 0).all() and h.grad.shape == h.shape and (W.grad == 0).all()
    assert metrics["tokens"] == 0


@backends
def test_no_vocabulary_sized_tensor_and_no_host_sync(backend):
    h, W, tokens, mask, signal, old = _batch((4, 64), 2000, 32)
    # chunks of 32 rows: a [32, 2000] block is the largest allowed, [N = 256, V] would fail at once
    with MemoryTracker(numel_limit=64 * 2000) as tracker:
        loss, metrics = fused_policy_gradient_loss(
            h,
            W,
            tokens,
            mask,
            teacher_logprobs=signal,
            old_logprobs=old,
            chunk_size=32,
            reduction="mean",
            backend=backend,
        )
        loss.backward()
    assert tracker.host_syncs == []


def test_backward_scales_by_grad_output_and_no_grad_runs():
    h, W, tokens, mask, signal, old = _batch((2, 9), 300, 16, kind="advantages")
    loss, _ = fused_policy_gradient_loss(h, W, tokens, mask, advantages=signal, old_logprobs=old)
    g1 = torch.autograd.grad(loss, [h, W], retain_graph=True)
    g3 = torch.autograd.grad(3 * loss, [h, W])
    for a, b in zip(g1, g3):
        torch.testing.assert_close(3 * a, b)
    with torch.no_grad():
        again, _ = fused_policy_gradient_loss(h, W, tokens, mask, advantages=signal, old_logprobs=old)
    assert not again.requires_grad
    torch.testing.assert_close(again, loss.detach(), rtol=0, atol=0)


def test_float64_inputs():
    h, W, tokens, mask, signal, old = _batch((2, 9), 300, 16, kind="advantages")
    h64, W64 = float64_leaves(h, W)
    loss, _ = fused_policy_gradient_loss(h64, W64, tokens, mask, advantages=signal, old_logprobs=old)
    assert loss.dtype == torch.float64
    ref = _reference(*float64_leaves(h, W), tokens, mask, kind="advantages", signal=signal, old=old, clip_eps=0.2)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    # without old_logprobs the loss, -A lp, is differentiable as it stands (the ratio is a detached weight)
    small = dict(tokens=tokens[:1, :4] % 20, mask=mask[:1, :4] | True, advantages=signal[:1, :4])
    assert torch.autograd.gradcheck(
        lambda hh, ww: fused_policy_gradient_loss(hh, ww, **small)[0],
        (h64[:1, :4].detach().requires_grad_(), W64[:20].detach().requires_grad_()),
        eps=1e-6,
        atol=1e-6,
    )


def _valid():
    h, W, tokens, mask, signal, old = _batch((2, 5), 50, 8)
    return dict(hidden=h, weight=W, tokens=tokens, mask=mask, teacher_logprobs=signal, old_logprobs=old)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(advantages=torch.zeros(2, 5)), ValueError, "exactly one of advantages .* got both"),
        (dict(teacher_logprobs=None), ValueError, "exactly one of .* got neither"),
        (
            dict(teacher_logprobs=torch.zeros(2, 4), old_logprobs=None),
            ValueError,
            "mask has shape \\(2, 5\\), expected the shape of teacher_logprobs",
        ),
        (dict(old_logprobs=torch.zeros(2, 4)), ValueError, "old_logprobs has shape"),
        (dict(mask=torch.ones(2, 5)), ValueError, "mask must be a bool tensor"),
        (dict(tokens=torch.zeros(2, 5, dtype=torch.int32)), ValueError, "tokens must be int64"),
        (dict(tokens=torch.zeros(2, 4, dtype=torch.long)), ValueError, "tokens must have the leading shape"),
        (dict(weight=torch.zeros(50, 7)), ValueError, "hidden has hidden size 8"),
        (dict(clip_eps=1.5), ValueError, "clip_eps must be a number in \\(0, 1\\)"),
        (dict(advantage_clip=0.0), ValueError, "advantage_clip must be a finite number > 0"),
        (dict(beta=0.1), ValueError, "beta > 0 needs reference_logprobs"),
        (dict(reduction="avg"), ValueError, "reduction must be one of"),
        (dict(temperature=0.0), ValueError, "temperature must be finite and > 0"),
        (dict(vocab_size=51), ValueError, "vocab_size must be an int in \\[1, 50\\]"),
        (dict(baseline=torch.zeros(3, 1)), ValueError, "baseline has shape \\(3, 1\\)"),
        (dict(backend="cuda"), ValueError, "backend must be one of"),
        (
            dict(
                hidden=torch.randn(2, 5, 8, dtype=torch.float64),
                weight=torch.randn(50, 8, dtype=torch.float64),
                backend="triton",
            ),
            ValueError,
            "backend='triton' supports bfloat16, float16 and float32",
        ),
        (dict(chunk_size=0), ValueError, "chunk_size must be a positive int"),
        (dict(hidden=[1.0]), TypeError, "hidden must be a torch.Tensor"),
    ],
)
def test_bad_arguments_are_named(change, error, match):
    args = {**_valid(), **change}
    with pytest.raises(error, match=match):
        fused_policy_gradient_loss(**args)


@backends
@pytest.mark.parametrize("kind", ["teacher", "advantages"])
def test_ignore_index_positions_count_as_masked(kind, backend):
    """HF labels: an id of ignore_index (-100, or one inside the vocabulary) is a masked position."""
    h, W, tokens, mask, signal, old = _batch((3, 17), 300, 16, kind=kind)
    ignored = torch.rand(mask.shape, generator=torch.Generator().manual_seed(4)) < 0.3
    for ignore_index in (-100, 7):
        labels = torch.where(ignored, ignore_index, tokens)
        with torch.no_grad():
            h[ignored & mask] = float("nan")  # never read
        loss, metrics = fused_policy_gradient_loss(
            h,
            W,
            labels,
            mask,
            **_signal_kwargs(kind, signal),
            old_logprobs=old,
            ignore_index=ignore_index,
            backend=backend,
        )
        keep = mask & (labels != ignore_index)
        want, want_metrics = fused_policy_gradient_loss(
            h, W, torch.where(keep, labels, 0), keep, **_signal_kwargs(kind, signal), old_logprobs=old, backend=backend
        )
        torch.testing.assert_close(loss, want, rtol=0, atol=0)
        assert metrics["tokens"] == keep.sum()
        for name, value in want_metrics.items():
            torch.testing.assert_close(metrics[name], value, rtol=0, atol=0)
        grads = torch.autograd.grad(loss, [h, W])
        assert torch.isfinite(grads[0]).all() and (grads[0][~keep] == 0).all() and torch.isfinite(grads[1]).all()


@backends
def test_under_autocast_is_the_op_on_cast_inputs(backend, test_device):
    """bf16 hidden states, an fp32 head, bf16 autocast (mixed-precision training): the op runs on the
    operands as autocast casts them, and each input gets its gradient in its own dtype."""
    h, W, tokens, mask, signal, old = _batch((2, 19), 300, 16, kind="advantages")
    h = h.detach().to(torch.bfloat16).requires_grad_()
    W = W.detach().requires_grad_()  # fp32
    with torch.autocast("cuda" if test_device == "cuda" else "cpu", dtype=torch.bfloat16):
        loss, _ = fused_policy_gradient_loss(h, W, tokens, mask, advantages=signal, old_logprobs=old, backend=backend)
    assert loss.dtype == torch.float32
    grads = torch.autograd.grad(loss, [h, W])
    assert grads[0].dtype == torch.bfloat16 and grads[1].dtype == torch.float32
    W16 = W.detach().to(torch.bfloat16).requires_grad_()
    want, _ = fused_policy_gradient_loss(h, W16, tokens, mask, advantages=signal, old_logprobs=old, backend=backend)
    torch.testing.assert_close(loss, want, rtol=0, atol=0)
    want_grads = torch.autograd.grad(want, [h, W16])
    torch.testing.assert_close(grads[0], want_grads[0], rtol=0, atol=0)
    torch.testing.assert_close(grads[1], want_grads[1].float(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="must share a dtype"):
        fused_policy_gradient_loss(h, W, tokens, mask, advantages=signal)
