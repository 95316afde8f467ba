"""token_logprobs against Cut Cross-Entropy and Liger-Kernel's fused linear cross-entropy."""

import pytest
import torch
from helpers import cosine, make_rkl_inputs

from opd_kernels import token_logprobs


def _inputs():
    h, W, _, _ = make_rkl_inputs(37, 1423, 48, 48)
    tokens = torch.randint(0, 1423, (37,), generator=torch.Generator().manual_seed(5))
    return h, W, tokens


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_matches_cut_cross_entropy(backend, on_test_device):
    cce = pytest.importorskip("cut_cross_entropy")
    h, W, tokens = _inputs()
    theirs = -on_test_device(cce.linear_cross_entropy)(h, W, tokens, reduction="none", impl="torch_compile")
    theirs_grads = torch.autograd.grad(theirs.sum(), [h, W])
    ours = token_logprobs(h, W, tokens, backend=backend)
    ours_grads = torch.autograd.grad(ours.sum(), [h, W])
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-4)
    for a, b in zip(ours_grads, theirs_grads):
        assert cosine(a, b) > 0.99999


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_matches_liger_fused_linear_cross_entropy(backend, on_test_device):
    liger = pytest.importorskip("liger_kernel.transformers")
    h, W, tokens = _inputs()
    theirs = on_test_device(liger.LigerFusedLinearCrossEntropyLoss(reduction="sum"))(W, h, tokens)
    theirs_grad = torch.autograd.grad(theirs, [h])[0]
    ours = token_logprobs(h, W, tokens, backend=backend)
    ours_grad = torch.autograd.grad(-ours.sum(), [h])[0]
    torch.testing.assert_close(-ours.sum(), theirs.float(), rtol=1e-4, atol=1e-4)
    assert cosine(ours_grad, theirs_grad) > 0.99999
