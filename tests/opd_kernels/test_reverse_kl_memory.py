"""No [tokens, vocab]-sized tensor is ever created, and no host synchronisation happens."""

import pytest
import torch
from helpers import RKL_IMPL_IDS, RKL_IMPLS, make_rkl_inputs

from opd_kernels import fused_reverse_kl
from opd_kernels.testing import MemoryTracker

# N * V / 8 = 4.1M elements: far above any tile (chunk 64 x 32003 = 2.0M for the chunked
# schedules, 64 x 8192 for the torch backend) and above the legitimate O(V * D) weight
# gradient (32003 x 32 = 1.0M), so only an [N, V]-class tensor can trip it.
N, V, D_S, D_T = 1024, 32003, 32, 48


@pytest.fixture
def interpreter_sized_tiles(monkeypatch):
    """Big tiles: the interpreter's cost is per program, and tile sizes change no torch allocation."""
    from opd_kernels import reverse_kl_triton as rkt

    big = rkt.TileConfig(block_n=256, block_v=1024, block_d=64, num_warps=8, num_stages=1)
    monkeypatch.setitem(rkt.FWD_CONFIGS, torch.bfloat16, big)
    monkeypatch.setitem(rkt.BWD_CONFIGS, torch.bfloat16, big)
    monkeypatch.setattr(rkt, "ROW_BLOCK_V", 32768)


@pytest.mark.parametrize("backend,schedule", RKL_IMPLS, ids=RKL_IMPL_IDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_no_tokens_by_vocab_tensor(backend, schedule, reduction, capsys, interpreter_sized_tiles):
    h_s, W_s, h_t, W_t = make_rkl_inputs(N, V, D_S, D_T, dtype=torch.bfloat16)
    mask = torch.rand(N, generator=torch.Generator().manual_seed(0)) < 0.7
    limit = N * V // 8
    with MemoryTracker(numel_limit=limit) as tracker:
        loss = fused_reverse_kl(
            h_s, W_s, h_t, W_t, mask=mask, reduction=reduction, backend=backend, schedule=schedule, chunk_size=64
        )
        loss.sum().backward() if reduction == "none" else loss.backward()
    assert tracker.host_syncs == [], f"host synchronisation inside the op: {tracker.host_syncs}"
    assert tracker.largest.numel < limit
    naive_bytes = 2 * N * V * 4  # fp32 logits of both models alone
    with capsys.disabled():
        print(
            f"\n[memory] {backend}/{schedule} reduction={reduction} N={N} V={V}: peak extra "
            f"{tracker.peak_bytes / 2**20:.1f} MiB (naive fp32 logits alone: {naive_bytes / 2**20:.0f} MiB); "
            f"largest tensor {tracker.largest.shape} from {tracker.largest.op}"
        )
    assert tracker.peak_bytes < naive_bytes / 4


def test_tracker_catches_materialised_logits():
    h_s, W_s, h_t, W_t = make_rkl_inputs(N, 4096, D_S, D_T)
    with pytest.raises(AssertionError, match="elements"):
        with MemoryTracker(numel_limit=N * 4096 // 8):
            torch.log_softmax(h_s @ W_s.t(), dim=-1)


def test_tracker_catches_host_sync():
    x = torch.ones(3)
    with MemoryTracker() as tracker:
        x.sum().item()
    assert tracker.host_syncs == ["aten::_local_scalar_dense"]
