"""Kernel tests: where their ops run (OPD_TEST_DEVICE), and the CPU-only skips.

TRITON_INTERPRET is set by tests/conftest.py, before opd_kernels is imported.
"""

import os
from pathlib import Path

import pytest
import torch

# Where the kernel tests (the test_*.py files beside this one) run the ops: "cpu" (the Triton
# kernels under the interpreter), or "cuda" (compiled Triton kernels; the default where CUDA
# exists). On CUDA the tests still build their inputs and references on the CPU; the ops they
# call are wrapped to take CUDA copies of the inputs and give CPU outputs, gradients flowing
# back to the CPU leaves. OPD_TEST_DEVICE=cpu keeps everything on the CPU; "cpu-copy" wraps the
# ops as on CUDA but copies to the CPU (checks the wrapping itself on a machine without a GPU).
TEST_DEVICE = os.environ.get("OPD_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
_OP_DEVICE = "cpu" if TEST_DEVICE == "cpu-copy" else TEST_DEVICE
_KERNEL_TESTS = Path(__file__).resolve().parent
_WRAPPED = ("fused_reverse_kl", "token_logprobs", "topk_logprobs", "FusedReverseKL", "fused_policy_gradient_loss")
# Tests about the CPU itself, or that install interpreter-sized tiles (256 x 1024 blocks: fine
# for the interpreter, beyond a GPU's registers and shared memory), run only on the CPU.
_CPU_ONLY = {
    "test_auto_backend_is_torch_on_cpu": "checks the CPU's auto backend",
    "test_kernels_compile.py": "ahead-of-time compile for sm_80/sm_90: a CPU job, run by opd_kernels.report",
}
_INTERPRETER_TILES = (
    "test_reverse_kl_memory.py::test_no_tokens_by_vocab_tensor",
    "test_token_logprobs.py::test_no_tokens_by_vocab_tensor",
)


class _ToDevice(torch.autograd.Function):
    """x.to(device) whose copies (forward and backward) a TorchDispatchMode does not see: the
    tests' MemoryTracker counts device-to-host copies as host synchronisations of the op."""

    @staticmethod
    def forward(ctx, x, device):
        from torch.utils._python_dispatch import _disable_current_modes

        ctx.source = x.device
        with _disable_current_modes():
            return x.to(device, copy=True)

    @staticmethod
    def backward(ctx, grad):
        from torch.utils._python_dispatch import _disable_current_modes

        with _disable_current_modes():
            return grad.to(ctx.source, copy=True), None


def _move(value, device):
    if type(value) is torch.Tensor and value.device.type == "cpu":  # noqa: E721 - DTensors stay as they are
        if value.requires_grad:
            return _ToDevice.apply(value, device)
        from torch.utils._python_dispatch import _disable_current_modes

        with _disable_current_modes():
            return value.to(device, copy=True)
    return value


def _on_device(fn, device):
    def wrapped(*args, **kwargs):
        args = [_move(a, device) for a in args]
        kwargs = {k: _move(v, device) for k, v in kwargs.items()}
        return _to_cpu(fn(*args, **kwargs))

    wrapped.__wrapped__ = fn
    return wrapped


def _to_cpu(out):
    """An op's output back on the CPU: a tensor (through autograd where it has grad), a tuple of
    them, or a dict of detached ones (a loss's metrics)."""
    if isinstance(out, tuple):
        return tuple(_to_cpu(t) for t in out)
    if isinstance(out, dict):
        return {k: _move_back(t) for k, t in out.items()}
    return _ToDevice.apply(out, torch.device("cpu")) if out.requires_grad else _move_back(out)


def _move_back(t):
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        return t.to("cpu", copy=True)


def _module_on_device(cls, device):
    class OnDevice(cls):
        def forward(self, *args, **kwargs):
            return _on_device(super().forward, device)(*args, **kwargs)

    OnDevice.__name__ = cls.__name__
    return OnDevice


# Under the Triton interpreter these cases take 3-55 s each (the largest shapes, k = 64, the
# memory tracker's and the ahead-of-time compile's: 43 s for its module): they are "slow" there, so the fast lane
# (-m "not slow") keeps every op and backend at the small shapes; CI runs them all.
_INTERPRETER_SLOW = (
    "[1000-triton",
    "[32003-triton",
    "test_topk_matches_reference[64-triton]",
    "test_topk_matches_reference[5-triton]",
    "test_topk_respects_vocab_size[triton]",
    "test_triton_topk_allocates_only_its_outputs",
    "test_no_tokens_by_vocab_tensor",
    "test_every_configuration_compiles_for_ampere_and_hopper",
    "test_no_spills_and_tensor_cores_on_16_bit_dots",
    "test_chunk_boundaries[triton-fused]",
    "test_topk_of_whole_vocabulary_sums_to_one[triton]",
    "[4096-triton",
    "test_no_grad_and_grad_output_scaling[triton-fused]",
)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("TRITON_INTERPRET") == "1":
        for item in items:
            if Path(str(item.fspath)).parent == _KERNEL_TESTS and any(k in item.name for k in _INTERPRETER_SLOW):
                item.add_marker(pytest.mark.slow)
    if _OP_DEVICE == "cpu":
        return
    for item in items:
        path = Path(str(item.fspath))
        if path.parent != _KERNEL_TESTS:
            continue
        reason = _CPU_ONLY.get(path.name) or _CPU_ONLY.get(getattr(item, "originalname", item.name))
        nodeid = f"{path.name}::{getattr(item, 'originalname', item.name)}"
        if nodeid in _INTERPRETER_TILES and "triton" in item.name:
            reason = "installs interpreter-sized tiles (runs under TRITON_INTERPRET on the CPU)"
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"{TEST_DEVICE} run: {reason}"))


@pytest.fixture(autouse=True)
def _kernel_ops_on_test_device(request, monkeypatch):
    """On CUDA, the kernel tests' ops take CUDA copies of their inputs (see TEST_DEVICE)."""
    if TEST_DEVICE == "cpu" or request.module is None:
        return
    if Path(str(request.fspath)).parent != _KERNEL_TESTS:
        return
    device = torch.device(_OP_DEVICE)
    for name in _WRAPPED:
        fn = getattr(request.module, name, None)
        if fn is None:
            continue
        wrapped = _module_on_device(fn, device) if isinstance(fn, type) else _on_device(fn, device)
        monkeypatch.setattr(request.module, name, wrapped)


@pytest.fixture
def on_test_device():
    """Wraps a peer's callable (a function or a module instance) as the ops are wrapped: on
    CUDA it takes CUDA copies of its inputs and gives CPU outputs; on the CPU it is the callable."""
    if TEST_DEVICE == "cpu":
        return lambda fn: fn
    device = torch.device(_OP_DEVICE)
    return lambda fn: _on_device(fn, device)


@pytest.fixture
def test_device() -> str:
    """Where the kernel tests run their ops: "cpu", "cuda" or "cpu-copy" (see TEST_DEVICE)."""
    return TEST_DEVICE
