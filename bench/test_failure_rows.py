"""A provider that raises or runs out of memory becomes a row saying so: a skip for the others, a failure for ours."""

import dataclasses
import types

import pytest
import torch

from bench.providers import OP_MODES, Provider
from bench.runner import Case, run_accuracy_case, run_speed_case
from bench.shapes import Shape


class RaisingProvider(Provider):
    def compute(self, op, inputs):
        raise self.error


def _case(family, error):
    provider = RaisingProvider(
        name=f"raising-{family}", family=family, kernels=("fused_reverse_kl",), description="raises"
    )
    object.__setattr__(provider, "error", error)
    return Case(OP_MODES["fused_reverse_kl-full"], provider, Shape(8, 64, 8, 16))


@pytest.fixture
def private_context(bench_context):
    # Rows of these cases must not reach the session's results.
    return dataclasses.replace(bench_context, rows=[])


def test_a_peer_that_runs_out_of_memory_is_an_oom_row_and_a_skip(private_context):
    case = _case("peer", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB"))
    with pytest.raises(pytest.skip.Exception, match="OOM"):
        run_speed_case(case, private_context, types.SimpleNamespace(group=None))
    (row,) = private_context.rows
    assert row.status.startswith("OOM") and row.median_ms is None and row.provider == "raising-peer"


def test_a_failing_peer_is_a_failed_row_with_the_error(private_context):
    case = _case("naive", RuntimeError("inductor: no C++ compiler"))
    with pytest.raises(pytest.skip.Exception):
        run_accuracy_case(case, private_context)
    (row,) = private_context.rows
    assert row.status == "failed (RuntimeError: inductor: no C++ compiler)"


def test_our_own_failure_fails_the_test(private_context):
    case = _case("ours", ValueError("bad tile"))
    with pytest.raises(pytest.fail.Exception, match="bad tile"):
        run_speed_case(case, private_context, types.SimpleNamespace(group=None))
    assert private_context.rows[0].status == "failed (ValueError: bad tile)"
