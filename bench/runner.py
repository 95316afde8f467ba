"""The two kinds of benchmark case, shared by the bench/test_*.py files.

- speed: one (op mode, provider, shape): warm-up call (compiles), peak extra memory of one
  call, then pytest-benchmark rounds. Checks the output (and gradients) are finite.
- accuracy: one (op mode, provider) at the grid's accuracy shape against float64; for our
  own providers it also asserts the error is within what fp32 accumulation allows.

Every case leaves one Row. A provider that cannot run here, fails or runs out of memory is a
row saying so and a skipped test, except our own, whose failure fails the test.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime

import pytest
import torch

from .measure import (
    DeviceInfo,
    free_memory,
    is_out_of_memory,
    max_abs_error,
    max_relative_error,
    peak_extra_bytes,
    rounds_for,
    synchronize,
    time_once,
    timing_from_seconds,
)
from .providers import OpMode, Provider, make_inputs, objective, reference_output
from .report import MB, Row
from .shapes import Grid, Shape

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# What our own providers must meet against float64 (fp32 accumulation throughout; gradients
# come back in the input dtype, so a 16-bit dtype rounds them to about 2^-8 relative).
OURS_MAX_OUTPUT_ERROR = 1e-3
OURS_MAX_GRAD_ERROR = {torch.float32: 1e-4, torch.bfloat16: 1.6e-2, torch.float16: 4e-3}


@dataclass
class BenchContext:
    device: DeviceInfo
    grid: Grid
    dtype: torch.dtype
    benchmark_disabled: bool
    target_seconds: float
    min_rounds: int
    max_rounds: int
    rows: list[Row] = field(default_factory=list)

    def record(self, row: Row) -> Row:
        row.timestamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        self.rows.append(row)
        return row


@dataclass(frozen=True)
class Case:
    op: OpMode
    provider: Provider
    shape: Shape

    @property
    def id(self) -> str:
        return f"{self.op.mode}-{self.provider.name}-{self.shape.label()}"


def _row(kind: str, case: Case, ctx: BenchContext) -> Row:
    op, shape = case.op, case.shape
    return Row(
        kind=kind,
        kernel=op.kernel,
        mode=op.mode,
        provider=case.provider.name,
        family=case.provider.family,
        tokens=shape.tokens,
        vocab=shape.vocab,
        student_dim=shape.student_dim,
        teacher_dim=shape.teacher_dim,
        hidden_dim=None if op.side == "both" else op.hidden_dim(shape),
        topk=ctx.grid.topk if op.kernel == "topk_logprobs" else None,
        dtype=str(ctx.dtype).removeprefix("torch."),
        temperature=ctx.grid.temperature,
    )


class NonFiniteOutput(RuntimeError):
    pass


def _output_tensors(op: OpMode, output) -> list[torch.Tensor]:
    return [output[0]] if op.kernel == "topk_logprobs" else [output]


def _check_finite(op: OpMode, inputs: dict, output) -> None:
    for t in _output_tensors(op, output):
        if not torch.isfinite(t).all():
            raise NonFiniteOutput("non-finite output")
    for name in inputs["grad_leaves"]:
        grad = inputs[name].grad
        if grad is None:
            raise NonFiniteOutput(f"no gradient reached {name}")
        if not torch.isfinite(grad).all():
            raise NonFiniteOutput(f"non-finite gradient of {name}")


def make_call(op: OpMode, provider: Provider, inputs: dict):
    """(call, reset): call runs the op once (forward, or forward + backward) and returns its
    output; reset clears the gradients a previous call accumulated (not timed)."""

    def call():
        with provider.environment():
            if op.needs_grad:
                output = provider.compute(op, inputs)
                objective(op, inputs, output).backward()
                return output
            with torch.no_grad():
                return provider.compute(op, inputs)

    def reset():
        for name in inputs["grad_leaves"]:
            inputs[name].grad = None

    return call, reset


def _failure(error: BaseException) -> tuple[str, str]:
    """(row status, traceback text). The traceback's frames are cleared: they hold the case's
    tensors (gigabytes on a GPU after an out-of-memory) and would outlive the test."""
    if is_out_of_memory(error):
        status = f"OOM ({type(error).__name__})"
    else:
        status = f"failed ({type(error).__name__}: {' '.join(str(error).split())[:300]})"
    text = "".join(traceback.format_exception(error))
    traceback.clear_frames(error.__traceback__)
    return status, text


def _give_up(case: Case, ctx: BenchContext, row: Row, failure: tuple[str, str]):
    """Records the failed case; our own providers fail the test, the others skip it.
    Called outside the except block so that no exception (and no frame) is chained."""
    row.status, text = failure
    ctx.record(row)
    free_memory(ctx.device.device)
    if case.provider.family == "ours":
        pytest.fail(f"{case.provider.name} {case.op.key} {case.shape.label()}: {row.status}\n{text}", pytrace=False)
    pytest.skip(row.status)


def _skip_if_unavailable(case: Case, ctx: BenchContext, row: Row) -> None:
    reason = case.provider.unavailable(case.op, ctx.device.device)
    if reason:
        row.status = reason
        ctx.record(row)
        pytest.skip(reason)


def run_speed_case(case: Case, ctx: BenchContext, benchmark) -> Row:
    row = _row("speed", case, ctx)
    _skip_if_unavailable(case, ctx, row)
    device = ctx.device.device
    benchmark.group = f"{case.op.key} {case.shape.label()}"
    failure = None
    try:
        inputs = make_inputs(
            case.op, case.shape, dtype=ctx.dtype, device=device, topk=ctx.grid.topk, temperature=ctx.grid.temperature
        )
        call, reset = make_call(case.op, case.provider, inputs)
        reset()
        _check_finite(case.op, inputs, call())  # also the warm-up: compiles, autotunes, fills caches
        reset()
        probe_seconds = time_once(call, device)
        reset()
        peak_bytes = peak_extra_bytes(call, device)
        rounds = (
            1
            if ctx.benchmark_disabled
            else rounds_for(
                probe_seconds, target_seconds=ctx.target_seconds, min_rounds=ctx.min_rounds, max_rounds=ctx.max_rounds
            )
        )
        own_seconds = []

        def timed_call():
            start = time.perf_counter()
            call()
            synchronize(device)
            own_seconds.append(time.perf_counter() - start)

        benchmark.pedantic(timed_call, setup=reset, rounds=rounds, warmup_rounds=0, iterations=1)
    except Exception as error:  # torch.OutOfMemoryError included
        failure = _failure(error)
    if failure is not None:
        inputs = call = reset = None
        _give_up(case, ctx, row, failure)
    # pytest-benchmark's own durations when it ran; with --benchmark-disable it runs the call
    # once and keeps no statistics, so the one duration is ours.
    stats = getattr(benchmark, "stats", None)
    durations = list(stats.stats.data) if stats is not None else own_seconds
    timing = timing_from_seconds(durations)
    flops = case.op.flops(case.shape)
    row.median_ms, row.p20_ms, row.p80_ms, row.rounds = timing.median_ms, timing.p20_ms, timing.p80_ms, timing.rounds
    row.flops = flops
    row.tflops = flops / (timing.median_ms * 1e9)
    if ctx.device.peak_tflops:
        row.peak_fraction = row.tflops / ctx.device.peak_tflops
    row.peak_extra_mb = peak_bytes / MB
    benchmark.extra_info.update(peak_extra_mb=row.peak_extra_mb, tflops=row.tflops, flops=flops)
    inputs = call = reset = None
    free_memory(device)
    return ctx.record(row)


def run_accuracy_case(case: Case, ctx: BenchContext) -> Row:
    row = _row("accuracy", case, ctx)
    if case.provider.timing_only:
        row.status = f"skipped: {case.provider.name} times matmuls only, it computes no output to judge"
        ctx.record(row)
        pytest.skip(row.status)
    _skip_if_unavailable(case, ctx, row)
    op = case.op
    failure = None
    try:
        inputs = make_inputs(
            op,
            case.shape,
            dtype=ctx.dtype,
            device=ctx.device.device,
            topk=ctx.grid.topk,
            temperature=ctx.grid.temperature,
        )
        leaves = [inputs[name] for name in inputs["grad_leaves"]]
        if op.needs_grad:
            output = case.provider.compute(op, inputs)
            grads = torch.autograd.grad(objective(op, inputs, output), leaves)
        else:
            with torch.no_grad():
                output = case.provider.compute(op, inputs)
        _check_finite(op, {"grad_leaves": ()}, output)
    except Exception as error:  # torch.OutOfMemoryError included
        failure = _failure(error)
    if failure is not None:
        inputs = leaves = output = None
        _give_up(case, ctx, row, failure)

    reference, reference_leaves = reference_output(op, inputs, case.provider.quantity)
    index_error = None
    if op.kernel == "topk_logprobs":
        values, indices = output
        ref_values, _, ref_log_probs = reference
        # Providers may order ties differently: compare sorted values, and judge the indices by
        # the float64 log-prob of the tokens they picked.
        row.max_abs_error = max_abs_error(values.sort(dim=-1, descending=True).values, ref_values)
        picked = ref_log_probs.gather(-1, indices.long()).sort(dim=-1, descending=True).values
        index_error = max_abs_error(picked, ref_values)
    else:
        row.max_abs_error = max_abs_error(output, reference)
    if op.needs_grad:
        ref_grads = torch.autograd.grad(
            objective(op, inputs, reference), [reference_leaves[name] for name in inputs["grad_leaves"]]
        )
        row.grad_max_rel_error = max(max_relative_error(g, g64) for g, g64 in zip(grads, ref_grads))
    ctx.record(row)
    free_memory(ctx.device.device)

    if case.provider.family == "ours":
        assert row.max_abs_error <= OURS_MAX_OUTPUT_ERROR, (
            f"{case.provider.name} {op.key}: max abs error {row.max_abs_error:.3e} > {OURS_MAX_OUTPUT_ERROR}"
        )
        if index_error is not None:
            assert index_error <= OURS_MAX_OUTPUT_ERROR, (
                f"{case.provider.name} top-k picked tokens whose float64 log-probs are off the true top-k "
                f"by up to {index_error:.3e}"
            )
        if op.needs_grad:
            bound = OURS_MAX_GRAD_ERROR[ctx.dtype]
            assert row.grad_max_rel_error <= bound, (
                f"{case.provider.name} {op.key}: gradient error {row.grad_max_rel_error:.3e} > {bound}"
            )
    return row
