"""``python -m bench.trl_distillation`` at a tiny shape: both paths run in their own processes
and the table reports the same loss for both."""

import re

import pytest

pytest.importorskip("trl")

from bench import trl_distillation  # noqa: E402


@pytest.mark.slow
def test_table_has_both_paths_with_the_same_loss(capsys, tmp_path):
    assert (
        trl_distillation.main(
            [
                "--prompt",
                "8",
                "--completion",
                "32",
                "--vocab",
                "512",
                "--student-dim",
                "32",
                "--teacher-dim",
                "48",
                "--calls",
                "1",
                "--workdir",
                str(tmp_path),
            ]
        )
        == 0
    )
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "Trainer" in line]
    assert len(rows) == 2 and "errors" not in "".join(rows), rows
    losses = [float(re.findall(r"\| ([0-9.]+) \|$", row)[0]) for row in rows]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and losses[0] > 0
