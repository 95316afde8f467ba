"""bench.plan_check: videoopd.plan's memory against the measured peak of a real CPU step."""

import pytest

from bench.plan_check import compare, parse_size, run_child


def test_sizes_parse():
    assert parse_size("256x2/512x2/4096/1024") == {
        "width": 256,
        "layers": 2,
        "teacher_width": 512,
        "teacher_layers": 2,
        "vocab": 4096,
        "video_tokens": 1024,
    }
    assert parse_size("qwen3-vl-2b/qwen3-vl-8b/4096")["arch"] == ["qwen3-vl-2b", "qwen3-vl-8b"]
    with pytest.raises(Exception, match="WIDTHxLAYERS"):
        parse_size("256/512")


@pytest.mark.slow
def test_plan_within_15_percent_of_a_measured_step():
    # the video's activations and the models' state both count at this size (docs/scaling-out.md)
    row = compare(run_child("256x2/512x2/4096/4096", steps=2))
    assert row["video_tokens"] > 3000 and row["peak_measured_mib"] > 300
    assert abs(row["error"]) <= 0.15, row
