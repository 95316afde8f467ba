"""A DTensor argument (an FSDP2-sharded LM head, say) is refused up front with a TypeError that
names the argument and says how to pass a full tensor."""

import subprocess
import sys

import pytest
import torch
from helpers import make_rkl_inputs

from opd_kernels import (
    FusedReverseKL,
    fused_policy_gradient_loss,
    fused_reverse_kl,
    sampled_reverse_kl_loss,
    token_logprobs,
    topk_logprobs,
)

dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """Turns a tensor into a DTensor sharded on dim 0 over a one-process gloo group on the CPU."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    owns_group = not dist.is_initialized()
    if owns_group:
        store = dist.FileStore(str(tmp_path_factory.mktemp("dist") / "store"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        yield lambda t: distribute_tensor(t, mesh, [Shard(0)])
    finally:
        if owns_group:
            dist.destroy_process_group()


def _rkl_args():
    h_s, W_s, h_t, W_t = make_rkl_inputs((2, 3), 50, 8, 12, requires_grad=False)
    return dict(
        student_hidden=h_s,
        student_weight=W_s,
        teacher_hidden=h_t,
        teacher_weight=W_t,
        mask=torch.ones(2, 3, dtype=torch.bool),
    )


def _expect_dtensor_error(name, call):
    with pytest.raises(TypeError, match=rf"^{name} is a torch.distributed DTensor \(placements") as info:
        call()
    message = str(info.value)
    assert "Shard(dim=0)" in message
    assert "inside the forward of the FSDP-wrapped module" in message
    assert f"{name}.full_tensor()" in message


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name", ["student_hidden", "student_weight", "teacher_hidden", "teacher_weight", "mask"])
def test_fused_reverse_kl(shard, name, backend):
    args = _rkl_args()
    args[name] = shard(args[name])
    _expect_dtensor_error(name, lambda: fused_reverse_kl(**args, backend=backend))
    _expect_dtensor_error(name, lambda: FusedReverseKL(backend=backend)(**args))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name", ["hidden", "weight", "tokens"])
def test_token_logprobs(shard, name, backend):
    args = dict(hidden=torch.randn(2, 3, 8), weight=torch.randn(50, 8), tokens=torch.zeros(2, 3, dtype=torch.long))
    args[name] = shard(args[name])
    _expect_dtensor_error(name, lambda: token_logprobs(**args, backend=backend))
    # vocab_size slices the weight: the check must come before the slice turns it into another DTensor.
    _expect_dtensor_error(name, lambda: token_logprobs(**args, backend=backend, vocab_size=40, return_entropy=True))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name", ["hidden", "weight"])
def test_topk_logprobs(shard, name, backend):
    args = dict(hidden=torch.randn(2, 3, 8), weight=torch.randn(50, 8))
    args[name] = shard(args[name])
    _expect_dtensor_error(name, lambda: topk_logprobs(**args, k=4, backend=backend))


@pytest.mark.parametrize("name", ["student_logprobs", "teacher_logprobs", "mask", "old_logprobs"])
def test_sampled_reverse_kl_loss(shard, name):
    args = dict(
        student_logprobs=-torch.rand(2, 3),
        teacher_logprobs=-torch.rand(2, 3),
        mask=torch.ones(2, 3, dtype=torch.bool),
        old_logprobs=-torch.rand(2, 3),
    )
    args[name] = shard(args[name])
    _expect_dtensor_error(name, lambda: sampled_reverse_kl_loss(**args))


@pytest.mark.parametrize("name", ["hidden", "weight", "tokens", "mask", "teacher_logprobs", "old_logprobs"])
def test_fused_policy_gradient_loss(shard, name):
    args = dict(
        hidden=torch.randn(2, 3, 8),
        weight=torch.randn(50, 8),
        tokens=torch.zeros(2, 3, dtype=torch.long),
        mask=torch.ones(2, 3, dtype=torch.bool),
        teacher_logprobs=-torch.rand(2, 3),
        old_logprobs=-torch.rand(2, 3),
    )
    args[name] = shard(args[name])
    _expect_dtensor_error(name, lambda: fused_policy_gradient_loss(**args))


def test_full_tensor_is_accepted(shard):
    """The advice in the message works: .full_tensor() gives the same loss as the plain tensor."""
    args = _rkl_args()
    expected = fused_reverse_kl(**args, backend="torch")
    args["student_weight"] = shard(args["student_weight"]).full_tensor()
    torch.testing.assert_close(fused_reverse_kl(**args, backend="torch"), expected, rtol=0, atol=0)


def test_import_does_not_load_torch_distributed_tensor():
    """The check costs no import: torch.distributed.tensor takes ~0.5 s and may be absent."""
    code = "import sys, opd_kernels; print('torch.distributed.tensor' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
