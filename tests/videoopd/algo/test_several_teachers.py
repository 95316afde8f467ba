"""Several teachers: each record scored by the teacher its data assigns (its ``teacher`` field,
else a rule by source, else the first); a micro-batch whose rows belong to several teachers is
scored per teacher, and its loss and gradients are those of each group scored alone with its
teacher, summed (float64 models: within 1e-6 relative), for the exact and the sampled objective."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.opd_step import synthetic_video
from videoopd.algo.objectives import (
    DistillationObjective,
    GenerationContext,
    RolledBatch,
    RolloutCall,
    teacher_router,
)
from videoopd.data.annotations import GroundingRecord
from videoopd.qwen.collators import GroundingCollator, concat_model_inputs, select_model_rows
from videoopd.qwen.generation import select_rollout_rows
from videoopd.qwen.models import policy_head_forward, prepare_policy
from videoopd.qwen.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

FAMILY = "qwen3_vl"


def _record(name: str, frames: int, teacher: str | None = None, source: str = "synthetic") -> GroundingRecord:
    return GroundingRecord(
        id=name,
        video=synthetic_video(frames, 128).path,
        query="the square crosses",
        span=(1.0, 3.0),
        duration=frames / 2,
        source=source,
        teacher=teacher,
    )


@pytest.fixture(scope="module")
def pair():
    tokenizer = build_tiny_tokenizer(FAMILY)
    processor = build_tiny_processor(FAMILY, tokenizer)
    student = prepare_policy(build_tiny_model(FAMILY, tokenizer, seed=1).double(), trainable=True)
    teachers = {
        "small": prepare_policy(build_tiny_model(FAMILY, tokenizer, seed=2, hidden_size=96).double(), trainable=False),
        "large": prepare_policy(build_tiny_model(FAMILY, tokenizer, seed=3, hidden_size=128).double(), trainable=False),
    }
    collate = GroundingCollator(processor)
    # micro-batch 0: one row of each teacher (one by its field, one by its source); 1: "large" only
    records = [
        [_record("a0", 8, teacher="small"), _record("a1", 12, source="long")],
        [_record("b0", 6, source="long"), _record("b1", 10, teacher="large")],
    ]
    batches = [
        collate(
            [
                {"record": r, "video": synthetic_video(int(r.duration * 2), 128), "error": None, "data_issue": None}
                for r in rs
            ]
        )
        for rs in records
    ]
    return student, teachers, processor, batches


def _loss_and_grads(student, micro):
    student.zero_grad(set_to_none=True)
    loss, sums = policy_head_forward(student, student, micro.student_inputs, micro.loss_fn)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}, sums


def _alone(rolled: RolledBatch, rows: list[int]) -> RolledBatch:
    """The rows ``rows`` of a micro-batch as a micro-batch of their own."""
    inputs = select_model_rows(rolled.inputs, rows)
    rollout = select_rollout_rows(rolled.rollout, rows)
    records = [rolled.records[i] for i in rows]
    return RolledBatch(
        inputs=inputs,
        rollout=rollout,
        records=records,
        call=RolloutCall(inputs=[inputs], rollout=rollout, records=records),
        rows=slice(0, len(rows)),
    )


class ElsewhereTeacher:
    """A colocated teacher submitted to per micro-batch (as the service is)."""

    joins_calls = False

    def __init__(self, colocated):
        self.colocated = colocated

    def submit(self, *args, **kwargs):
        return self.colocated.submit(*args, **kwargs)


@pytest.mark.parametrize(
    ("objective", "joined"), [("full", True), ("sampled", True), pytest.param("full", False, marks=pytest.mark.slow)]
)
def test_per_teacher_scoring_equals_each_group_alone(pair, objective, joined):
    student, teachers, processor, batches = pair
    ctx = GenerationContext(model=student, device=torch.device("cpu"), step=3)
    route = teacher_router(list(teachers), {"long": "large"})
    opd = DistillationObjective(
        teachers, processor, objective=objective, reduction="sum", max_new_tokens=6, temperature=1.2, teacher_of=route
    )
    if not joined:
        opd.teachers = {name: ElsewhereTeacher(t) for name, t in opd.teachers.items()}
        opd.teacher = opd.teachers["small"]
    rolled = opd.rollout_step(ctx, batches)
    micro = opd.score_step(ctx, rolled)
    names = [[route(r) for r in part.records] for part in rolled]
    assert names == [["small", "large"], ["large", "large"]]
    for part, mb, part_names in zip(rolled, micro, names):
        loss, grads, sums = _loss_and_grads(student, mb)
        ref_loss, ref_grads, ref_kl = 0.0, {}, {}
        for name in dict.fromkeys(part_names):
            rows = [i for i, n in enumerate(part_names) if n == name]
            alone = DistillationObjective(
                teachers[name], processor, objective=objective, reduction="sum", temperature=1.2
            )
            part_loss, g, s = _loss_and_grads(student, alone.score_step(ctx, [_alone(part, rows)])[0])
            ref_loss = ref_loss + part_loss
            ref_kl[name] = s["reverse_kl_sum"]
            for key, value in g.items():
                ref_grads[key] = ref_grads[key] + value if key in ref_grads else value
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
        assert grads.keys() == ref_grads.keys()
        for key in grads:
            torch.testing.assert_close(grads[key], ref_grads[key], rtol=1e-6, atol=1e-12, msg=key)
        for name in teachers:  # every teacher's metric, zero without rows
            expected = ref_kl.get(name, torch.zeros((), dtype=torch.float64))
            torch.testing.assert_close(sums[f"teacher/{name}/reverse_kl_sum"], expected, rtol=1e-6, atol=1e-12)
        answer = part.rollout.answer_mask[:, part.rollout.prompt_length :]
        for name in teachers:
            picked = torch.tensor([n == name for n in part_names])
            assert float(mb.sums[f"teacher/{name}/answer_tokens"]) == float(answer[picked].sum())
    summary = opd.summarize(
        {
            "answer_tokens": 10.0,
            "sequences": 4.0,
            "reverse_kl_sum": 5.0,
            "teacher/small/answer_tokens": 4.0,
            "teacher/small/reverse_kl_sum": 1.0,
            "teacher/large/answer_tokens": 6.0,
            "teacher/large/reverse_kl_sum": 4.0,
        }
    )
    assert summary["teacher/small/reverse_kl"] == 0.25 and summary["teacher/large/answer_tokens"] == 6


def test_one_teacher_has_no_per_teacher_metrics(pair):
    student, teachers, processor, batches = pair
    opd = DistillationObjective(teachers["small"], processor, objective="full", reduction="sum", max_new_tokens=3)
    ctx = GenerationContext(model=student, device=torch.device("cpu"), step=1)
    micro = opd.score_step(ctx, opd.rollout_step(ctx, batches[:1]))
    assert not any(key.startswith("teacher/") for key in micro[0].sums)
    assert not any(key.startswith("teacher/") for key in opd.summarize({"answer_tokens": 1.0}))


def test_routing_field_then_source_then_first():
    route = teacher_router(["a", "b", "c"], {"web": "b"})
    assert route(_record("x", 4, teacher="c", source="web")) == "c"
    assert route(_record("x", 4, source="web")) == "b"
    assert route(_record("x", 4, source="other")) == "a"
    with pytest.raises(ValueError, match="not among"):
        teacher_router(["a"], {"web": "z"})


def test_a_record_naming_no_teacher_is_refused_with_its_file_and_line(pair):
    _, teachers, processor, _ = pair
    opd = DistillationObjective(teachers, processor, teacher_of=teacher_router(list(teachers)))
    record = dataclasses.replace(
        _record("q7", 4, teacher="huge"), annotation_file="train.jsonl", annotation_location="line 7"
    )
    with pytest.raises(ValueError, match=r"q7 \(train.jsonl, line 7\) names teacher 'huge'"):
        opd.route([record])


def test_selected_rows_are_the_rows_batched_alone(pair):
    """A joint batch's rows selected (a teacher's group) are those rows as collated alone: the
    shared left padding cut, each row's own video patches."""
    _, _, processor, batches = pair
    joint = concat_model_inputs([b["inputs"] for b in batches], processor.tokenizer.pad_token_id)
    for rows, alone in (([0, 1], batches[0]["inputs"]), ([2, 3], batches[1]["inputs"])):
        picked = select_model_rows(joint, rows)
        assert picked.keys() == alone.keys()
        for key, value in alone.items():
            assert torch.equal(picked[key], value), key
    one = collate_alone(processor, batches[0]["records"][1:])
    picked = select_model_rows(joint, [1])
    for key, value in one.items():
        assert torch.equal(picked[key], value), key
    with pytest.raises(ValueError, match="ascending"):
        select_model_rows(joint, [2, 1])


def collate_alone(processor, records):
    return GroundingCollator(processor)(
        [
            {"record": r, "video": synthetic_video(int(r.duration * 2), 128), "error": None, "data_issue": None}
            for r in records
        ]
    )["inputs"]
