"""Each protocol on answers of many shapes: the span it reads and the metrics it gives.

The expected spans are not computed by the code under test: every template states, rule by
rule, what each reference evaluation reads in it (TimeLens: the first clock pair, else the
first "a - b", else the first "a to b", else the first two numbers with word boundaries,
rounded half-to-even to whole seconds; Time-R1: the last "a to b" / "a and b" with one
literal space each side, case-sensitive).
"""

import pytest

from videoopd.evaluation.evaluate import protocol_metrics
from videoopd.grounding.metrics import grounding_metrics, parse_span
from videoopd.grounding.protocols import PROTOCOL_NAMES, PROTOCOLS, get_protocol
from videoopd.qwen.prompts import PROMPT_STYLES


def exact(a, b):
    return float(a), float(b)


def rounded(a, b):
    return float(round(float(a))), float(round(float(b)))


def unit_letter(a, b):
    # TimeLens' lone-number rule before a unit letter: "12.5s" reads 12 (a boundary between
    # "2" and "."), "12s" reads nothing (no boundary between "2" and "s").
    numbers = [float(x.split(".")[0]) for x in (a, b) if "." in x]
    return (numbers[0], numbers[1]) if len(numbers) == 2 else None


def none(a, b):
    return None


def first_guess(a, b):
    return 1.0, 2.0


def later(a, b):
    return 90.0, 95.0


# (template, paper, timelens, time-r1)
TEMPLATES = [
    ("{a} to {b}", exact, rounded, exact),
    ("{a} - {b}", exact, rounded, none),
    ("The event happens in {a} - {b} seconds.", exact, rounded, none),
    ("from {a}s to {b}s", exact, unit_letter, none),
    ("{a} seconds to {b} seconds", exact, rounded, none),
    ("between {a} and {b}", exact, rounded, exact),
    ("{a} and {b}", exact, rounded, exact),
    ("{a}, {b}", exact, rounded, none),
    ("Timestamps: {a}, {b}", exact, rounded, none),
    ("start time: {a}, end time: {b}", exact, rounded, none),
    ("The event happens at {a} seconds and ends at {b} seconds.", exact, rounded, none),
    ("from the {a} second mark to the {b} second mark", exact, rounded, none),
    ("It begins at {a}s and lasts until {b}s.", exact, unit_letter, none),
    ("<think>maybe 1 to 2</think><answer>{a} to {b}</answer>", exact, first_guess, exact),
    ("<think>first guess {a} to {b}, hmm</think>", none, rounded, exact),
    ("[{a}, {b}]", exact, rounded, none),
    ("{a} To {b}", exact, rounded, none),
    ("The answer is {a} to {b}. Or maybe 90 to 95.", exact, rounded, later),
    ("{a}  to  {b}", exact, rounded, none),
    ("Answer: {a} and {b}.", exact, rounded, exact),
]
NUMBERS = [
    ("12", "17"),
    ("0", "8"),
    ("3.5", "7.25"),
    ("12.54", "17.83"),
    ("0.0", "6.9"),
    ("101.2", "153.75"),
    ("2.5", "3.5"),
    ("45", "45.5"),
    ("7.45", "9"),
    ("33.54", "37.89"),
    ("1.7", "16.5"),
]


def clock(seconds):
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


CLOCKS = [(12, 17), (65, 130), (0, 8), (599, 601), (3000, 3541)]
# (template, paper, timelens, time-r1) on clock values; Time-R1 reads "a to b" across the colons.
CLOCK_TEMPLATES = [
    ("{A} - {B}", lambda a, b: (a, b), lambda a, b: (a, b), lambda a, b: None),
    ("From {A} to {B}.", lambda a, b: (a, b), lambda a, b: (a, b), lambda a, b: (float(a % 60), float(b // 60))),
]

HAND_WRITTEN = [
    # (answer, paper, timelens, time-r1)
    ("", None, None, None),
    ("no event here", None, None, None),
    ("12.54", None, None, None),
    ("Qwen2.5 - 7B", None, (2.0, 7.0), None),
    ("I count 2, 3 people", None, (2.0, 3.0), None),
    ("<think>the person stands up at 1 to 2 and", None, (1.0, 2.0), (1.0, 2.0)),
    ("12.5 to 17.8 and 20", (12.5, 17.8), (12.0, 18.0), (12.5, 17.8)),
    ("from 12s to 17s", (12.0, 17.0), None, None),
    ("2.5 to 3.5", (2.5, 3.5), (2.0, 4.0), (2.5, 3.5)),
    ("1:02:03 to 1:02:10.5", (3723.0, 3730.5), (3723.0, 3730.0), (3.0, 1.0)),
    ("17.83 to 12.54", (17.83, 12.54), (18.0, 13.0), (17.83, 12.54)),
    ("<answer>1 to 2</answer> wait <answer>3 to 4</answer>", (3.0, 4.0), (1.0, 2.0), (3.0, 4.0)),
    ("from second 33 to second 40", (33.0, 40.0), (33.0, 40.0), None),
    ("happens at 39.2 seconds and ends at 46.9 seconds", (39.2, 46.9), (39.0, 47.0), None),
    ("between 3 and 5.5 seconds, roughly 2 - 4", (3.0, 5.5), (2.0, 4.0), (3.0, 5.5)),
    # TimeLens: "00:17s" is no clock (no boundary before "s"), one clock is no pair, no "a - b" either:
    # the first two lone numbers, "00" and the "12" of "12.5s".
    ("00:12.5s - 00:17s", (12.5, 17.0), (0.0, 12.0), None),
]


def cases():
    out = []
    for template, *expected in TEMPLATES:
        for a, b in NUMBERS:
            out.append((template.format(a=a, b=b), *(rule(a, b) for rule in expected)))
    for template, *expected in CLOCK_TEMPLATES:
        for a, b in CLOCKS:
            out.append((template.format(A=clock(a), B=clock(b)), *(rule(a, b) for rule in expected)))
    return out + HAND_WRITTEN


CASES = cases()


def test_every_protocol_sees_at_least_200_answers():
    assert len(CASES) >= 200 and len({case[0] for case in CASES}) >= 200


@pytest.mark.parametrize("protocol", PROTOCOL_NAMES)
def test_each_protocol_reads_what_its_rules_say(protocol):
    index = PROTOCOL_NAMES.index(protocol)
    wrong = []
    for answer, *expected in CASES:
        got = parse_span(answer, protocol=protocol)
        want = expected[index]
        if (got is None) != (want is None) or (got is not None and got != pytest.approx(want)):
            wrong.append((answer, got, want))
    assert not wrong, f"{protocol}: {len(wrong)} answers read wrongly, e.g. {wrong[:5]}"


def test_protocol_order_matches_the_expectation_columns():
    assert PROTOCOL_NAMES == ("paper", "timelens", "time-r1")


# ----------------------------------------------------------------------------- metrics


def reference_iou(pred, gt):
    if pred is None:
        return 0.0
    (ps, pe), (gs, ge) = pred, gt
    inter = max(0.0, min(pe, ge) - max(ps, gs))
    union = max(pe, ge) - min(ps, gs)
    return inter / union if union > 0 else 0.0


def reference_metrics(preds, gts, strict, exclude_zero_length):
    ious = []
    for pred, gt in zip(preds, gts):
        windows = gt if isinstance(gt[0], (list, tuple)) else [gt]
        if exclude_zero_length:
            windows = [w for w in windows if w[0] < w[1]]
            if not windows:
                continue
        ious.append(max(reference_iou(pred, w) for w in windows))
    hit = (lambda iou, t: iou > t) if strict else (lambda iou, t: iou >= t)
    out = {f"R1@{t}": 100.0 * sum(hit(i, t) for i in ious) / len(ious) for t in (0.3, 0.5, 0.7)}
    out["mIoU"] = 100.0 * sum(ious) / len(ious)
    return out


def synthetic_set():
    """Every answer of CASES against a ground truth a little off its own numbers, plus
    threshold-exact, zero-length and multi-window cases."""
    answers, gts = [], []
    for k, (answer, paper, *_rest) in enumerate(CASES):
        base = paper or (10.0, 20.0)
        start, end = sorted(base) if base[0] != base[1] else (base[0], base[0] + 1)
        shift = (k % 5) * 0.4
        answers.append(answer)
        gts.append([start + shift, end + shift + 0.3])
    answers += ["0 to 5", "0 to 7", "3 to 3", "2 to 4", "5 to 9"]
    gts += [[0.0, 10.0], [0.0, 10.0], [3.0, 3.0], [[0.0, 1.0], [2.0, 4.0]], [[5.0, 5.0], [4.0, 10.0]]]
    return answers, gts


@pytest.mark.parametrize("protocol", PROTOCOL_NAMES)
def test_metrics_equal_an_independent_computation(protocol):
    answers, gts = synthetic_set()
    index = PROTOCOL_NAMES.index(protocol)
    expected_preds = [case[1 + index] for case in CASES] + [parse_span(a, protocol) for a in answers[len(CASES) :]]
    strict = protocol == "time-r1"
    exclude = protocol == "paper"
    want = reference_metrics(expected_preds, gts, strict, exclude)
    got = grounding_metrics([parse_span(a, protocol) for a in answers], gts, protocol=protocol)
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert got["total"] == len(gts) - (1 if exclude else 0)
    assert got.get("zero_length_excluded", 0) == (1 if exclude else 0)


def test_threshold_comparison_and_zero_length_rules_by_hand():
    preds, gts = [(0, 5), (3, 3), (2, 4)], [(0, 10), (3, 3), [(0, 1), (2, 4)]]
    # IoU 0.5 (a hit at 0.5 for >=, not for >), a zero-length ground truth, a best window of IoU 1.
    paper = grounding_metrics(preds, gts, protocol="paper")
    assert (paper["total"], paper["zero_length_excluded"]) == (2, 1)
    assert paper["R1@0.5"] == 100.0 and paper["mIoU"] == pytest.approx(75.0)
    timelens = grounding_metrics(preds, gts, protocol="timelens")
    assert timelens["total"] == 3 and "zero_length_excluded" not in timelens
    assert timelens["R1@0.5"] == pytest.approx(200 / 3) and timelens["mIoU"] == pytest.approx(50.0)
    time_r1 = grounding_metrics(preds, gts, protocol="time-r1")
    assert time_r1["R1@0.5"] == pytest.approx(100 / 3) and time_r1["R1@0.3"] == pytest.approx(200 / 3)


def test_nothing_scorable_gives_no_numbers_rather_than_a_division_by_zero():
    metrics = grounding_metrics([(1, 2)], [(4, 4)], protocol="paper")
    assert metrics["total"] == 0 and metrics["R1@0.5"] is None and metrics["mIoU"] is None


def test_protocol_metrics_score_the_same_rows_under_every_protocol():
    answers, gts = synthetic_set()
    rows = [{"answer": a, "gt": g, "source": "s" if k % 2 else "t"} for k, (a, g) in enumerate(zip(answers, gts))]
    rows[0]["answer"] = None  # a failed video: no answer, IoU 0 everywhere
    blocks = protocol_metrics(rows)
    assert list(blocks) == list(PROTOCOL_NAMES)
    for name, block in blocks.items():
        preds = [parse_span(r["answer"], name) if r["answer"] is not None else None for r in rows]
        assert block["overall"] == grounding_metrics(preds, gts, name)
        assert set(block["per_source"]) == {"s", "t"}
    assert blocks["paper"]["overall"]["R1@0.5"] != blocks["time-r1"]["overall"]["R1@0.5"]


def test_the_table_of_protocols_is_consistent():
    for name, protocol in PROTOCOLS.items():
        assert protocol.name == name and protocol.prompt_style in PROMPT_STYLES
        assert get_protocol(name) is protocol and get_protocol(protocol) is protocol
    with pytest.raises(ValueError, match="protocol"):
        get_protocol("charades")
    with pytest.raises(ValueError, match="protocol"):
        parse_span("1 to 2", protocol="nope")
    assert PROTOCOLS["timelens"].normalize_query("  a person  opens the door.. ") == "a person opens the door"
    assert PROTOCOLS["paper"].normalize_query("a person opens the door.") == "a person opens the door."
    assert PROTOCOLS["timelens"].pixel_budget(32) == {
        "fps": 2.0,
        "min_pixels": 64 * 32**2,
        "total_pixels": 14336 * 32**2,
    }
    assert PROTOCOLS["time-r1"].pixel_budget(28)["total_pixels"] == 3584 * 28**2
    assert PROTOCOLS["paper"].pixel_budget(28) == {"fps": None, "min_pixels": None, "total_pixels": None}


# ------------------------------------------------------ QVHighlights moment retrieval


def voc_interpolated_ap(ious_ranked, num_windows, threshold):
    """Average precision of ranked predictions, as detection benchmarks compute it: each
    prediction takes the unmatched window it overlaps most if that reaches the threshold
    (true positive), else is a false positive; precision made monotone from the right,
    summed over the steps of recall. ``ious_ranked``: per prediction, its IoU with each window."""
    matched, tp, fp = set(), [], []
    for ious in ious_ranked:
        order = sorted(range(num_windows), key=lambda j: -ious[j])
        hit = next((j for j in order if ious[j] >= threshold and j not in matched), None)
        if hit is not None:
            matched.add(hit)
        tp.append(1 if hit is not None else 0)
        fp.append(0 if hit is not None else 1)
    precision, recall, cum_tp, cum_fp = [], [], 0, 0
    for t, f in zip(tp, fp):
        cum_tp, cum_fp = cum_tp + t, cum_fp + f
        precision.append(cum_tp / (cum_tp + cum_fp))
        recall.append(cum_tp / num_windows)
    p, r = [0.0] + precision + [0.0], [0.0] + recall + [1.0]
    for i in range(len(p) - 2, -1, -1):
        p[i] = max(p[i], p[i + 1])
    return sum((r[i] - r[i - 1]) * p[i] for i in range(1, len(r)) if r[i] != r[i - 1])


def test_moment_retrieval_metrics_equal_the_detection_ap_definition():
    from videoopd.grounding.metrics import MR_AP_THRESHOLDS, moment_retrieval_metrics

    gts = [[[0, 10]], [[0, 10], [20, 30]], [[0, 4], [6, 8], [10, 20]], [[5, 15]], [[2, 4]]]
    preds = [(0, 6), (21, 30), (10, 19), None, (4, 9)]
    metrics = moment_retrieval_metrics(preds, gts)
    ious = [[reference_iou(p, w) for w in g] for p, g in zip(preds, gts)]
    aps = {
        t: [voc_interpolated_ap([row], len(row), t) if p is not None else 0.0 for p, row in zip(preds, ious)]
        for t in MR_AP_THRESHOLDS
    }
    assert metrics["MR-mAP@0.5"] == pytest.approx(100 * sum(aps[0.5]) / 5)
    assert metrics["MR-mAP@0.75"] == pytest.approx(100 * sum(aps[0.75]) / 5)
    assert metrics["MR-mAP"] == pytest.approx(100 * sum(sum(v) / 5 for v in aps.values()) / 10)
    best = [max(row) for row in ious]
    assert metrics["MR-R1@0.5"] == pytest.approx(100 * sum(b >= 0.5 for b in best) / 5)
    assert metrics["MR-R1@0.7"] == pytest.approx(100 * sum(b >= 0.7 for b in best) / 5)
    # By hand: IoUs 0.6, 0.9, 0.9 (of three windows), 0, 0; AP@0.5 = (1 + 1/2 + 1/3) / 5.
    assert metrics["MR-mAP@0.5"] == pytest.approx(100 * (1 + 1 / 2 + 1 / 3) / 5)
    assert metrics["MR-R1@0.5"] == pytest.approx(60.0) and metrics["MR-R1@0.7"] == pytest.approx(40.0)
    assert MR_AP_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    assert set(grounding_metrics(preds, gts, moment_retrieval=True)) >= set(metrics)


# TencentARC/TimeLens at 5d90c06: evaluation/eval_dataloader.py lines 137-145 round the pairs
# extract_time reads, `round(start / unit) * unit` with `unit = getattr(dataset_class, "UNIT", 1.0)`
# (no dataset sets UNIT), and write them as "timestamps"; evaluation/compute_metrics.py line 53
# scores "timestamps" when present and reads "answers" again (line 56, unrounded) only when they
# are absent. The published tables come from that pipeline: rounded.
ROUNDING_CASES = [
    # (answer, the pair extract_time reads (stated by hand), ground truth)
    ("The event happens in 13.4 - 20.0 seconds.", (13.4, 20.0), (10.0, 20.0)),  # raw IoU 0.66, rounded 0.7
    ("12.6 to 19.4", (12.6, 19.4), (10.0, 20.0)),  # raw 0.68, rounded 13 to 19: 0.6
    ("from 2.5 to 7.5", (2.5, 7.5), (2.0, 8.0)),  # halves to even: 2 and 8, IoU 1; raw 5/6
    ("00:01:04.4 - 00:01:10.4", (64.4, 70.4), (65.0, 75.0)),  # clocks: raw 5.4/10.6, rounded 64 to 70: 5/11
]


def timelens_iou(gt, pred):
    """timelens/utils.py's iou, in float64."""
    return max(min(gt[1], pred[1]) - max(gt[0], pred[0]), 0) / (max(gt[1], pred[1]) - min(gt[0], pred[0]))


def test_timelens_scores_the_rounded_timestamps_its_inference_script_writes():
    unit = 1.0
    for answer, (start, end), gt in ROUNDING_CASES:
        written = (round(start / unit) * unit, round(end / unit) * unit)  # eval_dataloader.py lines 139-145
        assert parse_span(answer, "timelens") == written
        got = grounding_metrics([parse_span(answer, "timelens")], [gt], protocol="timelens")
        assert got["mIoU"] == pytest.approx(100 * timelens_iou(gt, written))
    # Across the four, the rounding moves hits over an R1 threshold, both ways: the reason the
    # protocol cannot equal compute_metrics.py applied to raw answers.
    raw = [timelens_iou(gt, pair) for _, pair, gt in ROUNDING_CASES]
    rounded_ious = [timelens_iou(gt, parse_span(a, "timelens")) for a, _, gt in ROUNDING_CASES]
    assert [iou >= 0.7 for iou in raw] == [False, False, True, False]
    assert [iou >= 0.7 for iou in rounded_ious] == [True, False, True, False]
    assert [iou >= 0.5 for iou in raw] == [True, True, True, True]
    assert [iou >= 0.5 for iou in rounded_ious] == [True, True, True, False]
