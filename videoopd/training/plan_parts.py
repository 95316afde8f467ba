"""A memory plan's result: the parts one process holds, the phases that hold each, the peak and its verdict
(:class:`MemoryPlan`, built by :func:`videoopd.training.memory_plan.plan_memory`)."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__: list[str] = []  # nothing here is promised: docs/api.md


PHASES = ("rollout", "teacher", "student", "optimizer")
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Part:
    """``bytes`` on one process, held during ``phases`` (all four: for the whole run)."""

    name: str
    bytes: float
    phases: tuple[str, ...]
    note: str = ""


@dataclasses.dataclass
class MemoryPlan:
    """The plan of one process: its parts, the peak phase, and whether it fits."""

    parts: list[Part]
    gpu_memory_bytes: float
    headroom: float
    settings: dict[str, Any]
    advice: list[str] = dataclasses.field(default_factory=list)

    def phase_bytes(self, phase: str) -> float:
        return sum(p.bytes for p in self.parts if phase in p.phases)

    @property
    def peak_phase(self) -> str:
        return max(PHASES, key=self.phase_bytes)

    @property
    def peak_bytes(self) -> float:
        return self.phase_bytes(self.peak_phase)

    @property
    def usable_bytes(self) -> float:
        return self.gpu_memory_bytes * (1 - self.headroom)

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.usable_bytes

    def table(self) -> str:
        """A Markdown table: each part's GiB and the phases that hold it, then each phase's total."""
        rows = ["| part | GiB | held during | how |", "|---|---|---|---|"]
        for p in self.parts:
            held = "whole run" if set(p.phases) == set(PHASES) else ", ".join(p.phases)
            rows.append(f"| {p.name} | {p.bytes / GIB:,.2f} | {held} | {p.note} |")
        totals = ", ".join(f"{ph} {self.phase_bytes(ph) / GIB:,.2f}" for ph in PHASES)
        verdict = "fits" if self.fits else "does NOT fit"
        return "\n".join(rows) + (
            f"\n\nPer phase (GiB): {totals}. Peak {self.peak_bytes / GIB:,.2f} GiB ({self.peak_phase}) against "
            f"{self.usable_bytes / GIB:,.1f} GiB usable ({self.gpu_memory_bytes / GIB:,.0f} GiB less "
            f"{100 * self.headroom:.0f}% headroom): {verdict}."
        )

    def summary(self) -> str:
        lines = [self.table()]
        if self.advice:
            lines += ["", "To fit:"] + [f"- {a}" for a in self.advice]
        return "\n".join(lines)
