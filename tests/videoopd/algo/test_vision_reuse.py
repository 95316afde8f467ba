"""The rollout's vision tower output reused by the student's training forward: the same loss and
gradients as re-encoding the pixels, one vision forward per step instead of two."""

from __future__ import annotations

import pytest
import torch

from bench.opd_step import synthetic_video
from videoopd.algo.objectives import DistillationObjective, GenerationContext
from videoopd.data.annotations import GroundingRecord
from videoopd.qwen.collators import GroundingCollator
from videoopd.qwen.models import encode_vision, policy_head_forward, prepare_policy, with_encoded_vision
from videoopd.qwen.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer


def _setup(family: str):
    tokenizer = build_tiny_tokenizer(family)
    processor = build_tiny_processor(family, tokenizer)
    student = prepare_policy(build_tiny_model(family, tokenizer, seed=1), trainable=True)
    teacher = prepare_policy(build_tiny_model(family, tokenizer, seed=2, hidden_size=96), trainable=False)
    side = 128 if family == "qwen3_vl" else 112
    items = []
    for i, frames in enumerate((8, 12)):  # two videos of different lengths: left padding
        video = synthetic_video(frames, side)
        record = GroundingRecord(
            id=f"v{i}",
            video=video.path,
            query="the square crosses",
            span=(1.0, 3.0),
            duration=frames / 2,
            source="synthetic",
        )
        items.append({"record": record, "video": video, "error": None, "data_issue": None})
    return student, teacher, processor, GroundingCollator(processor)(items)


def _step(student, teacher, processor, batch, objective: str, reuse: bool):
    calls = []
    handle = student.model.visual.register_forward_hook(lambda *_: calls.append(1))
    try:
        opd = DistillationObjective(
            teacher, processor, objective=objective, reduction="sum", max_new_tokens=6, reuse_vision=reuse
        )
        ctx = GenerationContext(model=student, device=torch.device("cpu"), step=3)
        rolled = opd.rollout(ctx, batch)
        micro = opd.score(ctx, rolled)
        student.zero_grad(set_to_none=True)
        loss, _ = policy_head_forward(student, student, micro.student_inputs, micro.loss_fn)
        loss.backward()
    finally:
        handle.remove()
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    return rolled.rollout, loss.detach(), grads, len(calls)


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("objective", ["full", "sampled"])
def test_reused_vision_gives_the_same_step(family, objective):
    student, teacher, processor, batch = _setup(family)
    rollout_a, loss_a, grads_a, calls_a = _step(student, teacher, processor, batch, objective, reuse=True)
    rollout_b, loss_b, grads_b, calls_b = _step(student, teacher, processor, batch, objective, reuse=False)
    assert (calls_a, calls_b) == (1, 2)  # rollout + training forward re-encode; reused: once
    assert rollout_a.student_vision is not None and rollout_b.student_vision is None
    assert torch.equal(rollout_a.sequences, rollout_b.sequences)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-7)
    assert grads_a.keys() == grads_b.keys() and grads_a
    assert not any(n.startswith("model.visual") for n in grads_a)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-7, msg=name)


def test_encode_vision_declines_what_it_cannot_reuse():
    student, _, _, batch = _setup("qwen3_vl")
    inputs = dict(batch["inputs"])
    encoded = encode_vision(student, inputs)
    assert set(encoded) == {"video"}
    swapped = with_encoded_vision(inputs, encoded)
    assert "pixel_values_videos" not in swapped and "video_grid_thw" in swapped
    assert swapped["mm_encoder_outputs"]["video"] is encoded["video"]
    assert with_encoded_vision(inputs, None) is inputs
    text_only = {k: v for k, v in inputs.items() if k not in ("pixel_values_videos", "video_grid_thw")}
    assert encode_vision(student, text_only) is None
    student.model.visual.blocks[0].mlp.linear_fc1.weight.requires_grad_(True)  # a trainable vision tower
    assert encode_vision(student, inputs) is None
