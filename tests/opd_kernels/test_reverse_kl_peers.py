"""Cross-check against Liger-Kernel's LigerFusedLinearJSD(jsd_beta=1.0): its reverse KL."""

import pytest
import torch
from helpers import RKL_IMPL_IDS, RKL_IMPLS, cosine, make_rkl_inputs

from opd_kernels import fused_reverse_kl

liger = pytest.importorskip("liger_kernel.transformers")


@pytest.mark.parametrize("backend,schedule", RKL_IMPLS, ids=RKL_IMPL_IDS)
@pytest.mark.parametrize("d_t", [48, 80])
def test_matches_liger_fused_linear_jsd_beta_one(backend, schedule, d_t, on_test_device):
    h_s, W_s, h_t, W_t = make_rkl_inputs(37, 1423, 48, d_t)
    # Liger selects tokens by label != ignore_index and averages over them (batchmean).
    labels = torch.arange(37) % 7
    labels[::3] = -100
    theirs = on_test_device(liger.LigerFusedLinearJSD(jsd_beta=1.0, temperature=0.9))(h_s, W_s, h_t, W_t, labels)
    theirs_grads = torch.autograd.grad(theirs, [h_s, W_s])
    ours = fused_reverse_kl(
        h_s, W_s, h_t, W_t, mask=labels != -100, temperature=0.9, backend=backend, schedule=schedule
    )
    ours_grads = torch.autograd.grad(ours, [h_s, W_s])
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-5)
    for a, b in zip(ours_grads, theirs_grads):
        assert cosine(a, b) > 0.99999
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
