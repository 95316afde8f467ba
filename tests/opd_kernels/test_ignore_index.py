"""token_logprobs with Hugging Face labels: ``ignore_index`` positions (-100 by default) get
log-prob 0 and entropy 0, pass no gradient and can be combined with ``mask``.

In the spirit of the peers' ignore-index cases: Liger-Kernel's fused linear cross-entropy tests
set a random number (1 to half) of targets to the ignore index, which may be an id inside the
vocabulary; Cut Cross-Entropy's mark a random fraction of targets invalid, none or all included.
The reference is PyTorch's own ``cross_entropy(..., ignore_index=..., reduction="none")`` on
float64 logits: -CE is the log-prob, 0 at ignored positions.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_grad, float64_leaves, make_rkl_inputs

from opd_kernels import sampled_reverse_kl_loss, token_logprobs
from opd_kernels.testing import reference_logits

backends = pytest.mark.parametrize("backend", ["torch", "triton"])
V, D = 257, 32


def _labels(shape, seed, *, ignore_index, ignored):
    """Random labels with ``ignored`` of them ("some": 1 to half, at random places) set to ignore_index."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, shape, generator=gen)
    n = labels.numel()
    count = {"none": 0, "some": int(torch.randint(1, max(n // 2, 2), (1,), generator=gen)), "all": n}[ignored]
    labels.view(-1)[torch.randperm(n, generator=gen)[:count]] = ignore_index
    return labels


@backends
@pytest.mark.parametrize("ignore_index", [-100, 2, 42], ids=["hf-default", "in-vocab-2", "in-vocab-42"])
@pytest.mark.parametrize("ignored", ["none", "some", "all"])
def test_ignored_labels_match_torch_cross_entropy(backend, ignore_index, ignored):
    h, W, _, _ = make_rkl_inputs((3, 29), V, D, D, seed=1)
    labels = _labels(h.shape[:-1], 2, ignore_index=ignore_index, ignored=ignored)
    lp, entropy = token_logprobs(
        h, W, labels, ignore_index=ignore_index, return_entropy=True, temperature=0.7, backend=backend
    )
    ref_h, ref_W = float64_leaves(h, W)
    logits = reference_logits(ref_h, ref_W, 0.7)
    ref_lp = -F.cross_entropy(
        logits.flatten(0, -2), labels.flatten(), ignore_index=ignore_index, reduction="none"
    ).view(labels.shape)
    keep = labels != ignore_index
    log_p = torch.log_softmax(logits, dim=-1)
    ref_entropy = torch.where(keep, -(log_p.exp() * log_p).sum(-1), 0.0)
    torch.testing.assert_close(lp.double(), ref_lp, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(entropy.double(), ref_entropy, rtol=1e-4, atol=1e-5)
    assert (lp[~keep] == 0).all() and (entropy[~keep] == 0).all(), "ignored positions are exactly 0"

    # HF's mean over the non-ignored targets; 0 (not NaN) when every target is ignored
    count = keep.sum().clamp_min(1)
    loss = -lp.sum() / count + 0.1 * entropy.sum() / count
    ref_loss = -ref_lp.sum() / count + 0.1 * ref_entropy.sum() / count
    grads = torch.autograd.grad(loss, [h, W])
    ref_grads = torch.autograd.grad(ref_loss, [ref_h, ref_W])
    for name, g, r in zip(["hidden", "weight"], grads, ref_grads):
        assert_close_grad(g, r, torch.float32, name)
    assert (grads[0][~keep] == 0).all(), "ignored positions get exactly zero gradient"
    if ignored == "all":
        assert loss.item() == 0 and not grads[0].any() and not grads[1].any()


@backends
def test_shifted_hf_labels_with_nan_padding(backend):
    """A causal-LM batch as HF builds it: prompt and right padding labelled -100, the labels
    shifted by one; padding rows' hidden states may be NaN (as in the masked-token contract)."""
    B, T = 3, 24
    h, W, _, _ = make_rkl_inputs((B, T), V, D, D, seed=3, requires_grad=False)
    input_ids = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(4))
    prompt, length = torch.tensor([5, 9, 2]), torch.tensor([24, 17, 11])
    pos = torch.arange(T)
    labels = torch.where((pos >= prompt[:, None]) & (pos < length[:, None]), input_ids, -100)
    shift_labels = F.pad(labels[:, 1:], (0, 1), value=-100)  # transformers' shift_labels
    bad = h.clone()
    bad[pos >= length[:, None]] = float("nan")

    def run(hidden):
        hidden = hidden.clone().requires_grad_(True)
        weight = W.clone().requires_grad_(True)
        lp = token_logprobs(hidden, weight, shift_labels, backend=backend)
        lp.sum().backward()
        return lp.detach(), hidden.grad, weight.grad

    got = run(bad)
    want = run(torch.where(torch.isnan(bad), 0.0, bad))
    for name, g, w in zip(["log-probs", "hidden grad", "weight grad"], got, want):
        assert torch.isfinite(g).all(), f"{name}: non-finite"
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert (got[0][shift_labels == -100] == 0).all()


@backends
def test_mask_combines_with_ignore_index(backend):
    h, W, _, _ = make_rkl_inputs(60, V, D, D, seed=5)
    labels = _labels((60,), 6, ignore_index=-100, ignored="some")
    mask = torch.rand(60, generator=torch.Generator().manual_seed(7)) < 0.6
    garbage = torch.where(mask, labels, V + 1000)  # masked positions may hold any id: never gathered
    lp = token_logprobs(h, W, garbage, mask=mask, backend=backend)
    keep = mask & (labels != -100)
    full = token_logprobs(h, W, torch.where(keep, labels, 0), backend=backend)
    torch.testing.assert_close(lp, torch.where(keep, full, 0.0), rtol=0, atol=0)
    (g,) = torch.autograd.grad(lp.sum(), [h])
    assert (g[~keep] == 0).all() and g[keep].abs().sum() > 0


def test_labels_into_the_sampled_loss():
    """The OPD loss from labels: the same loss and gradient as on the kept tokens alone."""
    h_s, W_s, h_t, W_t = make_rkl_inputs((2, 30), V, D, D, seed=8)
    labels = _labels((2, 30), 9, ignore_index=-100, ignored="some")
    keep = labels != -100
    with torch.no_grad():
        lp_t = token_logprobs(h_t, W_t, labels)
    lp_s = token_logprobs(h_s, W_s, labels)
    loss, metrics = sampled_reverse_kl_loss(lp_s, lp_t, keep)
    (g,) = torch.autograd.grad(loss, [h_s])
    kept_s = h_s.detach()[keep].requires_grad_(True)
    lp_kept = token_logprobs(kept_s, W_s, labels[keep])
    want, _ = sampled_reverse_kl_loss(lp_kept, lp_t[keep], torch.ones_like(lp_kept, dtype=torch.bool))
    (g_kept,) = torch.autograd.grad(want, [kept_s])
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(g[keep], g_kept)
    assert int(metrics["tokens"]) == int(keep.sum()) and (g[~keep] == 0).all()


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda h, W, y: token_logprobs(h, W, y, ignore_index=-100.0), TypeError, "ignore_index must be an int"),
        (lambda h, W, y: token_logprobs(h, W, y, ignore_index=True), TypeError, "ignore_index must be an int"),
        (
            lambda h, W, y: token_logprobs(h, W, y - 1, check_tokens=True),
            ValueError,
            r"tokens must lie in \[0, 257\) or be ignore_index=-100, found \[-1",
        ),
        (
            lambda h, W, y: token_logprobs(h, W, y, mask=torch.ones(3, dtype=torch.bool)),
            ValueError,
            "mask must have the leading shape of hidden",
        ),
        (lambda h, W, y: token_logprobs(h, W, y, mask=torch.ones(8)), ValueError, "mask must be a bool tensor"),
    ],
)
def test_bad_ignore_arguments(call, error, match):
    h, W, _, _ = make_rkl_inputs(8, V, D, D, requires_grad=False)
    tokens = torch.zeros(8, dtype=torch.long)
    tokens[3] = -100  # accepted by check_tokens=True
    with pytest.raises(error, match=match):
        call(h, W, tokens)
    token_logprobs(h, W, tokens, check_tokens=True)
