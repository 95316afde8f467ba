"""How things are measured: the device, time per call, peak extra memory, and error vs float64."""

from __future__ import annotations

import gc
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# bf16 dense tensor-core peak (TFLOP/s, no sparsity) by device-name fragment; the first
# match wins, so the more specific names come first. Source: the vendors' data sheets.
BF16_DENSE_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM5 / "H100 80GB HBM3"
    ("H200", 989.0),
    ("H800", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
)


def bf16_dense_peak_tflops(device_name: str) -> float | None:
    for fragment, peak in BF16_DENSE_PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
            return peak
    return None


def cpu_model_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@dataclass(frozen=True)
class DeviceInfo:
    device: torch.device
    name: str  # the CSV's gpu_name
    slug: str  # the results' file-name prefix
    peak_tflops: float | None  # bf16 dense; None on CPU or for an unlisted GPU

    @classmethod
    def detect(cls, peak_override: float | None = None) -> DeviceInfo:
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            peak = peak_override or bf16_dense_peak_tflops(name)
            return cls(torch.device("cuda", 0), name, slug(name), peak)
        model = cpu_model_name()
        name = f"CPU {model} ({torch.get_num_threads()} threads)"
        return cls(torch.device("cpu"), name, "cpu-" + slug(model), peak_override)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


# --------------------------------------------------------------------------------------------
# Time


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    rounds: int


def timing_from_seconds(durations: list[float]) -> Timing:
    ms = np.asarray(durations, dtype=np.float64) * 1e3
    return Timing(float(np.median(ms)), float(np.percentile(ms, 20)), float(np.percentile(ms, 80)), len(ms))


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def rounds_for(seconds_per_call: float, *, target_seconds: float, min_rounds: int, max_rounds: int) -> int:
    """Enough rounds to fill target_seconds, within [min_rounds, max_rounds]."""
    if seconds_per_call <= 0:
        return max_rounds
    return int(min(max_rounds, max(min_rounds, round(target_seconds / seconds_per_call))))


# --------------------------------------------------------------------------------------------
# Memory


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated while fn runs, above what was allocated before it.

    CUDA: the caching allocator's own peak counter. CPU: the allocator's timeline as
    torch.profiler(profile_memory=True) records it. opd_kernels.testing.MemoryTracker (a
    TorchDispatchMode) would do for eager code, but torch.compile refuses to run compiled
    graphs under a dispatch mode and silently falls back to eager, so it would report the
    naive-compiled and Liger chunked providers' *eager* memory; the profiler sees every
    allocation either way, and agrees with MemoryTracker on eager code (test_measure.py).
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    return cpu_peak_bytes(fn)


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Raw allocator events: +bytes on allocation, -bytes on free, in time order.
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


# --------------------------------------------------------------------------------------------
# Error


def max_abs_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.detach().double() - want.detach().double()).abs().max())


def max_relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|: the error on the scale of the tensor (gradients)."""
    scale = float(want.detach().double().abs().max())
    return max_abs_error(got, want) / scale if scale > 0 else max_abs_error(got, want)
