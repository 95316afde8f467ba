"""LoRA through peft: adapters only in the language model, only adapter weights change, the
kernels see through the PeftModel, the checkpoint holds the adapter and ``--merge-lora``
writes a plain model whose outputs equal the adapter model's (DDP / FSDP2: test_distributed.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from videoopd import train as T
from videoopd.demo.teacher import STUDENT_DIR
from videoopd.qwen.lora import apply_lora, target_pattern
from videoopd.qwen.models import lm_head_weight, policy_head_forward, prepare_policy
from videoopd.qwen.tiny import build_tiny_model, build_tiny_tokenizer


def test_adapters_go_into_the_language_model_only():
    tok = build_tiny_tokenizer("qwen2_5_vl")
    model = prepare_policy(
        build_tiny_model("qwen2_5_vl", tok, seed=0, hidden_size=32), trainable=True, gradient_checkpointing=False
    )
    vision_mlp = [n for n, _ in model.named_modules() if "visual" in n and n.endswith("gate_proj")]
    assert vision_mlp, "Qwen2.5-VL's vision MLP has gate_proj too: the pattern must skip it"
    peft_model = apply_lora(model, r=4)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n and "language_model" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert not lm_head_weight(peft_model).requires_grad
    # the loss path sees through the PeftModel: hidden states carry the adapters' gradient,
    # the frozen head gets none
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    ids = torch.randint(0, 100, (2, 9))
    loss = policy_head_forward(
        peft_model, peft_model, {"input_ids": ids}, lambda h, w: (h.float() @ w.T.float()).logsumexp(-1).sum()
    )
    loss.backward()
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if p.requires_grad)
    assert lm_head_weight(peft_model).grad is None
    with pytest.raises(ValueError, match="match no module"):
        apply_lora(build_tiny_model("qwen2_5_vl", tok, seed=0, hidden_size=32), r=4, targets="no_such_proj")
    with pytest.raises(ValueError, match="targets"):
        target_pattern(" , ")


@pytest.mark.slow
def test_lora_demo_changes_only_adapters_and_merges(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "run"
    argv = [
        "--demo-videos",
        "8",
        "--max-steps",
        "3",
        "--per-device-train-batch-size",
        "2",
        "--eval-limit",
        "2",
        "--eval-on-start",
        "false",
        "--eval-teacher",
        "false",
        "--max-new-tokens",
        "8",
        "--no-progress",
        "--learning-rate",
        "5e-3",
        "--lora-r",
        "4",
        "--merge-lora",
        "--save-steps",
        "3",
        "--output-dir",
        str(out),
    ]
    assert T.main(argv) == 0
    adapter_dir = out / "checkpoints" / "step-3" / "model"
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["r"] == 4
    adapter = load_file(str(adapter_dir / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in adapter.items()), "adapters not trained"

    base = AutoModelForImageTextToText.from_pretrained(STUDENT_DIR).eval()
    original = {k: v.clone() for k, v in base.state_dict().items()}
    adapted = PeftModel.from_pretrained(base, adapter_dir).eval()
    merged = AutoModelForImageTextToText.from_pretrained(out / "final").eval()  # a plain HF model
    assert not (out / "final" / "adapter_config.json").exists()
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, original[k])]
    assert changed and all("language_model" in k and k.rsplit(".", 2)[-2].endswith("proj") for k in changed)
    ids = torch.randint(0, len(original["model.language_model.embed_tokens.weight"]), (2, 12))
    with torch.no_grad():
        a, b = adapted(input_ids=ids).logits, merged(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), float((a - b).abs().max())


def test_an_adapter_folder_loads_over_its_base_and_evaluates(tmp_path, tiny_qwen25_checkpoint, synthetic_dir):
    """A LoRA run's final/ (the adapter and the processor) is a model folder to eval: its base,
    recorded by peft, is loaded and the adapter merged in, outputs as the adapter model's."""
    from videoopd.eval import main as eval_main
    from videoopd.qwen.models import check_checkpoint, load_policy
    from videoopd.qwen.processing import load_processor

    base = load_policy(tiny_qwen25_checkpoint, trainable=False)
    adapted = apply_lora(base, r=4)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # as trained: B = 0 would make the adapter a no-op
    folder = tmp_path / "final"
    adapted.save_pretrained(folder)
    load_processor(tiny_qwen25_checkpoint).save_pretrained(folder)
    assert check_checkpoint(folder) == folder
    loaded = load_policy(folder, trainable=False)
    ids = torch.randint(0, 200, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids).logits, adapted.eval()(input_ids=ids).logits, atol=1e-4, rtol=1e-4
        )
    with pytest.raises(ValueError, match="holds a LoRA adapter"):
        load_policy(folder, trainable=True)
    assert (
        eval_main(
            [
                "--model",
                str(folder),
                "--data",
                str(synthetic_dir / "annotations.jsonl"),
                "--output",
                str(tmp_path / "p.jsonl"),
                "--max-new-tokens",
                "2",
                "--dataloader-num-workers",
                "0",
                "--min-pixels",
                str(56 * 56),
                "--max-pixels",
                str(64 * 96),
                "--no-progress",
            ]
        )
        == 0
    )
