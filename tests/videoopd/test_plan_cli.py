"""python -m videoopd.plan: prints the plan, exit 0 when it fits, 1 when not, 2 on bad options."""

import json

from videoopd import plan


def test_fits_prints_the_parts(capsys):
    assert (
        plan.main(
            [
                "--student",
                "qwen3-vl-8b",
                "--teacher",
                "qwen3-vl-32b",
                "--gpus",
                "8",
                "--video-tokens",
                "16384",
                "--gradient-accumulation-steps",
                "4",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "a plan, not a measurement" in out and "rollout copy of the student" in out and ": fits." in out


def test_does_not_fit_says_what_to_change(capsys):
    assert (
        plan.main(
            [
                "--student",
                "qwen3-vl-8b",
                "--teacher",
                "qwen3-vl-32b",
                "--gpus",
                "8",
                "--video-tokens",
                "115200",
                "--json",
            ]
        )
        == 1
    )
    got = json.loads(capsys.readouterr().out)
    assert not got["fits"] and got["advice"] and 16_384 < got["max_video_tokens"] < 115_200


def test_bad_options_exit_2(capsys):
    assert plan.main(["--student", "qwen3-vl-8b", "--teacher", "nope"]) == 2
    assert "config.json" in capsys.readouterr().err
    assert plan.main(["--student", "qwen3-vl-8b", "--gpus", "0"]) == 2
