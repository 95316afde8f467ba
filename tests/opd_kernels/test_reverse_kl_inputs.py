"""Bad input raises an error that names the argument; finite differences agree with autograd."""

import pytest
import torch
from helpers import make_rkl_inputs

from opd_kernels import FusedReverseKL, fused_reverse_kl


def _inputs():
    return make_rkl_inputs((2, 3), 50, 8, 12, requires_grad=False)


@pytest.mark.parametrize(
    "mutate,error,match",
    [
        (lambda a: a.update(teacher_hidden=torch.randn(2, 4, 12)), ValueError, "leading"),
        (lambda a: a.update(student_weight=torch.randn(50, 9)), ValueError, "student_hidden has hidden size 8"),
        (lambda a: a.update(teacher_weight=torch.randn(50, 11)), ValueError, "teacher_weight"),
        (lambda a: a.update(teacher_weight=torch.randn(49, 12)), ValueError, "fewer than the student's vocabulary"),
        (lambda a: a.update(student_weight=torch.randn(2, 50, 8)), ValueError, "student_weight must be 2-D"),
        (lambda a: a.update(mask=torch.ones(2, 4, dtype=torch.bool)), ValueError, "mask must have the leading shape"),
        (lambda a: a.update(mask=torch.ones(2, 3)), ValueError, "mask must be a bool"),
        (lambda a: a.update(reduction="batchmean"), ValueError, "reduction"),
        (lambda a: a.update(backend="cuda"), ValueError, "backend"),
        (lambda a: a.update(schedule="tiled"), ValueError, "schedule"),
        (lambda a: a.update(temperature=0.0), ValueError, "temperature"),
        (lambda a: a.update(temperature=-1.0), ValueError, "temperature"),
        (lambda a: a.update(temperature=float("nan")), ValueError, "temperature"),
        (lambda a: a.update(chunk_size=0), ValueError, "chunk_size"),
        (
            lambda a: a.update(student_hidden=torch.ones(2, 3, 8, dtype=torch.long)),
            ValueError,
            "student_hidden must be a floating",
        ),
        (
            lambda a: a.update(teacher_weight=torch.ones(50, 12, dtype=torch.int32)),
            ValueError,
            "teacher_weight must be a floating",
        ),
        (lambda a: a.update(student_weight=torch.randn(50, 8, dtype=torch.float64)), ValueError, "share a dtype"),
        (lambda a: a.update(student_hidden=[[0.0] * 8]), TypeError, "student_hidden must be a torch.Tensor"),
    ],
)
def test_bad_input_names_the_argument(mutate, error, match):
    h_s, W_s, h_t, W_t = _inputs()
    args = dict(student_hidden=h_s, student_weight=W_s, teacher_hidden=h_t, teacher_weight=W_t)
    mutate(args)
    kwargs = {
        k: args.pop(k) for k in ("mask", "reduction", "backend", "schedule", "temperature", "chunk_size") if k in args
    }
    with pytest.raises(error, match=match):
        fused_reverse_kl(
            args["student_hidden"], args["student_weight"], args["teacher_hidden"], args["teacher_weight"], **kwargs
        )


def test_triton_backend_rejects_float64():
    h_s, W_s, h_t, W_t = make_rkl_inputs(4, 50, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="float64"):
        fused_reverse_kl(h_s, W_s, h_t, W_t, backend="triton")


def test_module_validates_at_construction():
    with pytest.raises(ValueError, match="reduction"):
        FusedReverseKL(reduction="avg")
    with pytest.raises(ValueError, match="temperature"):
        FusedReverseKL(temperature=0)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_finite_differences_float64(reduction):
    h_s, W_s, h_t, W_t = make_rkl_inputs((2, 3), 23, 5, 7, dtype=torch.float64)
    mask = torch.tensor([[True, False, True], [True, True, False]])

    def loss(hs, ws):
        return fused_reverse_kl(
            hs, ws, h_t, W_t, mask=mask, temperature=0.9, reduction=reduction, backend="torch", chunk_size=4
        )

    assert torch.autograd.gradcheck(loss, (h_s, W_s), eps=1e-6, atol=1e-7, rtol=1e-5)
