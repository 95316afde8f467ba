"""One OPD training step of tiny models: bounded memory (no [tokens, vocab] tensor), finite
loss, parameters change; peak memory grows linearly with video length."""

import pytest
import torch

from opd_kernels.testing import MemoryTracker
from videoopd.algo.objectives import DistillationObjective, GenerationContext
from videoopd.data.annotations import load_annotations
from videoopd.data.datasets import GroundingVideoDataset
from videoopd.data.synthetic import generate_dataset
from videoopd.data.video import DecodeConfig
from videoopd.qwen.collators import GroundingCollator
from videoopd.qwen.models import base_hidden_states, lm_head_weight, policy_head_forward, prepare_policy
from videoopd.qwen.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

SMALL_PIXELS = {"min_pixels": 56 * 56, "max_pixels": 64 * 96}  # as in conftest.py

VOCAB = 4096  # padded head: large next to hidden 32 so that tokens * vocab / 8 bites


@pytest.fixture(scope="module")
def pair():
    tok = build_tiny_tokenizer("qwen2_5_vl")
    proc = build_tiny_processor("qwen2_5_vl", tok)
    student = build_tiny_model("qwen2_5_vl", tok, seed=1, hidden_size=32)
    teacher = build_tiny_model("qwen2_5_vl", tok, seed=2, hidden_size=64)
    for m in (student, teacher):
        m.resize_token_embeddings(VOCAB, mean_resizing=False)
    prepare_policy(teacher, trainable=False)
    prepare_policy(student, trainable=True)
    return student, teacher, proc


def _batch(proc, annotation, index=0):
    records, _ = load_annotations(annotation)
    config = DecodeConfig.for_processor(proc, **SMALL_PIXELS)
    item = GroundingVideoDataset(records, config)[index]
    return GroundingCollator(proc)([item])


def _inputs(proc, annotation, index=0):
    return dict(_batch(proc, annotation, index)["inputs"])


def opd_loss(student, teacher, proc, batch, objective, max_new_tokens=12):
    """One micro-batch of the loop's OPD: rollout, teacher scoring, the student's loss (a sum
    over answer tokens) computed inside its forward. Returns (loss, metric sums, rollout)."""
    opd = DistillationObjective(teacher, proc, objective=objective, reduction="sum", max_new_tokens=max_new_tokens)
    ctx = GenerationContext(model=student, device=torch.device("cpu"), step=1)
    rolled = opd.rollout(ctx, batch)
    micro = opd.score(ctx, rolled)
    loss, metrics = policy_head_forward(student, student, micro.student_inputs, micro.loss_fn)
    return loss, {**micro.sums, **metrics}, rolled.rollout


@pytest.mark.parametrize("objective", ["sampled", "full"])
def test_one_step_bounded_memory(pair, synthetic_dir, objective):
    student, teacher, proc = pair
    batch = _batch(proc, synthetic_dir / "annotations.jsonl")
    inputs = dict(batch["inputs"])
    tokens = inputs["input_ids"].numel()  # prompt tokens: a lower bound, so a stricter limit
    limit = tokens * VOCAB // 8
    assert VOCAB * 32 < limit  # weight-sized tensors (grads, Adam state) stay legal

    # The limit bites: the plain HF forward that builds lm_head logits trips it.
    with pytest.raises(AssertionError, match="elements"):
        with torch.no_grad(), MemoryTracker(numel_limit=limit):
            student(**inputs)

    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    before = [p.detach().clone() for p in params]
    torch.manual_seed(0)
    with MemoryTracker(numel_limit=limit) as tracker:
        loss, metrics, rollout = opd_loss(student, teacher, proc, batch, objective)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert tracker.largest.numel < limit
    assert torch.isfinite(loss)
    assert int(metrics["answer_tokens"]) == rollout.num_answer_tokens > 0
    assert torch.isfinite(metrics["reverse_kl_sum"])
    changed = sum(not torch.equal(a, b.detach()) for a, b in zip(before, params))
    assert changed > len(params) // 2
    assert all(not p.requires_grad for p in student.model.visual.parameters())


def test_hidden_states_are_the_base_models(pair, synthetic_dir):
    student, _, proc = pair
    inputs = _inputs(proc, synthetic_dir / "annotations.jsonl")
    student.eval()
    with torch.no_grad():
        h = base_hidden_states(student, **inputs)
        logits = student(**inputs).logits
    student.train()
    torch.testing.assert_close(h[:, -3:] @ lm_head_weight(student).t(), logits[:, -3:], rtol=1e-4, atol=1e-4)


def test_answer_mask_stops_after_eos():
    from videoopd.qwen.generation import answer_mask_from

    ids = torch.tensor([[5, 6, 9, 0, 0], [5, 9, 7, 9, 0], [1, 2, 3, 4, 5]])
    mask = answer_mask_from(ids, {9})
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_peak_memory_grows_linearly_with_video_length(pair, tmp_path):
    student, teacher, proc = pair
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3)  # stateless: the peak is the step's own
    points = []
    for duration in (8.0, 24.0, 40.0):
        ann = generate_dataset(
            tmp_path / f"d{int(duration)}",
            num_videos=1,
            seed=0,
            duration=duration,
            fps=2,
            height=64,
            width=96,
            events_per_video=1,
        )
        batch = _batch(proc, ann)
        with MemoryTracker() as tracker:
            loss, _, rollout = opd_loss(student, teacher, proc, batch, "sampled", max_new_tokens=8)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        points.append((rollout.sequences.shape[1], tracker.peak_bytes))
    print("peak memory (sequence tokens, bytes):", points)
    (n0, m0), (n1, m1), (n2, m2) = points
    assert n0 < n1 < n2
    # the middle point lies near the line through the ends (a quadratic term would bend it)
    predicted = m0 + (m2 - m0) * (n1 - n0) / (n2 - n0)
    assert abs(m1 - predicted) < 0.15 * predicted, points
    # and memory per token does not grow with length
    assert m2 / n2 < 1.5 * (m0 / n0), points


@pytest.mark.parametrize("objective", ["sampled", "full"])
def test_qwen3_vl_step(synthetic_dir, objective):
    """Qwen3-VL: .model is Qwen3VLModel, .lm_head the head; hidden @ head == logits; a step runs."""
    tok = build_tiny_tokenizer("qwen3_vl")
    proc = build_tiny_processor("qwen3_vl", tok)
    student = prepare_policy(build_tiny_model("qwen3_vl", tok, seed=1, hidden_size=32), trainable=True)
    teacher = prepare_policy(build_tiny_model("qwen3_vl", tok, seed=2, hidden_size=64), trainable=False)
    batch = _batch(proc, synthetic_dir / "annotations.jsonl")
    inputs = dict(batch["inputs"])
    student.eval()
    with torch.no_grad():
        h = base_hidden_states(student, **inputs)
        logits = student(**inputs).logits
    student.train()
    torch.testing.assert_close(h[:, -2:] @ lm_head_weight(student).t(), logits[:, -2:], rtol=1e-4, atol=1e-4)
    params = [p for p in student.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    loss, metrics, _ = opd_loss(student, teacher, proc, batch, objective, max_new_tokens=8)
    loss.backward()
    torch.optim.AdamW(params, lr=1e-2).step()
    assert torch.isfinite(loss) and int(metrics["answer_tokens"]) > 0
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, params))


@pytest.mark.parametrize("master_weights", ["auto", "none"])
def test_bf16_student_keeps_small_updates_in_fp32_masters(synthetic_dir, tmp_path, monkeypatch, master_weights):
    """AdamW moves each weight by ~lr a step; at lr 1e-5 that is below bf16's rounding step for
    most weights. With fp32 masters ("auto" for a bf16 student) the updates accumulate in the
    masters and the model holds their rounding; with "none" they are lost."""
    from videoopd import train as T
    from videoopd.training import precision
    from videoopd.training.loop import make_accelerator
    from videoopd.training.post_training import run_post_training

    tok = build_tiny_tokenizer("qwen3_vl")
    proc = build_tiny_processor("qwen3_vl", tok)
    student = prepare_policy(
        build_tiny_model("qwen3_vl", tok, seed=1, hidden_size=32).to(torch.bfloat16),
        trainable=True,
        gradient_checkpointing=False,
    )
    teacher = prepare_policy(
        build_tiny_model("qwen3_vl", tok, seed=2, hidden_size=64).to(torch.bfloat16), trainable=False
    )
    records, _ = load_annotations(synthetic_dir / "annotations.jsonl")
    params = [p for p in student.parameters() if p.requires_grad]
    before = [p.detach().float().clone() for p in params]
    cfg = T.TrainConfig(
        learning_rate=1e-5,
        max_steps=2,
        per_device_train_batch_size=2,
        max_new_tokens=6,
        master_weights=master_weights,
        output_dir=str(tmp_path / "run"),
        progress=False,
        device="cpu",
        **SMALL_PIXELS,
    )
    created = []
    original = precision.MasterWeights.__init__

    def spy(self, p):
        original(self, p)
        created.append(self)

    monkeypatch.setattr(precision.MasterWeights, "__init__", spy)
    run_post_training(cfg, make_accelerator(cfg), student, teacher, proc, records[:2], None, log=lambda *_: None)
    moved_model = sum(int((p.detach().float() != b).sum()) for p, b in zip(params, before))
    total = sum(b.numel() for b in before)
    if master_weights == "none":
        assert not created
        assert moved_model < 0.2 * total  # most updates rounded away
        return
    (masters,) = created
    moved_master = sum(int((m.detach() != b).sum()) for m, b in zip(masters.masters, before))
    assert moved_master > 0.8 * total  # every weight with a gradient moved in fp32
    for p, m in zip(params, masters.masters):  # the model holds the masters' bf16 rounding
        assert p.dtype == torch.bfloat16 and m.dtype == torch.float32
        torch.testing.assert_close(p.detach(), m.detach().to(torch.bfloat16), rtol=0, atol=0)
