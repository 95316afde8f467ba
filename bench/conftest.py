"""``pytest bench/``: kernel speed, memory and accuracy against naive PyTorch, Liger-Kernel and CCE.

    pytest bench/                         # full run: grid "reference" on CUDA, "cpu" elsewhere
    pytest bench/ --benchmark-disable     # smoke: grid "smoke", one call per case, results to a temp dir
    pytest bench/ --bench-shapes reference-full --bench-ops fused_reverse_kl-full \
        --bench-providers ours-triton-chunked,naive

Results (one set per device and day) go to bench/results/<device>-<date>.{json,csv,md,png};
a later run on the same device, day, grid and dtype replaces the rows it re-measured and keeps
the others, so a large grid can be run piece by piece (e.g. one --bench-ops at a time).
``--benchmark-disable`` (CI's smoke run) writes the same files to a fresh temporary
directory instead, so one-call timings never overwrite measured results; pass
``--bench-results-dir`` to put them elsewhere.
"""

from __future__ import annotations

import importlib.metadata
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import pytest
import torch

from bench import report
from bench.measure import DeviceInfo
from bench.providers import KERNELS, OP_MODES, PROVIDER_NAMES, op_modes_for, providers_for
from bench.runner import DTYPES, BenchContext, Case
from bench.shapes import GRID_CHOICES, resolve_grid

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_RESULTS_DIR = BENCH_DIR / "results"

CONTEXT = pytest.StashKey[BenchContext]()
WRITTEN = pytest.StashKey[tuple]()


def pytest_addoption(parser):
    group = parser.getgroup("opd-bench", "opd_kernels benchmarks (bench/)")
    group.addoption(
        "--bench-shapes",
        default="auto",
        choices=GRID_CHOICES,
        help="shape grid (bench/shapes.py): auto = smoke with --benchmark-disable, else reference on "
        "CUDA and cpu elsewhere",
    )
    group.addoption(
        "--bench-tokens", default=None, metavar="N,N,...", help="token counts replacing the grid's, e.g. 4096,16384"
    )
    group.addoption(
        "--bench-ops",
        default=None,
        metavar="OP,...",
        help=f"kernels or kernel-mode keys to run, from {', '.join((*KERNELS, *OP_MODES))}",
    )
    group.addoption(
        "--bench-providers",
        default=None,
        metavar="NAME,...",
        help=f"providers to run, from {', '.join(PROVIDER_NAMES)}",
    )
    group.addoption("--bench-dtype", default="bf16", choices=tuple(DTYPES), help="input dtype (default bf16)")
    group.addoption(
        "--bench-results-dir",
        default=None,
        metavar="DIR",
        help="where the results go (default bench/results, or a temp dir with --benchmark-disable)",
    )
    group.addoption(
        "--bench-peak-tflops",
        type=float,
        default=None,
        help="bf16 dense peak of this device, for a GPU missing from bench/measure.py's table",
    )
    group.addoption(
        "--bench-seconds",
        type=float,
        default=1.0,
        help="time to spend timing one case: rounds = this / one call, within [5, 100]",
    )


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def pytest_configure(config):
    import torch._dynamo

    # Liger-Kernel's import touches torch.jit.script_method; the warning is theirs, not ours.
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

    # naive-compiled compiles one graph per shape and grad mode; past the default limit of 8
    # dynamo would quietly run eager code, which would then be timed as "compiled".
    torch._dynamo.config.recompile_limit = 128
    torch._dynamo.config.fail_on_recompile_limit_hit = True

    for option, known in (("--bench-ops", (*KERNELS, *OP_MODES)), ("--bench-providers", PROVIDER_NAMES)):
        unknown = sorted(set(_split(config.getoption(option)) or ()) - set(known))
        if unknown:
            raise pytest.UsageError(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    tokens = _split(config.getoption("--bench-tokens"))
    if tokens and not all(n.isdigit() and int(n) > 0 for n in tokens):
        raise pytest.UsageError(f"--bench-tokens takes positive integers separated by commas, got {tokens}")


def _benchmark_disabled(config) -> bool:
    session = getattr(config, "_benchmarksession", None)
    if session is not None:
        return bool(session.disabled)
    return bool(config.getoption("benchmark_disable", False))


def bench_context_of(config) -> BenchContext:
    if CONTEXT not in config.stash:
        device = DeviceInfo.detect(config.getoption("--bench-peak-tflops"))
        disabled = _benchmark_disabled(config)
        tokens = _split(config.getoption("--bench-tokens"))
        grid = resolve_grid(
            config.getoption("--bench-shapes"),
            cuda=device.device.type == "cuda",
            benchmark_disabled=disabled,
            token_counts=tuple(int(n) for n in tokens) if tokens else None,
        )
        config.stash[CONTEXT] = BenchContext(
            device=device,
            grid=grid,
            dtype=DTYPES[config.getoption("--bench-dtype")],
            benchmark_disabled=disabled,
            target_seconds=config.getoption("--bench-seconds"),
            min_rounds=5,
            max_rounds=100,
        )
    return config.stash[CONTEXT]


@pytest.fixture
def bench_context(request) -> BenchContext:
    return bench_context_of(request.config)


def _selected(config, kernel: str):
    wanted_ops = _split(config.getoption("--bench-ops"))
    wanted_providers = _split(config.getoption("--bench-providers"))
    ops = [op for op in op_modes_for(kernel) if not wanted_ops or op.kernel in wanted_ops or op.key in wanted_ops]
    providers = [p for p in providers_for(kernel) if not wanted_providers or p.name in wanted_providers]
    return ops, providers


def pytest_generate_tests(metafunc):
    kernel = getattr(metafunc.module, "KERNEL", None)
    if kernel is None:
        return
    ctx = bench_context_of(metafunc.config)
    ops, providers = _selected(metafunc.config, kernel)
    for name, shapes in (("speed_case", ctx.grid.shapes()), ("accuracy_case", [ctx.grid.accuracy_shape])):
        if name not in metafunc.fixturenames:
            continue
        cases = [
            pytest.param(Case(op, p, shape), id=Case(op, p, shape).id)
            for op in ops
            for p in providers
            for shape in shapes
        ]
        metafunc.parametrize(
            name,
            cases
            or [
                pytest.param(
                    None,
                    id="not-selected",
                    marks=pytest.mark.skip(reason="no case of this kernel matches --bench-ops / --bench-providers"),
                )
            ],
        )


def pytest_report_header(config):
    ctx = bench_context_of(config)
    where = config.getoption("--bench-results-dir") or (
        "a temporary directory (--benchmark-disable)" if ctx.benchmark_disabled else str(DEFAULT_RESULTS_DIR)
    )
    return [
        f"opd bench: {ctx.device.name}; grid {ctx.grid.name} ({ctx.grid.description}); "
        f"{str(ctx.dtype).removeprefix('torch.')}; results -> {where}"
    ]


# --------------------------------------------------------------------------------------------
# Writing the results


def _package_versions() -> dict:
    versions = {"torch": torch.__version__}
    for dist in ("triton", "liger-kernel", "cut-cross-entropy", "pytest-benchmark"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def _meta(config, ctx: BenchContext, now: datetime) -> dict:
    import opd_kernels

    device = ctx.device
    acc = ctx.grid.accuracy_shape
    return {
        "date": now.strftime("%Y-%m-%d"),
        "timestamp": now.strftime("%Y-%m-%d %H:%M:%S"),
        "device_name": device.name,
        "device_slug": device.slug,
        "peak_tflops": device.peak_tflops,
        "grid": ctx.grid.name,
        "dtype": str(ctx.dtype).removeprefix("torch."),
        "temperature": ctx.grid.temperature,
        "topk": ctx.grid.topk,
        "accuracy_shape": {
            "tokens": acc.tokens,
            "vocab": acc.vocab,
            "student_dim": acc.student_dim,
            "teacher_dim": acc.teacher_dim,
        },
        "timing_mode": (
            "smoke: one call per case (--benchmark-disable)"
            if ctx.benchmark_disabled
            else f"pytest-benchmark, {ctx.min_rounds} to {ctx.max_rounds} rounds filling "
            f"~{ctx.target_seconds:g} s after a warm-up call"
        ),
        "memory_method": (
            "CUDA allocator peak minus what was allocated before the call"
            if device.device.type == "cuda"
            else "CPU allocator timeline from torch.profiler(profile_memory=True)"
        ),
        "command": " ".join(["pytest", *config.invocation_params.args]),
        "version": f"{opd_kernels.__version__}+g{report.git_commit(('opd_kernels',))}",
        "packages": _package_versions(),
        "python": sys.version.split()[0],
        "torch_threads": torch.get_num_threads(),
    }


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    ctx = config.stash.get(CONTEXT, None)
    if ctx is None or not ctx.rows:
        return
    now = datetime.now()
    meta = _meta(config, ctx, now)
    option = config.getoption("--bench-results-dir")
    if option:
        out_dir = Path(option)
    elif ctx.benchmark_disabled:
        out_dir = Path(tempfile.mkdtemp(prefix="opd-bench-smoke-"))
    else:
        out_dir = DEFAULT_RESULTS_DIR
    stem = f"{ctx.device.slug}-{meta['date']}"
    rows = ctx.rows
    meta["runs"] = [{"timestamp": meta["timestamp"], "command": meta["command"], "version": meta["version"]}]
    previous = out_dir / f"{stem}.json"
    if previous.exists():
        rows, meta = report.merge_runs(*report.read_json(previous), rows, meta)
    written, problems = report.write_all(out_dir, stem, rows, meta)
    config.stash[WRITTEN] = (written, problems, report.markdown(rows, meta))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if WRITTEN not in config.stash:
        return
    written, problems, table = config.stash[WRITTEN]
    terminalreporter.section("opd bench results")
    terminalreporter.write_line(table)
    for path in written:
        terminalreporter.write_line(f"wrote {path}")
    for problem in problems:
        terminalreporter.write_line(problem)
