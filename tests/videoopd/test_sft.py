"""videoopd.sft: examples (answer positions), the loss against a float64 logits reference,
a few real optimisation steps (the loss falls on a fixed batch), checkpoints and CLI errors."""

import json

import pytest
import torch

from videoopd import sft as S
from videoopd.algo.objectives import GenerationContext, SupervisedObjective
from videoopd.data.annotations import load_annotations
from videoopd.data.datasets import GroundingVideoDataset
from videoopd.data.video import DecodeConfig
from videoopd.qwen.collators import SFTCollator
from videoopd.qwen.models import policy_head_forward, prepare_policy
from videoopd.qwen.prompts import format_answer
from videoopd.qwen.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer
from videoopd.training.loop import lr_lambda

SMALL_PIXELS = {"min_pixels": 56 * 56, "max_pixels": 64 * 96}  # as in conftest.py


def _family(family):
    tok = build_tiny_tokenizer(family)
    return build_tiny_model(family, tok, seed=0), build_tiny_processor(family, tok)


def sft_loss(model, inputs, answer_mask):
    """The loop's SFT loss on one micro-batch: (mean NLL per answer token, answer tokens)."""
    sft = SupervisedObjective()
    ctx = GenerationContext(model=model, device=torch.device("cpu"), step=1)
    micro = sft.score(ctx, {"inputs": inputs, "answer_mask": answer_mask, "records": []})
    loss_sum, _ = policy_head_forward(model, model, micro.student_inputs, micro.loss_fn)
    return loss_sum / micro.units, micro.units


def _batch(proc, annotation, style="paper", n=3):
    records, _ = load_annotations(annotation)
    dataset = GroundingVideoDataset(records[:n], DecodeConfig.for_processor(proc, **SMALL_PIXELS))
    return SFTCollator(proc, style)([dataset[i] for i in range(len(dataset))])


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("style", ["paper", "timelens"])
def test_answer_mask_marks_exactly_the_answer(synthetic_dir, family, style):
    _, proc = _family(family)
    batch = _batch(proc, synthetic_dir / "annotations.jsonl", style)
    ids, mask = batch["inputs"]["input_ids"], batch["answer_mask"]
    attention = batch["inputs"]["attention_mask"]
    assert attention[:, 0].all(), "right padding: every row starts with a real token"
    for row, record in enumerate(batch["records"]):
        answer = proc.tokenizer.decode(ids[row][mask[row]])
        assert answer == format_answer(record.span, style) + "<|im_end|>"
        last = int(attention[row].sum()) - 1
        assert mask[row, last] and not mask[row, last + 1 :].any()  # nothing marked in the padding
        prompt = proc.tokenizer.decode(ids[row][: int(mask[row].nonzero()[0])])
        assert prompt.endswith("<|im_start|>assistant\n") and record.query in prompt


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_loss_and_grads_match_float64_logits_reference(synthetic_dir, family):
    model, proc = _family(family)
    batch = _batch(proc, synthetic_dir / "annotations.jsonl")
    inputs = dict(batch["inputs"])
    loss, count = sft_loss(model, inputs, batch["answer_mask"])
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    reference = model.double()
    inputs64 = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    logits = reference(**inputs64).logits  # the [tokens, vocab] tensor sft_loss never builds
    mask = batch["answer_mask"][:, 1:]
    targets = inputs["input_ids"][:, 1:][mask]
    ref = torch.nn.functional.cross_entropy(logits[:, :-1][mask], targets, reduction="mean")
    ref.backward()
    assert int(count) == int(batch["answer_mask"].sum())  # every answer token is predicted
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    for name, p in reference.named_parameters():
        if name in ours:
            torch.testing.assert_close(ours[name].double(), p.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_loss_falls_on_a_fixed_batch(synthetic_dir):
    model, proc = _family("qwen3_vl")
    prepare_policy(model, trainable=True, gradient_checkpointing=False, train_vision=True)
    batch = _batch(proc, synthetic_dir / "annotations.jsonl", n=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss, _ = sft_loss(model, dict(batch["inputs"]), batch["answer_mask"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_lr_schedule():
    cfg = S.resolve_config(
        [
            "--init-tiny",
            "qwen3_vl",
            "--train-data",
            "x",
            "--learning-rate",
            "1e-3",
            "--warmup-steps",
            "10",
            "--max-steps",
            "110",
            "--min-lr-ratio",
            "0.1",
        ]
    )
    factor = lr_lambda(cfg)  # LambdaLR counts from 0: factor(i) is optimizer step i + 1's
    assert cfg.learning_rate * factor(4) == pytest.approx(5e-4)
    assert cfg.learning_rate * factor(9) == pytest.approx(1e-3)
    assert cfg.learning_rate * factor(59) == pytest.approx(1e-4 + 0.9e-3 * 0.5)
    assert cfg.learning_rate * factor(109) == pytest.approx(1e-4)
    cfg.lr_scheduler_type, cfg.warmup_steps = "constant", 0
    assert lr_lambda(cfg)(50) == 1.0


def test_cli_trains_evaluates_and_saves(synthetic_dir, tmp_path):
    out = tmp_path / "run"
    ann = str(synthetic_dir / "annotations.jsonl")
    code = S.main(
        [
            "--init-tiny",
            "qwen3_vl",
            "--train-data",
            ann,
            "--eval-data",
            ann,
            "--output-dir",
            str(out),
            "--tiny-hidden-size",
            "32",
            "--tiny-layers",
            "1",
            "--max-steps",
            "3",
            "--per-device-train-batch-size",
            "2",
            "--learning-rate",
            "1e-3",
            "--warmup-steps",
            "1",
            "--eval-steps",
            "2",
            "--eval-limit",
            "2",
            "--save-steps",
            "2",
            "--max-new-tokens",
            "8",
            "--min-pixels",
            str(56 * 56),
            "--max-pixels",
            str(64 * 96),
            "--no-progress",
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert {r["step"] for r in rows if "eval/mIoU" in r} == {2, 3}
    for folder in ("best", "final", "checkpoints/step-2/model", "checkpoints/step-3/model"):
        assert (out / folder / "config.json").is_file() and (out / folder / "model.safetensors").is_file()
    assert (out / "config.yaml").is_file() and (out / "eval_step3.json").is_file()

    from videoopd.qwen.models import load_policy

    reloaded = load_policy(out / "final", trainable=False)
    assert reloaded.config.model_type == "qwen3_vl"


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "exactly one of --model"),
        (["--init-tiny", "qwen3_vl"], "--train-data is required"),
        (["--init-tiny", "qwen3_vl", "--model", "x", "--train-data", "a.jsonl"], "exactly one of --model"),
        (["--init-tiny", "qwen3_vl", "--train-data", "missing.jsonl"], "annotation file not found"),
        (
            ["--init-tiny", "qwen3_vl", "--train-data", "a.jsonl", "--per-device-train-batch-size", "0"],
            "--per-device-train-batch-size must be > 0, got 0",
        ),
        (["--model", "nowhere", "--train-data", "ANN"], "--model: model folder not found"),
    ],
)
def test_bad_input_stops_before_training(synthetic_dir, capsys, argv, message):
    argv = [str(synthetic_dir / "annotations.jsonl") if a == "ANN" else a for a in argv]
    assert S.main(argv) == 2
    assert message in capsys.readouterr().err
