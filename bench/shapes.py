"""Shape grids: which (N, V, D_s, D_t) each benchmark runs at.

Picked on the command line with ``--bench-shapes``; "auto" is "reference" on CUDA,
"cpu" elsewhere, and "smoke" when pytest-benchmark is disabled (``--benchmark-disable``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

QWEN_VL_VOCAB = 151_936

# Hidden sizes of the Qwen2.5-VL / Qwen3-VL family (DESIGN.md section 5): students 3B / 7B / 8B,
# teachers 8B / 32B / 72B.
REFERENCE_STUDENT_DIMS = (2048, 3584, 4096)
REFERENCE_TEACHER_DIMS = (4096, 5120, 8192)


@dataclass(frozen=True)
class Shape:
    tokens: int  # N, tokens scored in one call
    vocab: int  # V, rows of the LM heads
    student_dim: int  # D_s
    teacher_dim: int  # D_t

    def label(self) -> str:
        return f"N{self.tokens}-V{self.vocab}-Ds{self.student_dim}-Dt{self.teacher_dim}"


@dataclass(frozen=True)
class Grid:
    name: str
    description: str
    token_counts: tuple[int, ...]
    vocab: int
    # (D_s, D_t) pairs; reverse KL uses both, teacher-side ops use D_t, student-side ops D_s.
    model_pairs: tuple[tuple[int, int], ...]
    # Max error against float64 is measured once per provider, at this shape (the float64
    # reference materialises [N, V] logits, so it stays small).
    accuracy_shape: Shape
    topk: int = 20  # vLLM's default cap on returned logprobs, what OPD pipelines ask for
    temperature: float = 1.0
    notes: tuple[str, ...] = field(default=())

    def shapes(self) -> list[Shape]:
        return [Shape(n, self.vocab, d_s, d_t) for d_s, d_t in self.model_pairs for n in self.token_counts]

    def with_token_counts(self, token_counts: tuple[int, ...]) -> Grid:
        return Grid(
            self.name,
            self.description,
            token_counts,
            self.vocab,
            self.model_pairs,
            self.accuracy_shape,
            self.topk,
            self.temperature,
            self.notes,
        )


GRIDS: dict[str, Grid] = {
    "smoke": Grid(
        name="smoke",
        description="one tiny shape per op: checks that every provider still runs (CI)",
        token_counts=(256,),
        vocab=2048,
        model_pairs=((64, 128),),
        accuracy_shape=Shape(256, 2048, 64, 128),
    ),
    "cpu": Grid(
        name="cpu",
        description="small grid for a CPU; the torch providers only give speed figures here",
        token_counts=(256, 512, 1024),
        vocab=16_384,
        model_pairs=((256, 512),),
        accuracy_shape=Shape(256, 8192, 256, 512),
    ),
    "reference": Grid(
        name="reference",
        description="DESIGN.md section 5 shapes, one (D_s, D_t) pair per student size",
        token_counts=(4096, 16_384, 65_536),
        vocab=QWEN_VL_VOCAB,
        model_pairs=tuple(zip(REFERENCE_STUDENT_DIMS, REFERENCE_TEACHER_DIMS)),
        accuracy_shape=Shape(512, QWEN_VL_VOCAB, 2048, 4096),
    ),
    "gpu-check": Grid(
        name="gpu-check",
        description="the one-device-call GPU check (bench/gpu_check.sh): an 8B-class student, a 72B-class teacher",
        token_counts=(4096, 16_384),
        vocab=QWEN_VL_VOCAB,
        model_pairs=((4096, 8192),),
        accuracy_shape=Shape(512, QWEN_VL_VOCAB, 4096, 8192),
    ),
    "reference-full": Grid(
        name="reference-full",
        description="DESIGN.md section 5 shapes, every (D_s, D_t) pair",
        token_counts=(4096, 16_384, 65_536),
        vocab=QWEN_VL_VOCAB,
        model_pairs=tuple((d_s, d_t) for d_s in REFERENCE_STUDENT_DIMS for d_t in REFERENCE_TEACHER_DIMS),
        accuracy_shape=Shape(512, QWEN_VL_VOCAB, 2048, 4096),
    ),
}

GRID_CHOICES = ("auto", *GRIDS)


def resolve_grid(
    name: str, *, cuda: bool, benchmark_disabled: bool, token_counts: tuple[int, ...] | None = None
) -> Grid:
    if name not in GRID_CHOICES:
        raise ValueError(f"--bench-shapes must be one of {GRID_CHOICES}, got {name!r}")
    if name == "auto":
        name = "smoke" if benchmark_disabled else ("reference" if cuda else "cpu")
    grid = GRIDS[name]
    return grid.with_token_counts(token_counts) if token_counts else grid
