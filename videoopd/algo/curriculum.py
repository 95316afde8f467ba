"""TVDF (Teacher-Validated Disagreement Focusing): which pool samples one round trains on.

Each round the pool is scored twice, by the teacher and by the current student (IoU of each
one's answer with the ground-truth span, in [0, 1]). A sample survives when the teacher gets
it right enough (``teacher_iou >= teacher_iou_min``); survivors are ranked by the
disagreement ``delta = teacher_iou - student_iou`` and a selector picks ``k`` of them:

- ``topk`` (the paper's default): the ``k`` largest deltas, largest first. Exactly equal
  deltas are ordered by a seeded random permutation, so no sample wins a tie by its position.
- ``gwds`` (Gaussian-weighted difference sampling): ``k`` draws without replacement, each with
  probability proportional to ``w = exp(-(delta - center)^2 / (2 sigma^2))`` among the samples
  not drawn yet; the result is in draw order. Implemented as Gumbel-top-k on log-weights
  (``key = log w + Gumbel(0, 1)``, the ``k`` largest keys in descending order), which has
  exactly the distribution of successive weighted draws and, working with ``log w``, never
  underflows however far a delta is from ``center``.
- ``random``: ``k`` uniform draws without replacement, in draw order (the ablation baseline).
- ``off``: the whole pool in pool order; neither ``k`` nor the teacher filter applies (the
  no-curriculum baseline), though the round's record still counts what the filter would drop.

Pure functions of their arguments: randomness comes from a private
``numpy.random.Generator(PCG64(seed))``, so results depend on ``seed`` only and no global
random state is read or changed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__: list[str] = []  # nothing here is promised: docs/api.md

SELECTORS = ("topk", "gwds", "random", "off")

# Ten bins of width 0.2 over the whole range of delta: bins [lo, hi), the last one [0.8, 1.0].
DELTA_BIN_EDGES: tuple[float, ...] = (-1.0, -0.8, -0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

IoUValues = Sequence[float] | np.ndarray | torch.Tensor


@dataclass(frozen=True)
class RoundSelection:
    """One round's selection and the counts a round log reports.

    ``indices``: the selected pool indices, in selection order (the ``select`` result).
    ``pool_size``: samples scored; ``dropped_by_teacher``: those with teacher IoU strictly below
    ``teacher_iou_min``; ``survivors``: the rest (``pool_size - dropped_by_teacher``).
    ``requested_k``: the ``k`` asked for; ``short``: True when ``k`` exceeded the survivors, so
    every survivor was taken and the round trains on fewer than ``k`` samples (never True for
    ``off``, which ignores ``k``).
    ``delta_bin_edges``: the 11 edges of :data:`DELTA_BIN_EDGES`; ``delta_histogram``: counts of
    the survivors' deltas per bin (10 counts); ``selected_delta_histogram``: the same for the
    selected samples.
    """

    selector: str
    indices: tuple[int, ...]
    pool_size: int
    dropped_by_teacher: int
    survivors: int
    requested_k: int
    short: bool
    teacher_iou_min: float
    delta_bin_edges: tuple[float, ...]
    delta_histogram: tuple[int, ...]
    selected_delta_histogram: tuple[int, ...]

    @property
    def num_selected(self) -> int:
        return len(self.indices)

    def to_log(self) -> dict[str, Any]:
        """The round's record as a JSON-serialisable dict (plain ints, floats, lists, str).

        The indices themselves are left out (a round may select thousands); ``selected`` is
        their count.
        """
        return {
            "selector": self.selector,
            "pool_size": self.pool_size,
            "dropped_by_teacher": self.dropped_by_teacher,
            "survivors": self.survivors,
            "requested_k": self.requested_k,
            "selected": self.num_selected,
            "short": self.short,
            "teacher_iou_min": self.teacher_iou_min,
            "delta_bin_edges": list(self.delta_bin_edges),
            "delta_histogram": list(self.delta_histogram),
            "selected_delta_histogram": list(self.selected_delta_histogram),
        }


def select(
    teacher_iou: IoUValues,
    student_iou: IoUValues,
    *,
    selector: str,
    k: int,
    teacher_iou_min: float,
    center: float = 0.9,
    sigma: float = 0.2,
    seed: int = 0,
) -> list[int]:
    """The pool indices one TVDF round trains on, in selection order.

    ``teacher_iou``, ``student_iou``: [N] IoUs in [0, 1] of the teacher's and the current
    student's answers for pool samples 0..N-1 (a sequence, numpy array or 1-D tensor).
    ``selector``: one of :data:`SELECTORS` (see the module docstring); ``k``: how many to take
    (all survivors when there are fewer; ignored by ``off``); ``teacher_iou_min``: samples whose
    teacher IoU is strictly below it are dropped; ``center``, ``sigma``: the ``gwds`` Gaussian
    on delta; ``seed``: the only source of randomness (``topk`` tie order, ``gwds`` and
    ``random`` draws).

    Same as ``select_round(...).indices``, as a list. Raises ``ValueError`` (``TypeError`` for
    a wrong type) naming the offending argument and the value seen.
    """
    chosen = select_round(
        teacher_iou,
        student_iou,
        selector=selector,
        k=k,
        teacher_iou_min=teacher_iou_min,
        center=center,
        sigma=sigma,
        seed=seed,
    )
    return list(chosen.indices)


def select_round(
    teacher_iou: IoUValues,
    student_iou: IoUValues,
    *,
    selector: str,
    k: int,
    teacher_iou_min: float,
    center: float = 0.9,
    sigma: float = 0.2,
    seed: int = 0,
) -> RoundSelection:
    """:func:`select`, with the counts and delta histograms a round log reports."""
    if selector not in SELECTORS:
        raise ValueError(f"selector must be one of {SELECTORS}, got {selector!r}")
    teacher = _iou_array(teacher_iou, "teacher_iou")
    student = _iou_array(student_iou, "student_iou")
    if teacher.shape != student.shape:
        raise ValueError(
            f"teacher_iou and student_iou must have the same length, got {teacher.size} and {student.size}"
        )
    _check_int(k, "k", minimum=0)
    _check_int(seed, "seed", minimum=0)
    teacher_iou_min = _real(teacher_iou_min, "teacher_iou_min")
    if not 0.0 <= teacher_iou_min <= 1.0:
        raise ValueError(f"teacher_iou_min must be in [0, 1], got {teacher_iou_min!r}")
    center = _real(center, "center")
    if not math.isfinite(center):
        raise ValueError(f"center must be finite, got {center!r}")
    sigma = _real(sigma, "sigma")
    if not (sigma > 0.0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")

    delta = teacher - student
    survivors = np.flatnonzero(teacher >= teacher_iou_min)
    rng = np.random.Generator(np.random.PCG64(seed))
    if selector == "off":
        indices = np.arange(teacher.size)
    elif selector == "topk":
        tie_order = rng.permutation(survivors.size)
        ranked = np.lexsort((tie_order, -delta[survivors]))
        indices = survivors[ranked[:k]]
    elif selector == "gwds":
        indices = survivors[_gaussian_weighted_draws(delta[survivors], k, center, sigma, rng)]
    else:
        indices = survivors[rng.permutation(survivors.size)[:k]]

    return RoundSelection(
        selector=selector,
        indices=tuple(int(i) for i in indices),
        pool_size=int(teacher.size),
        dropped_by_teacher=int(teacher.size - survivors.size),
        survivors=int(survivors.size),
        requested_k=int(k),
        short=selector != "off" and k > survivors.size,
        teacher_iou_min=teacher_iou_min,
        delta_bin_edges=DELTA_BIN_EDGES,
        delta_histogram=_delta_histogram(delta[survivors]),
        selected_delta_histogram=_delta_histogram(delta[indices]),
    )


def _gaussian_weighted_draws(
    delta: np.ndarray, k: int, center: float, sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """Positions into ``delta`` of ``k`` weighted draws without replacement, in draw order."""
    if delta.size == 0:
        return np.zeros(0, dtype=np.int64)
    distance = np.abs(delta - center)
    nearest = distance.min()
    # Log-weights relative to the largest weight, -(d^2 - d_min^2) / (2 sigma^2), factored so
    # that no square overflows: the nearest sample keeps log-weight 0 even for a sigma so
    # small that every other weight is exactly 0 (the sigma -> 0 limit).
    with np.errstate(over="ignore"):
        log_weight = -0.5 * ((distance - nearest) / sigma) * ((distance + nearest) / sigma)
    log_weight[distance == nearest] = 0.0
    keys = log_weight + rng.gumbel(size=delta.size)
    # Zero-weight samples (key -inf) come only after every positive-weight one; a uniform
    # random order among them avoids favouring low pool indices.
    tie_order = rng.permutation(delta.size)
    return np.lexsort((tie_order, -keys))[:k]


def _delta_histogram(delta: np.ndarray) -> tuple[int, ...]:
    # Rounding first puts a delta that is a bin edge up to float error (0.7 - 0.5 =
    # 0.19999999999999996) in the bin that edge opens.
    counts, _ = np.histogram(np.round(delta, 9), bins=np.asarray(DELTA_BIN_EDGES))
    return tuple(int(c) for c in counts)


def _iou_array(values: IoUValues, name: str) -> np.ndarray:
    """[N] float64 copy of ``values``, checked to be 1-D, real, finite and in [0, 1]."""
    if isinstance(values, torch.Tensor):
        if values.dtype == torch.bool or values.is_complex():
            raise TypeError(f"{name} must hold real IoU values, got a {values.dtype} tensor")
        array = values.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        raw = np.asarray(values)
        # bool is not a numpy integer: a mask of hits passed where IoUs belong is rejected.
        is_real = np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)
        if raw.size and not is_real:
            raise TypeError(f"{name} must hold real IoU values, got dtype {raw.dtype}")
        array = raw.astype(np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one IoU per pool sample), got shape {tuple(array.shape)}")
    bad = np.flatnonzero(~((array >= 0.0) & (array <= 1.0)))
    if bad.size:
        index = int(bad[0])
        raise ValueError(f"{name}[{index}] = {float(array[index])!r} is not an IoU in [0, 1]")
    return array


def _check_int(value: Any, name: str, *, minimum: int) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def _real(value: Any, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    return float(value)
