"""bench.step_ledger: its counting hook counts a known set of collectives on 2 real processes,
and its plan scales what grows with the answer."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from bench.step_ledger import collective_kind, fit_answer_length, paper_calls

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.multiprocess
def test_counts_known_collectives_on_2_processes(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            "2",
            "--config_file",
            str(ROOT / "configs" / "accelerate" / "ddp.yaml"),
            "-m",
            "bench.step_ledger",
            "--probe",
            str(tmp_path),
        ],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    single = hasattr(dist, "all_gather_single")
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["world"] == 2
        assert got["collectives"]["teacher"] == {
            "all_reduce": {"count": 3, "bytes": 3 * 4000},
            "broadcast": {"count": 1, "bytes": 80},
        }
        assert got["collectives"]["student"] == {
            "all_gather": {"count": 2 + single, "bytes": (2 + single) * 800},  # the gathered 2 x 100 fp32
            "reduce_scatter": {"count": 1, "bytes": 400},  # the full 2 x 50 fp32 input
            "all_reduce": {"count": 1, "bytes": 28},
        }  # functional (torch.ops._c10d_functional)
        assert set(got["peak_mib"]) == {"teacher", "student"}


def test_collective_kinds():
    import torch

    assert collective_kind(torch.ops.c10d.allreduce_) == "all_reduce"
    assert collective_kind(torch.ops.c10d._reduce_scatter_base_) == "reduce_scatter"
    assert collective_kind(torch.ops._c10d_functional.all_gather_into_tensor) == "all_gather"
    assert collective_kind(torch.ops.aten.mm) is None


def _run(answer, rollout_bytes, rollout_count):
    return {
        "answer_tokens": answer + 100,
        "grad_accum": 2,
        "ranks": [
            {
                "rank": 0,
                "calls": {"rollout": {"forward": 2 * answer, "generate": 2}, "teacher": {"forward": 2}},
                "collectives": {
                    "rollout": {"all_gather": {"bytes": rollout_bytes, "count": rollout_count}},
                    "student": {"reduce_scatter": {"bytes": 10.0, "count": 2}},
                },
            }
        ],
    }


def test_fit_separates_what_grows_with_the_answer():
    # per micro-batch: 100 bytes + 7 a decoding step, 3 gathers + 1 a step; the student's do not grow
    fits = fit_answer_length([_run(4, 2 * (100 + 7 * 4), 2 * (3 + 4)), _run(24, 2 * (100 + 7 * 24), 2 * (3 + 24))])
    assert fits[("rollout", "all_gather")] == (pytest.approx((100.0, 7.0)), pytest.approx((3.0, 1.0)))
    assert fits[("student", "reduce_scatter")] == (pytest.approx((5.0, 0.0)), pytest.approx((1.0, 0.0)))
    # a loop that generates the step's rollouts in one call: the paper's step makes one call too
    run = _run(4, 1, 1)
    assert paper_calls(run, "rollout", micro=4) == 4 and paper_calls(run, "student", micro=4) == 4
    run["ranks"][0]["calls"]["rollout"]["generate"] = 1
    assert paper_calls(run, "rollout", micro=4) == 1
