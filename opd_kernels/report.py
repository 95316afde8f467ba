"""python -m opd_kernels.report [--json] [--targets 80,90]

Compiles every shipped Triton kernel configuration ahead of time for Ampere (sm_80) and
Hopper (sm_90), no GPU needed, and prints per kernel and target: registers, stack and
local (spill) bytes, shared memory, tensor-core instructions (HMMA / HGMMA) and the
instruction count of the innermost loop that holds them. Exits 1 if any configuration
fails to compile, spills, or (for a kernel built on tl.dot) uses no tensor cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from ._validation import triton_interpreting


def shipped_kernels() -> list:
    """Every shipped Triton configuration (``_aot.KernelSpec``), as the kernel modules list them."""
    from . import logprobs_triton, policy_gradient_triton, reverse_kl_triton

    return [*reverse_kl_triton.kernel_specs(), *logprobs_triton.kernel_specs(), *policy_gradient_triton.kernel_specs()]


def failures(results) -> list[str]:
    problems = []
    for r in results:
        if not r.ok:
            problems.append(f"{r.name} {r.target}: does not compile: {r.error}")
        elif r.spills:
            problems.append(f"{r.name} {r.target}: spills (stack {r.stack_bytes} B, local {r.local_bytes} B)")
        elif r.expects_tensor_cores and not r.tensor_core_instructions:
            problems.append(f"{r.name} {r.target}: no tensor-core instructions")
    return problems


def format_table(results) -> str:
    header = (
        "| kernel | target | warps | stages | regs | spill B | smem B | tensor cores | mma-loop instrs |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for r in results:
        if not r.ok:
            rows.append(f"| {r.name} | {r.target} | {r.num_warps} | {r.num_stages} | FAILED: {r.error} | | | | |")
            continue
        tc = f"{r.tensor_core_kind} x{r.tensor_core_instructions}" if r.tensor_core_instructions else "none"
        rows.append(
            f"| {r.name} | {r.target} | {r.num_warps} | {r.num_stages} | {r.registers} | "
            f"{r.stack_bytes + r.local_bytes} | {r.shared_bytes} | {tc} | {r.mma_loop_instructions or '-'} |"
        )
    return "\n".join([header, *rows])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m opd_kernels.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    parser.add_argument("--targets", default="80,90", help="compute capabilities, comma-separated")
    args = parser.parse_args(argv)
    if triton_interpreting():
        # Under the interpreter triton.jit builds no compilable kernels: run clean.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        cmd = [sys.executable, "-m", "opd_kernels.report", *(argv if argv is not None else sys.argv[1:])]
        return subprocess.run(cmd, env=env).returncode
    from ._aot import compile_all

    results = compile_all(shipped_kernels(), tuple(int(t) for t in args.targets.split(",")))
    problems = failures(results)
    if args.json:
        print(json.dumps({"results": [r.as_dict() for r in results], "problems": problems}, indent=1))
    else:
        print(format_table(results))
        for p in problems:
            print("PROBLEM:", p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
