"""``python -m bench.isolated``: each provider in its own process, time and peak RSS growth side by side.

    python -m bench.isolated --op fused_reverse_kl-full --shape 2048,32000,256,512 --dtype fp32 \\
        --providers naive,ours-torch --repeats 3

``pytest bench/`` times every provider in one process, one after another; this tool gives each
provider fresh processes instead, so that one provider's allocator caches, compiled graphs or
threads cannot flatter or burden the next, and it reads memory the way the operating system sees
it. Per provider and repeat it starts two children (the ``--repeats`` rounds interleave the
providers, so a load change on a shared machine hits all of them alike):

- a *time* child: builds the inputs, makes one warm-up call (compiles, fills caches), then times
  ``--calls`` calls (forward, or forward + backward for "full" ops) and keeps the median;
- a *memory* child, with glibc's ``MALLOC_MMAP_THRESHOLD_`` pinned to 64 KiB so that every
  tensor buffer is returned to the system when freed: the peak RSS growth (``VmHWM`` minus the
  ``VmRSS`` before the call, from /proc/self/status) of the first call, one-time costs such as
  imports and compilation included, and of a later call (the peak reset through
  /proc/self/clear_refs), gradients included in both; plus the torch allocator's peak as
  ``pytest bench/`` measures it (torch.profiler).

Prints one line per provider: the median over repeats of each child's median time, its ratio to
the first provider's, and the memory figures with their ratio to the first provider's steady
peak. ``--json PATH`` writes every figure. Linux only (/proc).

A provider written ``NAME@DIR`` runs with ``opd_kernels`` imported from DIR instead, to compare
revisions in one run: ``git archive REV opd_kernels | tar -x -C DIR`` then
``--providers naive,ours-torch@DIR,ours-torch``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MIB = 2**20
_DTYPES = ("fp32", "bf16", "fp16")


def proc_status(key: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (False where /proc/self/clear_refs is not writable)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child(args) -> dict:
    import torch

    from bench.measure import cpu_peak_bytes
    from bench.providers import OP_MODES, PROVIDERS, make_inputs
    from bench.runner import DTYPES, make_call
    from bench.shapes import Shape

    torch.manual_seed(0)
    op = OP_MODES[args.op]
    provider = next(p for p in PROVIDERS if p.name == args.provider and op.kernel in p.kernels)
    shape = Shape(*args.shape)
    inputs = make_inputs(
        op, shape, dtype=DTYPES[args.dtype], device=torch.device("cpu"), topk=20, temperature=args.temperature
    )
    call, reset = make_call(op, provider, inputs)
    gc.collect()
    import opd_kernels

    result: dict = {"threads": torch.get_num_threads(), "opd_kernels": str(Path(opd_kernels.__file__).parent)}
    if args.child == "memory":
        before = proc_status("VmRSS")
        reset()
        call()
        result["first_call_rss_growth_mib"] = (proc_status("VmHWM") - before) / MIB
        reset()
        gc.collect()
        if reset_peak_rss():
            before = proc_status("VmRSS")
            call()
            result["steady_rss_growth_mib"] = (proc_status("VmHWM") - before) / MIB
        reset()
        gc.collect()
        result["allocator_peak_mib"] = cpu_peak_bytes(call) / MIB
        return result
    reset()
    call()  # warm-up: compiles, fills caches
    seconds = []
    for _ in range(args.calls):
        reset()
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    result["median_ms"] = statistics.median(seconds) * 1e3
    result["all_ms"] = [s * 1e3 for s in seconds]
    return result


def run_json_child(cmd: list[str], kind: str, *, cwd: str | None = None, pythonpath: str | None = None) -> dict:
    """Runs ``cmd`` (a child that prints one JSON line) from the repository, with glibc's mmap
    threshold pinned for a "memory" child; returns its JSON, or {"error": ...}."""
    env = dict(os.environ)
    if kind == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env["PYTHONPATH"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd or repo)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-1:])
        return {"error": f"exit {done.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])


def _run_child(args, provider: str, kind: str) -> dict:
    provider, _, kernels_dir = provider.partition("@")
    cmd = [
        sys.executable,
        "-m",
        "bench.isolated",
        "--child",
        kind,
        "--provider",
        provider,
        "--op",
        args.op,
        "--shape",
        ",".join(map(str, args.shape)),
        "--dtype",
        args.dtype,
        "--calls",
        str(args.calls),
        "--temperature",
        str(args.temperature),
    ]
    if kernels_dir:
        # python -m puts the working directory first on sys.path: start in DIR, not the repo.
        kernels_dir = str(Path(kernels_dir).resolve())
        return run_json_child(cmd, kind, cwd=kernels_dir, pythonpath=kernels_dir)
    return run_json_child(cmd, kind)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.isolated", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--op",
        default="fused_reverse_kl-full",
        help="op mode key from bench/providers.py (fused_reverse_kl-full, token_logprobs-full, ...)",
    )
    parser.add_argument("--shape", default="2048,32000,256,512", help="N,V,D_s,D_t")
    parser.add_argument("--dtype", default="fp32", choices=_DTYPES)
    parser.add_argument(
        "--providers", default="naive,ours-torch", help="comma-separated; the first is the baseline of the ratios"
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds of fresh processes per provider")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per time child, after one warm-up call")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--json", default=None, help="also write every figure to this file")
    parser.add_argument("--child", default=None, choices=("time", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--provider", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.shape = tuple(int(x) for x in args.shape.split(","))
    if len(args.shape) != 4:
        parser.error("--shape takes N,V,D_s,D_t")
    if args.child:
        print(json.dumps(_child(args)))
        return 0

    from bench.providers import OP_MODES, PROVIDERS

    if args.op not in OP_MODES:
        parser.error(f"--op must be one of {', '.join(OP_MODES)}")
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    kernel = OP_MODES[args.op].kernel
    known = {p.name for p in PROVIDERS if kernel in p.kernels}
    unknown = [p for p in providers if p.partition("@")[0] not in known]
    if unknown:
        parser.error(f"providers {unknown} do not run {kernel}; choose from {sorted(known)}")

    runs: dict[str, list[dict]] = {p: [] for p in providers}
    for repeat in range(args.repeats):
        for provider in providers:
            timing = _run_child(args, provider, "time")
            memory = _run_child(args, provider, "memory")
            runs[provider].append({"time": timing, "memory": memory})
            print(
                f"# repeat {repeat + 1}/{args.repeats} {provider}: "
                f"{timing.get('error') or format(timing['median_ms'], '.1f') + ' ms'} "
                f"(opd_kernels from {timing.get('opd_kernels', '?')})",
                file=sys.stderr,
                flush=True,
            )

    summary = {}
    for provider in providers:
        times = [r["time"]["median_ms"] for r in runs[provider] if "median_ms" in r["time"]]
        mems = [r["memory"] for r in runs[provider] if "error" not in r["memory"]]
        errors = [r[k]["error"] for r in runs[provider] for k in ("time", "memory") if "error" in r[k]]

        def med(key, mems=mems):
            values = [m[key] for m in mems if key in m]
            return statistics.median(values) if values else None

        summary[provider] = {
            "median_ms": statistics.median(times) if times else None,
            "repeat_ms": times,
            "first_call_rss_growth_mib": med("first_call_rss_growth_mib"),
            "steady_rss_growth_mib": med("steady_rss_growth_mib"),
            "allocator_peak_mib": med("allocator_peak_mib"),
            "errors": errors,
        }
    base = summary[providers[0]]
    print(
        f"{args.op} N,V,D_s,D_t={','.join(map(str, args.shape))} {args.dtype}, {args.repeats} repeat(s) x "
        f"{args.calls} call(s), each provider in its own processes"
    )
    print(
        f"{'provider':26s} {'median ms':>10s} {'x base':>7s} {'1st-call RSS+':>14s} {'steady RSS+':>12s} "
        f"{'x base':>7s} {'alloc peak':>11s}  repeats (ms)"
    )
    for provider in providers:
        s = summary[provider]
        ratio_t = s["median_ms"] / base["median_ms"] if s["median_ms"] and base["median_ms"] else None
        ratio_m = (
            s["steady_rss_growth_mib"] / base["steady_rss_growth_mib"]
            if s["steady_rss_growth_mib"] is not None and base["steady_rss_growth_mib"]
            else None
        )
        print(
            f"{provider:26s} {_fmt(s['median_ms'], '10.1f')} {_fmt(ratio_t, '7.2f')} "
            f"{_fmt(s['first_call_rss_growth_mib'], '10.1f')} MiB {_fmt(s['steady_rss_growth_mib'], '8.1f')} MiB "
            f"{_fmt(ratio_m, '7.3f')} {_fmt(s['allocator_peak_mib'], '7.1f')} MiB  "
            f"{', '.join(format(t, '.0f') for t in s['repeat_ms'])}"
            + (f"  errors: {s['errors'][0]}" if s["errors"] else "")
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "op": args.op,
                    "shape": args.shape,
                    "dtype": args.dtype,
                    "repeats": args.repeats,
                    "calls": args.calls,
                    "summary": summary,
                    "runs": runs,
                },
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
