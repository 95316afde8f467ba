"""``--teacher-placement service`` in real runs: the demo on one process steps like the colocated
teacher, and 2 training processes (accelerate launch, gloo) share one service and step like
1 process with twice the batch. The service is started here, on a local Ray cluster (2 CPUs),
as on other machines (docs/scaling-out.md); the runs join it with ``--ray-address`` and find
its replica by name."""

from __future__ import annotations

import json

import pytest

ray = pytest.importorskip("ray")

from launching import accelerate_launch, launch_env  # noqa: E402

from tests.videoopd.training.test_distributed import launch  # noqa: E402
from videoopd.algo.teacher_service import TeacherService  # noqa: E402
from videoopd.data.video import DecodeConfig  # noqa: E402
from videoopd.demo.teacher import DEMO_PIXELS, TEACHER_DIR  # noqa: E402
from videoopd.qwen.processing import load_processor  # noqa: E402

pytestmark = pytest.mark.slow

DEMO = [
    "-m",
    "videoopd.train",
    "--max-steps",
    "2",
    "--demo-videos",
    "8",
    "--eval-steps",
    "0",
    "--eval-limit",
    "2",
    "--eval-on-start",
    "false",
    "--eval-teacher",
    "false",
    "--save-final",
    "false",
    "--no-progress",
]


@pytest.fixture(scope="module")
def service():
    """The demo's teacher as a service of one replica, under the name the runs look for."""
    ray.init(num_cpus=2, include_dashboard=False)
    decode_config = DecodeConfig.for_processor(
        load_processor(TEACHER_DIR), min_pixels=DEMO_PIXELS, max_pixels=DEMO_PIXELS
    )  # the demo's
    started = TeacherService(str(TEACHER_DIR), decode_config=decode_config, cpus_per_replica=1, timeout_s=300)
    yield started, ray.get_runtime_context().gcs_address
    started.close()
    ray.shutdown()


@pytest.fixture(scope="module")
def colocated(tmp_path_factory):
    out = tmp_path_factory.mktemp("colocated")
    launch([*DEMO, "--per-device-train-batch-size", "2", "--output-dir", str(out)], 1)
    return steps(out)


def steps(out):
    return [r for r in (json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_demo_with_the_service_steps_like_the_colocated_teacher(service, colocated, tmp_path):
    started, address = service
    before = started.scored_microbatches()[0]
    launch(
        [
            *DEMO,
            "--per-device-train-batch-size",
            "2",
            "--output-dir",
            str(tmp_path),
            "--teacher-placement",
            "service",
            "--ray-address",
            address,
        ],
        1,
    )
    rows = steps(tmp_path)
    assert started.scored_microbatches()[0] - before == 2  # 2 steps x 1 micro-batch, by the service
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in colocated], rel=1e-5)
    assert all(0 <= r["time/teacher_wait_s"] <= r["step_time_s"] for r in rows)


@pytest.mark.multiprocess
def test_two_processes_share_one_service(service, colocated, tmp_path):
    started, address = service
    before = started.scored_microbatches()[0]
    launch(
        [
            *DEMO,
            "--per-device-train-batch-size",
            "1",
            "--output-dir",
            str(tmp_path),
            "--teacher-placement",
            "service",
            "--ray-address",
            address,
        ],
        2,
        "ddp.yaml",
    )
    rows = steps(tmp_path)
    assert started.scored_microbatches()[0] - before == 4  # 2 processes x 2 steps, one replica
    assert all(r["processes"] == 2 for r in rows)
    # step 1 from the same weights; step 2 from weights AdamW's rounding moved (as the GRPO test)
    assert rows[0]["loss"] == pytest.approx(colocated[0]["loss"], rel=1e-5)
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in colocated], rel=1e-3)


def test_a_service_of_another_teacher_is_refused(service, tmp_path):
    """Replicas are found by name: one already serving another teacher is not used silently."""
    from videoopd.qwen.tiny import save_tiny_checkpoint

    started, _ = service
    other = save_tiny_checkpoint(tmp_path / "other", "qwen3_vl", seed=3)
    with pytest.raises(ValueError, match=f"videoopd-teacher-0 on this Ray cluster serves {TEACHER_DIR}, not {other}"):
        TeacherService(str(other), decode_config=DecodeConfig(), cpus_per_replica=1)
    assert started.scored_microbatches()  # still serving


def test_service_scores_rollouts_only():
    from videoopd.train import resolve_config
    from videoopd.training.config import ConfigError

    for flag in (["--eval-teacher", "true"], ["--rounds", "2"]):
        with pytest.raises(ConfigError, match="--teacher-placement service scores the rollouts only"):
            resolve_config(["--student", "s", "--teacher", "t", "--teacher-placement", "service", *flag])


@pytest.mark.multiprocess
def test_two_processes_without_an_address_share_the_main_process_cluster(colocated, tmp_path):
    """No --ray-address: the main process starts a local cluster and the other joins it."""
    launch(
        [
            *DEMO,
            "--per-device-train-batch-size",
            "1",
            "--output-dir",
            str(tmp_path),
            "--teacher-placement",
            "service",
            "--teacher-replica-cpus",
            "1",
        ],
        2,
        "ddp.yaml",
    )
    rows = steps(tmp_path)
    assert all(r["processes"] == 2 and r["teacher_bytes"] > 0 for r in rows)
    assert rows[0]["loss"] == pytest.approx(colocated[0]["loss"], rel=1e-5)


@pytest.mark.multiprocess
def test_a_replica_that_stays_dead_stops_every_process(service, tmp_path):
    """A replica killed with no restart left: both training processes stop with its error, soon."""
    import os
    import signal
    import subprocess
    import time

    from tests.videoopd.training.test_distributed import ROOT

    _, address = service
    decode_config = DecodeConfig.for_processor(
        load_processor(TEACHER_DIR), min_pixels=DEMO_PIXELS, max_pixels=DEMO_PIXELS
    )
    doomed = TeacherService(
        str(TEACHER_DIR),
        decode_config=decode_config,
        cpus_per_replica=1,
        timeout_s=300,
        name="doomed",
        max_restarts=0,
        delay_s=2.0,
    )
    (pid,) = doomed.pids()
    cmd = accelerate_launch(
        2,
        "ddp.yaml",
        *DEMO,
        "--max-steps",
        "20",
        "--per-device-train-batch-size",
        "1",
        "--output-dir",
        str(tmp_path),
        "--teacher-placement",
        "service",
        "--ray-address",
        address,
        "--teacher-service-name",
        "doomed",
    )
    proc = subprocess.Popen(
        cmd, env=launch_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while doomed.scored_microbatches()[0] < 2 and time.monotonic() < deadline:  # the run is stepping
            time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert time.monotonic() - killed < 120
    assert output.count("TeacherServiceError: teacher replica 0") >= 2, output[-4000:]  # one per process
