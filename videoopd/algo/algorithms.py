"""The training algorithms and the defaults that depend only on which one runs: declared here,
below the run (``videoopd.training.post_training``) and its memory plan, which both read them."""

from __future__ import annotations

__all__: list[str] = []  # nothing here is promised: docs/api.md

ALGORITHMS = ("opd", "grpo")


def default_reduction(algo: str) -> str:
    """``--reduction auto``: OPD sums each answer's loss (the paper's), GRPO averages over the
    step's answer tokens (token-level, as TRL's and DAPO's)."""
    return "mean" if algo == "grpo" else "sequence_sum"


def default_num_generations(algo: str) -> int:
    """``--num-generations`` unset: GRPO's group of 8 answers per prompt, OPD's one (the paper's)."""
    return 8 if algo == "grpo" else 1
