"""TVDF selection (videoopd.algo.curriculum) on hand-made IoU tables."""

import json
import math
import random

import numpy as np
import pytest
import torch

from videoopd.algo.curriculum import (
    DELTA_BIN_EDGES,
    SELECTORS,
    RoundSelection,
    select,
    select_round,
)

# Sample 2 fails the teacher filter (0.3 < 0.5) although its delta (0.3) would rank third.
# Deltas: 0.7, 0.1, (0.3), 0.9, 0.0, 0.2 -> by delta among survivors: 3, 0, 5, 1, 4.
TEACHER = [0.9, 0.8, 0.3, 1.0, 0.6, 0.7]
STUDENT = [0.2, 0.7, 0.0, 0.1, 0.6, 0.5]
SURVIVORS = {0, 1, 3, 4, 5}

# GWDS frequency pool: teacher right everywhere, deltas 0.9, 0.7, 0.5, 0.3, 1.0.
FREQ_TEACHER = [1.0] * 5
FREQ_STUDENT = [0.1, 0.3, 0.5, 0.7, 0.0]


def gaussian_weights(center=0.9, sigma=0.2):
    deltas = [t - s for t, s in zip(FREQ_TEACHER, FREQ_STUDENT)]
    return np.array([math.exp(-((d - center) ** 2) / (2 * sigma**2)) for d in deltas])


def assert_frequencies(counts, probabilities, draws, num_standard_errors=5.0):
    """Every empirical frequency within ``num_standard_errors`` binomial standard errors."""
    frequencies = np.asarray(counts) / draws
    standard_errors = np.sqrt(probabilities * (1 - probabilities) / draws)
    assert np.all(np.abs(frequencies - probabilities) <= num_standard_errors * standard_errors), (
        frequencies,
        probabilities,
    )


def test_topk_takes_largest_deltas_among_teacher_validated_samples():
    assert select(TEACHER, STUDENT, selector="topk", k=3, teacher_iou_min=0.5) == [3, 0, 5]
    assert select(TEACHER, STUDENT, selector="topk", k=5, teacher_iou_min=0.5) == [3, 0, 5, 1, 4]
    # Without the filter, sample 2 enters at its delta's rank.
    assert select(TEACHER, STUDENT, selector="topk", k=3, teacher_iou_min=0.0) == [3, 0, 2]


def test_teacher_filter_drops_strictly_below_and_keeps_equal():
    teacher = [0.5, 0.49, 0.7, 0.2]
    student = [0.0, 0.0, 0.6, 0.0]
    chosen = select_round(teacher, student, selector="topk", k=4, teacher_iou_min=0.5)
    assert chosen.indices == (0, 2)
    assert (chosen.pool_size, chosen.dropped_by_teacher, chosen.survivors) == (4, 2, 2)


def test_k_beyond_survivors_returns_all_survivors_and_flags_short():
    chosen = select_round(TEACHER, STUDENT, selector="topk", k=10, teacher_iou_min=0.5)
    assert chosen.indices == (3, 0, 5, 1, 4)
    assert chosen.short and chosen.requested_k == 10 and chosen.num_selected == 5
    for selector in ("gwds", "random"):
        chosen = select_round(TEACHER, STUDENT, selector=selector, k=10, teacher_iou_min=0.5, seed=3)
        assert sorted(chosen.indices) == sorted(SURVIVORS) and chosen.short
    exact = select_round(TEACHER, STUDENT, selector="topk", k=5, teacher_iou_min=0.5)
    assert not exact.short


@pytest.mark.parametrize("selector", ["topk", "gwds", "random"])
def test_sampling_selectors_pick_distinct_survivors_reproducibly(selector):
    first = select(TEACHER, STUDENT, selector=selector, k=3, teacher_iou_min=0.5, seed=7)
    assert len(first) == 3 == len(set(first)) and set(first) <= SURVIVORS
    assert select(TEACHER, STUDENT, selector=selector, k=3, teacher_iou_min=0.5, seed=7) == first
    assert all(isinstance(i, int) for i in first)


@pytest.mark.parametrize("selector", SELECTORS)
def test_k_zero_and_empty_pool(selector):
    expected_for_k0 = list(range(len(TEACHER))) if selector == "off" else []
    assert select(TEACHER, STUDENT, selector=selector, k=0, teacher_iou_min=0.5) == expected_for_k0
    empty = select_round([], [], selector=selector, k=3, teacher_iou_min=0.5)
    assert empty.indices == () and empty.pool_size == 0 and empty.survivors == 0
    assert empty.delta_histogram == (0,) * 10


def test_off_is_the_whole_pool_in_pool_order_but_logs_the_filter():
    chosen = select_round(TEACHER, STUDENT, selector="off", k=2, teacher_iou_min=0.5)
    assert chosen.indices == tuple(range(6))
    assert chosen.dropped_by_teacher == 1 and chosen.survivors == 5 and not chosen.short


def test_topk_breaks_ties_randomly_within_the_tie_only():
    # Deltas: six tied at 0.5, then 1.0 (sample 6) above and 0.1 (sample 7) below.
    teacher = [1.0] * 8
    student = [0.5] * 6 + [0.0, 0.9]
    orders = set()
    for seed in range(10):
        chosen = select(teacher, student, selector="topk", k=8, teacher_iou_min=0.5, seed=seed)
        assert chosen[0] == 6 and chosen[-1] == 7 and sorted(chosen[1:-1]) == list(range(6))
        assert select(teacher, student, selector="topk", k=8, teacher_iou_min=0.5, seed=seed) == chosen
        orders.add(tuple(chosen))
    assert len(orders) >= 2


def test_gwds_draw_frequencies_follow_gaussian_weights():
    """k=2 over 20,000 seeds: the first draw is w_i / W, the second sum_j p_j w_i / (W - w_j)."""
    draws = 20_000
    weights = gaussian_weights()
    total = weights.sum()
    first_probability = weights / total
    second_probability = np.array(
        [sum(first_probability[j] * weights[i] / (total - weights[j]) for j in range(5) if j != i) for i in range(5)]
    )
    first_counts = np.zeros(5)
    second_counts = np.zeros(5)
    for seed in range(draws):
        first, second = select(FREQ_TEACHER, FREQ_STUDENT, selector="gwds", k=2, teacher_iou_min=0.5, seed=seed)
        first_counts[first] += 1
        second_counts[second] += 1
    assert_frequencies(first_counts, first_probability, draws)
    assert_frequencies(second_counts, second_probability, draws)
    # One draw is the first of two draws: a round's selection grows with k without reshuffling.
    for seed in range(20):
        one = select(FREQ_TEACHER, FREQ_STUDENT, selector="gwds", k=1, teacher_iou_min=0.5, seed=seed)
        two = select(FREQ_TEACHER, FREQ_STUDENT, selector="gwds", k=2, teacher_iou_min=0.5, seed=seed)
        assert one == two[:1]


def test_gwds_center_and_sigma_move_the_mass():
    # A narrow Gaussian at 0.3 makes sample 3 (delta 0.3) the first draw nearly always.
    hits = sum(
        select(FREQ_TEACHER, FREQ_STUDENT, selector="gwds", k=1, teacher_iou_min=0.5, center=0.3, sigma=0.05, seed=seed)
        == [3]
        for seed in range(200)
    )
    assert hits >= 195


def test_gwds_with_vanishing_sigma_draws_the_nearest_delta_first_and_never_fails():
    # Every weight but the nearest one's underflows to exactly 0 here.
    for seed in range(10):
        chosen = select(
            FREQ_TEACHER, FREQ_STUDENT, selector="gwds", k=5, teacher_iou_min=0.5, center=0.9, sigma=1e-300, seed=seed
        )
        assert chosen[0] == 0 and sorted(chosen) == list(range(5))


def test_random_selector_is_uniform_without_replacement():
    draws = 10_000
    pair_counts = np.zeros((5, 5))
    for seed in range(draws):
        first, second = select(FREQ_TEACHER, FREQ_STUDENT, selector="random", k=2, teacher_iou_min=0.5, seed=seed)
        pair_counts[first, second] += 1
    assert np.trace(pair_counts) == 0
    assert_frequencies(pair_counts.sum(axis=1), np.full(5, 0.2), draws)
    assert_frequencies(pair_counts.sum(axis=0), np.full(5, 0.2), draws)
    # The 20 ordered pairs are equally likely: chi-square with 19 degrees of freedom, below
    # its 0.999 quantile (43.82).
    expected = draws / 20
    off_diagonal = pair_counts[~np.eye(5, dtype=bool)]
    assert ((off_diagonal - expected) ** 2 / expected).sum() < 43.82


def test_selection_does_not_touch_global_random_state():
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    torch_state = torch.get_rng_state()
    for selector in SELECTORS:
        select(TEACHER, STUDENT, selector=selector, k=3, teacher_iou_min=0.5, seed=11)
    assert random.getstate() == python_state
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]


def test_numpy_and_tensor_inputs_match_lists():
    for selector in SELECTORS:
        expected = select(TEACHER, STUDENT, selector=selector, k=3, teacher_iou_min=0.5, seed=5)
        assert (
            select(np.array(TEACHER), np.array(STUDENT), selector=selector, k=3, teacher_iou_min=0.5, seed=5)
            == expected
        )
        assert (
            select(
                torch.tensor(TEACHER, dtype=torch.float64),
                torch.tensor(STUDENT, dtype=torch.float64),
                selector=selector,
                k=np.int64(3),
                teacher_iou_min=0.5,
                seed=5,
            )
            == expected
        )
    assert select(
        torch.tensor(TEACHER), torch.tensor(STUDENT, dtype=torch.bfloat16), selector="topk", k=3, teacher_iou_min=0.5
    ) == [3, 0, 5]


def test_round_record_histograms_and_log():
    # Deltas: -1.0, 0.2 (0.7 - 0.5 in floats is just below 0.2), 1.0, 0.05, 0.4; samples 0 and 4
    # fail a 0.5 teacher filter.
    teacher = [0.0, 0.7, 1.0, 0.55, 0.4]
    student = [1.0, 0.5, 0.0, 0.5, 0.0]
    chosen = select_round(teacher, student, selector="topk", k=2, teacher_iou_min=0.0)
    assert chosen.delta_bin_edges == DELTA_BIN_EDGES and len(DELTA_BIN_EDGES) == 11
    assert chosen.indices == (2, 4)
    assert chosen.delta_histogram == (1, 0, 0, 0, 0, 1, 1, 1, 0, 1)
    assert chosen.selected_delta_histogram == (0, 0, 0, 0, 0, 0, 0, 1, 0, 1)
    filtered = select_round(teacher, student, selector="topk", k=2, teacher_iou_min=0.5)
    assert filtered.delta_histogram == (0, 0, 0, 0, 0, 1, 1, 0, 0, 1)
    log = filtered.to_log()
    assert json.loads(json.dumps(log)) == log
    assert log["selector"] == "topk" and log["selected"] == 2 and log["dropped_by_teacher"] == 2
    assert log["survivors"] == 3 and log["requested_k"] == 2 and log["short"] is False
    assert isinstance(filtered, RoundSelection)
    with pytest.raises(AttributeError):
        filtered.short = True  # frozen


GOOD = {"teacher_iou": [0.9, 0.8], "student_iou": [0.1, 0.2], "selector": "topk", "k": 1, "teacher_iou_min": 0.5}


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"student_iou": [0.1]}, ValueError, r"teacher_iou and student_iou .* got 2 and 1"),
        ({"teacher_iou": [0.9, 1.2]}, ValueError, r"teacher_iou\[1\] = 1\.2"),
        ({"student_iou": [-0.1, 0.2]}, ValueError, r"student_iou\[0\] = -0\.1"),
        ({"student_iou": [0.1, float("nan")]}, ValueError, r"student_iou\[1\] = nan"),
        (
            {"teacher_iou": np.array([[0.9, 0.8]]), "student_iou": np.array([[0.1, 0.2]])},
            ValueError,
            r"teacher_iou must be 1-D",
        ),
        ({"teacher_iou": [True, False]}, TypeError, "teacher_iou must hold real"),
        ({"student_iou": ["a", "b"]}, TypeError, "student_iou must hold real"),
        ({"k": -1}, ValueError, r"k must be >= 0, got -1"),
        ({"k": 2.0}, TypeError, r"k must be an int, got 2\.0"),
        ({"k": True}, TypeError, r"k must be an int, got True"),
        ({"selector": "gwds", "sigma": 0.0}, ValueError, r"sigma must be .* > 0, got 0\.0"),
        ({"selector": "gwds", "sigma": -0.2}, ValueError, r"sigma .* got -0\.2"),
        ({"center": float("inf")}, ValueError, "center must be finite"),
        (
            {"selector": "top-k"},
            ValueError,
            r"selector must be one of \('topk', 'gwds', 'random', 'off'\), got 'top-k'",
        ),
        ({"teacher_iou_min": 1.5}, ValueError, r"teacher_iou_min must be in \[0, 1\], got 1\.5"),
        ({"teacher_iou_min": -0.1}, ValueError, r"teacher_iou_min .* got -0\.1"),
        ({"teacher_iou_min": float("nan")}, ValueError, r"teacher_iou_min .* got nan"),
        ({"seed": -1}, ValueError, r"seed must be >= 0"),
        ({"seed": 1.5}, TypeError, r"seed must be an int"),
    ],
)
def test_bad_inputs_name_the_argument_and_value(changes, error, match):
    with pytest.raises(error, match=match):
        select(**{**GOOD, **changes})
