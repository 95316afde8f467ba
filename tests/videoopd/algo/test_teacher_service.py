"""The teacher as a Ray service (``--teacher-placement service``) against the colocated teacher:
the same loss and gradients (both objectives, Qwen3-VL and Qwen2.5-VL tiny pairs), only the
answer tokens' hidden states cross the process boundary, a killed replica costs a retry and
one that stays dead stops the wait with an error. One local Ray cluster (2 CPUs) per module."""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import time

import pytest
import torch

ray = pytest.importorskip("ray")

from videoopd.algo.objectives import DistillationObjective, GenerationContext, teacher_router  # noqa: E402
from videoopd.algo.teacher_service import TeacherService, TeacherServiceError, rollout_fields  # noqa: E402
from videoopd.data.annotations import load_annotations  # noqa: E402
from videoopd.data.datasets import GroundingVideoDataset  # noqa: E402
from videoopd.data.video import DecodeConfig  # noqa: E402
from videoopd.qwen.collators import GroundingCollator  # noqa: E402
from videoopd.qwen.models import load_policy, policy_head_forward  # noqa: E402
from videoopd.qwen.processing import load_processor  # noqa: E402
from videoopd.qwen.tiny import save_tiny_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow

SMALL_PIXELS = {"min_pixels": 56 * 56, "max_pixels": 64 * 96}  # as in conftest.py


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, namespace="videoopd-tests")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """{family: (student dir, teacher dir)}: tiny checkpoints, the teacher wider."""
    out = {}
    for family in ("qwen3_vl", "qwen2_5_vl"):
        root = tmp_path_factory.mktemp(family)
        out[family] = (
            save_tiny_checkpoint(root / "student", family, seed=1, hidden_size=32),
            save_tiny_checkpoint(root / "teacher", family, seed=2, hidden_size=64),
        )
    return out


def _batch(processor, synthetic_dir, decode_config, rows=2):
    records, _ = load_annotations(synthetic_dir / "annotations.jsonl")
    dataset = GroundingVideoDataset(records[:rows], decode_config)
    return GroundingCollator(processor)([dataset[i] for i in range(rows)])


def _setup(pairs, family, synthetic_dir):
    """(teacher dir, its processor, the decode config, the student, a batch of 2 prompts)."""
    student_dir, teacher_dir = pairs[family]
    processor = load_processor(teacher_dir)
    decode_config = DecodeConfig.for_processor(processor, **SMALL_PIXELS)
    student = load_policy(student_dir, trainable=True)
    return teacher_dir, processor, decode_config, student, _batch(processor, synthetic_dir, decode_config)


def _loss_and_grads(student, objective_obj, ctx, rolled):
    micro = objective_obj.score(ctx, rolled)
    student.zero_grad(set_to_none=True)
    micro.pending.wait()
    loss, _ = policy_head_forward(student, student, micro.student_inputs, micro.loss_fn)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}


def _assert_scores_alike(student, colocated, remote, ctx, rolled, what):
    """The remote teacher's loss and gradients are the colocated one's within 1e-6 relative."""
    loss_c, grads_c = _loss_and_grads(student, colocated, ctx, rolled)
    loss_s, grads_s = _loss_and_grads(student, remote, ctx, rolled)
    assert torch.isfinite(loss_c) and loss_c != 0
    torch.testing.assert_close(loss_s, loss_c, rtol=1e-6, atol=0)
    assert grads_c.keys() == grads_s.keys() and grads_c
    for name, grad in grads_c.items():
        torch.testing.assert_close(
            grads_s[name], grad, rtol=1e-6, atol=1e-6 * grad.abs().max().item(), msg=f"{what} {name}"
        )


def _service(teacher_dir, decode_config, name, **kwargs):
    return TeacherService(
        str(teacher_dir), decode_config=decode_config, name=name, cpus_per_replica=1, timeout_s=120, **kwargs
    )


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl"])
def test_service_scores_as_the_colocated_teacher(cluster, pairs, synthetic_dir, family):
    teacher_dir, processor, decode_config, student, batch = _setup(pairs, family, synthetic_dir)
    teacher = load_policy(teacher_dir, trainable=False)
    service = _service(teacher_dir, decode_config, f"equal-{family}")
    try:
        for objective in ("full", "sampled"):
            colocated = DistillationObjective(
                teacher, processor, objective=objective, reduction="sum", max_new_tokens=8
            )
            remote = DistillationObjective(service, processor, objective=objective, reduction="sum", max_new_tokens=8)
            ctx = GenerationContext(model=student, device=torch.device("cpu"), step=1)
            rolled = colocated.rollout(ctx, batch)
            # as if row 0 had stopped 3 tokens early (random tiny models seldom do): the service
            # sends no values for the positions after, and its zeros there must never be read
            rolled.rollout.answer_mask[0, -3:] = False
            _assert_scores_alike(student, colocated, remote, ctx, rolled, objective)
    finally:
        service.close()


def test_exact_objective_sends_answer_hidden_states_only(cluster, pairs, synthetic_dir):
    """A bf16 teacher returns at most T x D_t x 2 bytes (T answer tokens) plus a small header."""
    teacher_dir, processor, decode_config, student, batch = _setup(pairs, "qwen3_vl", synthetic_dir)
    service = _service(teacher_dir, decode_config, "bytes", dtype="bfloat16")
    try:
        opd = DistillationObjective(service, processor, objective="full", reduction="sum", max_new_tokens=8)
        ctx = GenerationContext(model=student, device=torch.device("cpu"), step=1)
        rolled = opd.rollout(ctx, batch)
        rollout = rolled.rollout
        payload = ray.get(
            service.replicas[0].score.remote(
                list(rolled.records), rollout_fields(rollout), objective="full", temperature=1.0, vocab_size=4096
            )
        )
        tokens, d_t = rollout.num_answer_tokens, 64
        assert payload["hidden"].shape == (tokens, d_t) and payload["hidden"].dtype == torch.bfloat16
        sent = len(pickle.dumps(payload, protocol=5))
        assert sent <= tokens * d_t * 2 + 1024, (sent, tokens)
        head = service.head("cpu")
        assert head.shape[1] == d_t  # the head: once per run, not per micro-batch
    finally:
        service.close()


def test_killed_replica_is_restarted_and_its_scores_resent(cluster, pairs, synthetic_dir):
    teacher_dir, processor, decode_config, student, batch = _setup(pairs, "qwen2_5_vl", synthetic_dir)
    teacher = load_policy(teacher_dir, trainable=False)
    # slowed so that the kill lands while the micro-batch is being scored
    service = _service(teacher_dir, decode_config, "restart", max_restarts=1, delay_s=3.0)
    try:
        ctx = GenerationContext(model=student, device=torch.device("cpu"), step=1)
        colocated = DistillationObjective(teacher, processor, objective="full", reduction="sum", max_new_tokens=8)
        remote = DistillationObjective(service, processor, objective="full", reduction="sum", max_new_tokens=8)
        rolled = colocated.rollout(ctx, batch)
        (pid,) = service.pids()
        micro = remote.score(ctx, rolled)
        time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        micro.pending.wait()
        assert service.pids() != [pid]  # a new process
        loss_c, _ = _loss_and_grads(student, colocated, ctx, rolled)
        loss_s, _ = policy_head_forward(student, student, micro.student_inputs, micro.loss_fn)
        torch.testing.assert_close(loss_s.detach(), loss_c, rtol=1e-6, atol=0)
        # restarts used up: the next death stops the wait with the replica's error, in bounded time
        (pid,) = service.pids()
        micro = remote.score(ctx, rolled)
        time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        start = time.perf_counter()
        with pytest.raises(TeacherServiceError, match="teacher replica 0 .* is dead"):
            micro.pending.wait()
        assert time.perf_counter() - start < 60
    finally:
        service.close()


def test_unreadable_video_names_the_record(cluster, pairs, synthetic_dir, tmp_path):
    teacher_dir, processor, decode_config, student, batch = _setup(pairs, "qwen2_5_vl", synthetic_dir)
    service = _service(teacher_dir, decode_config, "unreadable")
    try:
        opd = DistillationObjective(service, processor, objective="sampled", reduction="sum", max_new_tokens=4)
        ctx = GenerationContext(model=student, device=torch.device("cpu"), step=1)
        rolled = opd.rollout(ctx, batch)
        records = rolled.records
        gone = tmp_path / "gone.mp4"
        moved = [dataclasses.replace(records[0], video=str(gone)), records[1]]
        micro = opd.score(ctx, dataclasses.replace(rolled, records=moved))
        with pytest.raises(ValueError, match=f"record {records[0].id} .*gone.mp4"):
            micro.pending.wait()
    finally:
        service.close()


def test_several_teachers_as_services_score_as_colocated_ones(cluster, pairs, synthetic_dir, tmp_path):
    """Two teachers of different widths (64, 96), a service each: a micro-batch with a row of
    each scores as the same teachers in this process (both objectives)."""
    teacher_dir, processor, decode_config, student, batch = _setup(pairs, "qwen2_5_vl", synthetic_dir)
    wide_dir = save_tiny_checkpoint(tmp_path / "wide", "qwen2_5_vl", seed=3, hidden_size=96)
    dirs = {"narrow": teacher_dir, "wide": wide_dir}
    batch = {
        **batch,
        "records": [dataclasses.replace(r, teacher=name) for r, name in zip(batch["records"], ("narrow", "wide"))],
    }
    services = {name: _service(path, decode_config, f"several-{name}") for name, path in dirs.items()}
    try:
        models = {name: load_policy(path, trainable=False) for name, path in dirs.items()}
        route = teacher_router(list(dirs))
        for objective in ("full", "sampled"):
            colocated = DistillationObjective(
                models, processor, objective=objective, reduction="sum", max_new_tokens=8, teacher_of=route
            )
            remote = DistillationObjective(
                services, processor, objective=objective, reduction="sum", max_new_tokens=8, teacher_of=route
            )
            ctx = GenerationContext(model=student, device=torch.device("cpu"), step=1)
            rolled = colocated.rollout(ctx, batch)
            _assert_scores_alike(student, colocated, remote, ctx, rolled, objective)
    finally:
        for service in services.values():
            service.close()
