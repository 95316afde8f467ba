"""The kernel tests follow OPD_TEST_DEVICE (tests/opd_kernels/conftest.py): on CUDA their ops take CUDA copies."""

import torch
from helpers import make_rkl_inputs

from opd_kernels import fused_reverse_kl, token_logprobs


def test_ops_are_wrapped_only_off_the_plain_cpu_run(test_device):
    assert hasattr(fused_reverse_kl, "__wrapped__") == (test_device != "cpu")
    assert hasattr(token_logprobs, "__wrapped__") == (test_device != "cpu")


def test_wrapped_ops_give_cpu_outputs_and_cpu_gradients():
    h_s, W_s, h_t, W_t = make_rkl_inputs(5, 64, 8, 8)
    loss = fused_reverse_kl(h_s, W_s, h_t, W_t, backend="torch")
    loss.backward()
    assert loss.device.type == "cpu" and h_s.grad.device.type == "cpu" and W_s.grad.device.type == "cpu"
    lp, entropy = token_logprobs(h_s, W_s, torch.zeros(5, dtype=torch.long), return_entropy=True, backend="torch")
    assert lp.device.type == entropy.device.type == "cpu"
