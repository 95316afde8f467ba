"""Ahead-of-time compilation of every shipped Triton kernel configuration, no GPU needed.

Triton lowers a kernel to a cubin for any target capability on a machine without a GPU;
its bundled ``cuobjdump`` then reads registers, stack/local memory (spills), shared
memory and the SASS, where HMMA (sm_80) or HGMMA (sm_90) proves tensor-core use.
Must run in a process without TRITON_INTERPRET (``opd_kernels.report`` takes care of it).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field

import torch

TARGETS = (80, 90)
_TYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def triton_type(dtype: torch.dtype) -> str:
    return _TYPE_NAMES[dtype]


@dataclass(frozen=True)
class KernelSpec:
    """One shipped (kernel, dtype, constexpr) configuration as launched at run time."""

    name: str
    kernel: object  # triton.runtime.JITFunction
    signature: dict[str, str]  # argument -> "*bf16" | "i32" | "fp32" | "constexpr"
    constexprs: dict[str, object]
    num_warps: int
    num_stages: int
    divisible_by_16: tuple[str, ...] = ()  # pointer/int args the launcher sees as 16-aligned
    expects_tensor_cores: bool = False  # tl.dot on 16-bit tiles: no HMMA/HGMMA means a slow kernel


@dataclass
class CompileResult:
    name: str
    target: str
    ok: bool
    error: str = ""
    registers: int = 0
    stack_bytes: int = 0
    local_bytes: int = 0
    shared_bytes: int = 0
    tensor_core_instructions: int = 0
    tensor_core_kind: str = ""
    mma_loop_instructions: int = 0
    total_instructions: int = 0
    num_warps: int = 0
    num_stages: int = 0
    constexprs: dict = field(default_factory=dict)
    expects_tensor_cores: bool = False

    @property
    def spills(self) -> bool:
        return self.stack_bytes > 0 or self.local_bytes > 0

    def as_dict(self) -> dict:
        out = asdict(self)
        out["spills"] = self.spills
        return out


def _cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


_RES_RE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
_INSTR_RE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);")
_BRANCH_RE = re.compile(r"\bBRA\s+(?:\S+,\s*)?0x([0-9a-f]+)")


def _opcode(instruction: str) -> str:
    tokens = instruction.split()
    return tokens[1] if tokens and tokens[0].startswith("@") and len(tokens) > 1 else (tokens[0] if tokens else "")


def _sass_stats(sass: str, tensor_op: str) -> tuple[int, int, int]:
    """(tensor-core instruction count, instructions in the innermost loop holding one, total)."""
    addresses, texts = [], []
    for line in sass.splitlines():
        instr = _INSTR_RE.search(line)
        if instr:
            addresses.append(int(instr.group(1), 16))
            texts.append(instr.group(2).strip())
    mma = [addr for addr, text in zip(addresses, texts) if _opcode(text).startswith(tensor_op)]
    loops = []  # (first address, last address) of every backward branch
    for addr, text in zip(addresses, texts):
        branch = _BRANCH_RE.search(text)
        if branch and int(branch.group(1), 16) <= addr:
            loops.append((int(branch.group(1), 16), addr))
    mma_loops = [sum(lo <= a <= hi for a in addresses) for lo, hi in loops if any(lo <= m <= hi for m in mma)]
    return len(mma), (min(mma_loops) if mma_loops else 0), len(texts)


def compile_spec(spec: KernelSpec, capability: int) -> CompileResult:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    result = CompileResult(
        spec.name,
        f"sm_{capability}",
        ok=False,
        num_warps=spec.num_warps,
        num_stages=spec.num_stages,
        constexprs=dict(spec.constexprs),
        expects_tensor_cores=spec.expects_tensor_cores,
    )
    names = list(spec.signature)
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in spec.divisible_by_16}
    try:
        src = ASTSource(fn=spec.kernel, signature=spec.signature, constexprs=spec.constexprs, attrs=attrs)
        compiled = triton.compile(
            src,
            target=GPUTarget("cuda", capability, 32),
            options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
        )
    except Exception as exc:  # reported per kernel; the caller decides to fail
        result.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        return result
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run([_cuobjdump(), "-res-usage", path], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([_cuobjdump(), "-sass", path], capture_output=True, text=True, check=True).stdout
    match = _RES_RE.search(usage)
    if match is None:
        result.error = f"could not read cuobjdump -res-usage output: {usage[:200]!r}"
        return result
    result.registers, result.stack_bytes, result.shared_bytes, result.local_bytes = map(int, match.groups())
    # Triton allocates dynamic shared memory; the static figure from cuobjdump is not all of it.
    result.shared_bytes = max(result.shared_bytes, int(compiled.metadata.shared))
    tensor_op = "HGMMA" if capability >= 90 else "HMMA"
    mma, loop, total = _sass_stats(sass, tensor_op)
    if capability >= 90 and mma == 0:  # small tiles on Hopper may still lower to HMMA
        mma, loop, total = _sass_stats(sass, "HMMA")
        tensor_op = "HMMA" if mma else tensor_op
    result.tensor_core_instructions, result.mma_loop_instructions, result.total_instructions = mma, loop, total
    result.tensor_core_kind = tensor_op if mma else ""
    result.ok = True
    return result


def compile_all(specs: list[KernelSpec], targets=TARGETS) -> list[CompileResult]:
    return [compile_spec(spec, cap) for spec in specs for cap in targets]
