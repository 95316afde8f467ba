"""The measuring instruments themselves: CPU peak memory and the FLOP counts."""

import torch

from bench.measure import bf16_dense_peak_tflops, cpu_peak_bytes
from bench.providers import OP_MODES, naive_reverse_kl
from bench.shapes import Shape
from opd_kernels.testing import MemoryTracker


def test_cpu_profiler_peak_agrees_with_memory_tracker_on_eager_code():
    # The bench measures CPU memory from the allocator timeline (it also sees inside
    # torch.compile); on eager code it must agree with the project's dispatch-mode tracker.
    gen = torch.Generator().manual_seed(0)
    h_s = torch.randn(256, 64, generator=gen).requires_grad_()
    W_s = (torch.randn(2048, 64, generator=gen) / 8).requires_grad_()
    h_t = torch.randn(256, 96, generator=gen)
    W_t = torch.randn(2048, 96, generator=gen) / 10

    def step():
        naive_reverse_kl(h_s, W_s, h_t, W_t, 1.0).backward()

    step()
    h_s.grad = W_s.grad = None
    profiled = cpu_peak_bytes(step)
    h_s.grad = W_s.grad = None
    with MemoryTracker() as tracker:
        step()
    # Several [256, 2048] fp32 tensors are alive at once: far above rounding noise.
    assert tracker.peak_bytes > 4 * 256 * 2048 * 4
    assert abs(profiled - tracker.peak_bytes) <= 0.01 * tracker.peak_bytes, (profiled, tracker.peak_bytes)


def test_flop_counts_follow_the_stated_formulas():
    n, v, d_s, d_t = 3, 5, 7, 11
    shape = Shape(n, v, d_s, d_t)
    assert OP_MODES["fused_reverse_kl-forward"].flops(shape) == 2 * n * v * (d_s + d_t)
    assert OP_MODES["fused_reverse_kl-full"].flops(shape) == 4 * n * v * (d_s + d_t) + 4 * n * v * d_s
    assert OP_MODES["token_logprobs-forward"].flops(shape) == 2 * n * v * d_t
    assert OP_MODES["token_logprobs-full"].flops(shape) == 8 * n * v * d_s
    assert OP_MODES["topk_logprobs-forward"].flops(shape) == 2 * n * v * d_t


def test_peak_table_tells_h100_variants_apart():
    assert bf16_dense_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bf16_dense_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_dense_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bf16_dense_peak_tflops("NVIDIA GeForce GTX 1080") is None
