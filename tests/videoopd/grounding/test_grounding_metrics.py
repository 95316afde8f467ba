import math

import pytest

from videoopd.grounding.metrics import grounding_metrics, parse_span, parse_time, temporal_iou


@pytest.mark.parametrize(
    "text, expected",
    [
        ("12.54 to 17.83", (12.54, 17.83)),
        ("12.5 - 17.8", (12.5, 17.8)),
        ("12.5-17.8", (12.5, 17.8)),
        ("The event happens in 12.5 - 17.8 seconds.", (12.5, 17.8)),
        ("from 12.5s to 17.8s", (12.5, 17.8)),
        ("12.5 seconds to 17.8 seconds", (12.5, 17.8)),
        ("It starts at 3 sec until 7 secs", (3.0, 7.0)),
        ("12 to 17", (12.0, 17.0)),
        ("00:12 - 00:17", (12.0, 17.0)),
        ("01:05 to 02:10.5", (65.0, 130.5)),
        ("01:02:03 to 01:02:10.5", (3723.0, 3730.5)),
        (r"\boxed{[00:12, 00:17]}", (12.0, 17.0)),
        ("[12.5, 17.8]", (12.5, 17.8)),
        ("between 3 and 5.5", (3.0, 5.5)),
        ("start time: 3.1, end time: 5.2", (3.1, 5.2)),
        ("12.54 ~ 17.83", (12.54, 17.83)),
        ("12.54 – 17.83", (12.54, 17.83)),
    ],
)
def test_parse_span_formats(text, expected):
    assert parse_span(text) == pytest.approx(expected)


def test_answer_tags_last_one_wins():
    assert parse_span("<answer>1 to 2</answer> wait <answer>3 to 4</answer>") == (3.0, 4.0)


def test_answer_tag_cut_off_reads_what_follows_it():
    assert parse_span("<answer>1 to 2</answer> hmm <answer>5 to 6") == (5.0, 6.0)


def test_think_block_is_skipped():
    text = "<think>maybe 1.0 to 2.0, or 3 to 4</think>The event happens in 5.0 - 7.5 seconds."
    assert parse_span(text) == (5.0, 7.5)


def test_closing_think_tag_alone_marks_the_end_of_reasoning():
    # Qwen3 thinking templates put <think> in the prompt: the answer only has </think>.
    assert parse_span("first guess 1 to 2 </think> 8 to 9") == (8.0, 9.0)


def test_unclosed_think_block_has_no_answer():
    assert parse_span("<think>the person stands up at 1 to 2 and") is None


def test_first_span_after_thinking_is_the_answer():
    assert parse_span("<think>x</think> 10 to 12, or maybe 13 to 15") == (10.0, 12.0)


def test_inverted_span_is_returned_as_parsed():
    assert parse_span("17.83 to 12.54") == (17.83, 12.54)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "A\ufffd\x7f\ufffd",
        "no event here",
        "Qwen2.5 - 7B",
        "v1.2 to 3",
        "I count 2, 3 people",
        "12.54",
        "<think>",
        "to - to",
    ],
)
def test_garbage_does_not_parse(text):
    assert parse_span(text) is None


def test_parse_span_rejects_non_strings():
    with pytest.raises(TypeError, match="text"):
        parse_span(None)


@pytest.mark.parametrize(
    "token, seconds",
    [("12.5", 12.5), ("12.5s", 12.5), ("3 seconds", 3.0), ("00:12", 12.0), ("1:02:03.5", 3723.5), (".5", 0.5)],
)
def test_parse_time(token, seconds):
    assert parse_time(token) == seconds


def test_parse_time_rejects_non_times():
    with pytest.raises(ValueError, match="token"):
        parse_time("twelve")


def test_temporal_iou_hand_computed():
    assert temporal_iou((0, 10), (0, 10)) == 1.0
    assert temporal_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert temporal_iou((2, 4), (0, 10)) == pytest.approx(0.2)
    assert temporal_iou((0, 1), (2, 3)) == 0.0
    assert temporal_iou((0, 2), (2, 3)) == 0.0  # touching spans do not overlap
    assert temporal_iou((12.54, 17.83), (12.0, 18.0)) == pytest.approx(5.29 / 6.0)


def test_temporal_iou_unparsed_and_inverted_score_zero():
    assert temporal_iou(None, (0, 10)) == 0.0
    assert temporal_iou((8, 2), (0, 10)) == 0.0


def test_temporal_iou_degenerate_prediction_scores_zero():
    assert temporal_iou((3, 3), (0, 10)) == 0.0


def test_temporal_iou_validates_arguments():
    with pytest.raises(ValueError, match="gt"):
        temporal_iou((0, 1), (5, 5))
    with pytest.raises(TypeError, match="pred"):
        temporal_iou((0, 1, 2), (0, 5))
    with pytest.raises(TypeError, match="gt"):
        temporal_iou((0, 1), "0 to 5")
    with pytest.raises(ValueError, match="NaN"):
        temporal_iou((math.nan, 1), (0, 5))


def test_grounding_metrics_hand_computed():
    gts = [(0, 10), (0, 10), (0, 10), (0, 10), (0, 10)]
    preds = [
        (0, 10),  # IoU 1.0
        (0, 6),  # 0.6
        (0, 4),  # 0.4
        None,  # unparsed: 0, still counted
        (9, 1),  # inverted: 0, but parsed
    ]
    metrics = grounding_metrics(preds, gts)
    assert metrics["total"] == 5
    assert metrics["parsed"] == 4
    assert metrics["R1@0.3"] == pytest.approx(60.0)
    assert metrics["R1@0.5"] == pytest.approx(40.0)
    assert metrics["R1@0.7"] == pytest.approx(20.0)
    assert metrics["mIoU"] == pytest.approx(100 * (1.0 + 0.6 + 0.4) / 5)


def test_grounding_metrics_threshold_is_inclusive():
    # IoU exactly 0.5 counts for R1@0.5.
    metrics = grounding_metrics([(0, 5)], [(0, 10)])
    assert metrics["R1@0.5"] == 100.0 and metrics["R1@0.7"] == 0.0


def test_grounding_metrics_all_garbage_is_zero_not_dropped():
    metrics = grounding_metrics([parse_span("garbage"), parse_span("??")], [(1, 2), (3, 4)])
    assert metrics == {"R1@0.3": 0.0, "R1@0.5": 0.0, "R1@0.7": 0.0, "mIoU": 0.0, "parsed": 0, "total": 2}


def test_grounding_metrics_validates_arguments():
    with pytest.raises(ValueError, match="same length"):
        grounding_metrics([(0, 1)], [])
    with pytest.raises(ValueError, match="empty"):
        grounding_metrics([], [])


@pytest.mark.parametrize(
    "text, span",
    [
        ("it starts at 3.5 seconds and ends at 7.2", (3.5, 7.2)),
        ("The event starts at around 3.5 and ends by 7.2 seconds.", (3.5, 7.2)),
        ("begins at 00:03 and finishes at 00:07", (3.0, 7.0)),
        ("beginning at 2.0 then stopping at 4.0", (2.0, 4.0)),
        ("It starts approximately at 1.25s, and it ends at 2.5s.", (1.25, 2.5)),
    ],
)
def test_free_form_sentences_a_learning_policy_writes(text, span):
    """GRPO's reward reads these: a right answer in a sentence must not score 0."""
    assert parse_span(text) == span


@pytest.mark.parametrize(
    "text, span",
    [
        ("33.54 and 37.89", (33.54, 37.89)),
        ("50.87, 79.83", (50.87, 79.83)),
        ("Timestamps: 61.4, 94.7", (61.4, 94.7)),
        ("<answer>12.5, 17</answer>", (12.5, 17.0)),
        ("Answer: 3 and 5.", (3.0, 5.0)),
        ("The event happens at 39.2 seconds and ends at 46.9 seconds.", (39.2, 46.9)),
        ("It occurs at 4 and stops at 9.5", (4.0, 9.5)),
        ("from the 63.2 second mark to the 84.7 second mark", (63.2, 84.7)),
        ("from second 33 to second 40", (33.0, 40.0)),
        ("It begins at 1.7s and lasts until 16.5s.", (1.7, 16.5)),
        ("started at 00:03 and lasted until 00:09", (3.0, 9.0)),
    ],
)
def test_shapes_whose_span_is_obvious(text, span):
    assert parse_span(text) == pytest.approx(span)


@pytest.mark.parametrize(
    "text",
    [
        "There are 2, 3 or 4 people.",
        "I count 2 and 3 chairs",
        "Scores: 2, 3 and 4",
        "2, 3 people",
        "Version 1.2, 3",
    ],
)
def test_a_bare_pair_inside_prose_is_no_span(text):
    assert parse_span(text) is None


def test_parse_span_default_is_the_paper_protocol():
    for text in ("12.54 to 17.83", "from 12s to 17s", "33.54 and 37.89"):
        assert parse_span(text) == parse_span(text, protocol="paper")
