"""A step's rollouts generated together: the micro-batches' prompts joined into one generate call
(or as many as --rollout-batch-size allows) sample the answer tokens each micro-batch samples
alone, the teacher scores each call in one forward, and every micro-batch trains on the loss and
gradients it would have alone."""

from __future__ import annotations

import pytest
import torch

import videoopd.algo.rollouts as rollouts  # where sample_rollouts looks generate up
from bench.opd_step import synthetic_video
from videoopd.algo.objectives import DistillationObjective, GenerationContext, rollout_calls
from videoopd.data.annotations import GroundingRecord
from videoopd.qwen.collators import GroundingCollator, concat_model_inputs
from videoopd.qwen.generation import Rollout, split_rollout
from videoopd.qwen.models import policy_head_forward, prepare_policy
from videoopd.qwen.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer


def _setup(family: str):
    tokenizer = build_tiny_tokenizer(family)
    processor = build_tiny_processor(family, tokenizer)
    student = prepare_policy(build_tiny_model(family, tokenizer, seed=1), trainable=True)
    teacher = prepare_policy(build_tiny_model(family, tokenizer, seed=2, hidden_size=96), trainable=False)
    side = 128 if family == "qwen3_vl" else 112
    collate = GroundingCollator(processor)
    batches = []
    for first, frames_pair in enumerate(((8, 12), (6, 10))):  # prompts of 4 lengths: left padding differs
        items = []
        for j, frames in enumerate(frames_pair):
            record = GroundingRecord(
                id=f"v{first}{j}",
                video=synthetic_video(frames, side).path,
                query="the square crosses",
                span=(1.0, 3.0),
                duration=frames / 2,
                source="synthetic",
            )
            items.append({"record": record, "video": synthetic_video(frames, side), "error": None, "data_issue": None})
        batches.append(collate(items))
    return student, teacher, processor, batches


def _counted(module: torch.nn.Module, calls: list[int]):
    return module.register_forward_hook(lambda *_: calls.append(1))


def _loss_and_grads(student, micro):
    student.zero_grad(set_to_none=True)
    loss, _ = policy_head_forward(student, student, micro.student_inputs, micro.loss_fn)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("family", "objective"),
    [
        ("qwen3_vl", "full"),
        ("qwen2_5_vl", "sampled"),
        pytest.param("qwen3_vl", "sampled", marks=pytest.mark.slow),
        pytest.param("qwen2_5_vl", "full", marks=pytest.mark.slow),
    ],
)
def test_joint_rollouts_equal_separate_ones(family, objective, monkeypatch):
    student, teacher, processor, batches = _setup(family)
    generate_calls = []
    generate = rollouts.generate
    monkeypatch.setattr(rollouts, "generate", lambda *a, **k: generate_calls.append(1) or generate(*a, **k))
    ctx = GenerationContext(model=student, device=torch.device("cpu"), step=5)
    results = {}
    for mode in ("joint", "separate"):
        opd = DistillationObjective(
            teacher, processor, objective=objective, reduction="sum", max_new_tokens=7, temperature=1.3
        )
        generate_calls.clear()
        teacher_forwards: list[int] = []
        hook = _counted(teacher.model, teacher_forwards)
        try:
            if mode == "joint":
                rolled = opd.rollout_step(ctx, batches)
                micro = opd.score_step(ctx, rolled)
            else:
                rolled = [opd.rollout(ctx, b) for b in batches]
                micro = [opd.score(ctx, r) for r in rolled]
        finally:
            hook.remove()
        results[mode] = (
            rolled,
            [_loss_and_grads(student, m) for m in micro],
            len(generate_calls),
            len(teacher_forwards),
            opd,
        )
    joint, separate = results["joint"], results["separate"]
    assert (joint[2], joint[3]) == (1, 1) and (separate[2], separate[3]) == (2, 2)
    for a, b in zip(joint[0], separate[0]):
        ra, rb = a.rollout, b.rollout
        assert torch.equal(ra.sequences, rb.sequences), (ra.answers, rb.answers)
        assert torch.equal(ra.attention_mask, rb.attention_mask) and torch.equal(ra.answer_mask, rb.answer_mask)
        assert ra.prompt_length == rb.prompt_length and ra.answers == rb.answers
        answer = ra.answer_mask[:, ra.prompt_length :]
        torch.testing.assert_close(ra.sampler_logprobs[answer], rb.sampler_logprobs[answer], rtol=1e-5, atol=1e-6)
        assert ra.student_vision is not None
    for (loss_a, grads_a), (loss_b, grads_b) in zip(joint[1], separate[1]):
        torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
        assert grads_a.keys() == grads_b.keys()
        for name in grads_a:
            torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)
    if objective == "full":  # one head for the run: the frozen parameter itself when not sharded
        assert joint[4].teacher.head is not None
        assert joint[4].teacher.head.data_ptr() == teacher.lm_head.weight.data_ptr()


def test_rollout_batch_size_splits_the_step_into_calls(monkeypatch):
    student, teacher, processor, batches = _setup("qwen3_vl")
    calls = []
    generate = rollouts.generate
    monkeypatch.setattr(
        rollouts,
        "generate",
        lambda model, proc, inputs, **k: (
            calls.append(inputs["input_ids"].shape[0]) or generate(model, proc, inputs, **k)
        ),
    )
    ctx = GenerationContext(model=student, device=torch.device("cpu"), step=1)
    opd = DistillationObjective(teacher, processor, objective="sampled", max_new_tokens=3, rollout_batch_size=2)
    rolled = opd.rollout_step(ctx, batches * 2)
    assert calls == [2, 2, 2, 2] and len(rolled) == 4
    calls.clear()
    opd.rollout_batch_size = 3  # whole micro-batches per call, never more rows than asked but for one
    opd.rollout_step(ctx, batches * 2)
    assert calls == [2, 2, 2, 2]
    calls.clear()
    opd.rollout_batch_size = 0
    opd.rollout_step(ctx, batches * 2)
    assert calls == [8]


def test_rollout_calls_groups_whole_batches():
    batches = [{"records": [0] * n} for n in (2, 2, 3, 1)]
    assert [[len(b["records"]) for b in call] for call in rollout_calls(batches, 4)] == [[2, 2], [3, 1]]
    assert [[len(b["records"]) for b in call] for call in rollout_calls(batches, 0)] == [[2, 2, 3, 1]]
    assert [[len(b["records"]) for b in call] for call in rollout_calls(batches, 1)] == [[2], [2], [3], [1]]
    with pytest.raises(ValueError, match="rows_per_call"):
        rollout_calls(batches, -1)


def test_concat_and_split_are_inverse():
    a = {
        "input_ids": torch.tensor([[0, 5, 6], [7, 8, 9]]),
        "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]),
        "video_grid_thw": torch.tensor([[1, 2, 2], [1, 2, 2]]),
    }
    b = {
        "input_ids": torch.tensor([[3, 4]]),
        "attention_mask": torch.tensor([[1, 1]]),
        "video_grid_thw": torch.tensor([[2, 2, 2]]),
    }
    joint = concat_model_inputs([a, b], pad_token_id=0)
    assert joint["input_ids"].tolist() == [[0, 5, 6], [7, 8, 9], [0, 3, 4]]
    assert joint["attention_mask"].tolist() == [[0, 1, 1], [1, 1, 1], [0, 1, 1]]
    assert joint["video_grid_thw"].shape == (3, 3)
    # a joint rollout: 2 answer columns; row 0 stops after 1 token (EOS), row 2 after 1
    answers = torch.tensor([[11, 2], [12, 13], [14, 2]])
    answer_mask = torch.tensor([[True, False], [True, True], [True, False]])
    rollout = Rollout(
        sequences=torch.cat([joint["input_ids"], answers], 1),
        attention_mask=torch.cat([joint["attention_mask"], answer_mask.long()], 1),
        answer_mask=torch.cat([torch.zeros(3, 3, dtype=torch.bool), answer_mask], 1),
        prompt_length=3,
        answers=["a", "b", "c"],
        sampler_logprobs=-torch.rand(3, 2),
    )
    first, second = split_rollout(rollout, [3, 2], [2, 1])
    assert first.sequences.tolist() == [[0, 5, 6, 11, 2], [7, 8, 9, 12, 13]] and first.prompt_length == 3
    assert second.sequences.tolist() == [[3, 4, 14]] and second.prompt_length == 2 and second.answers == ["c"]
    assert second.sampler_logprobs.shape == (1, 1)
    with pytest.raises(ValueError, match="do not split"):
        split_rollout(rollout, [3, 2], [2, 2])
    with pytest.raises(ValueError, match="prompt tokens before column"):
        split_rollout(rollout, [3, 1], [2, 1])  # row 2's prompt is 2 tokens long
    with pytest.raises(ValueError, match="different inputs"):
        concat_model_inputs([a, {k: v for k, v in b.items() if k != "video_grid_thw"}], pad_token_id=0)
