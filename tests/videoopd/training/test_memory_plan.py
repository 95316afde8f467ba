"""videoopd.training.memory_plan: sizes counted from real models, the state arithmetic by hand,
fits / advice / the longest video, and bad settings refused. Its error against measured peaks is
checked by ``python -m bench.plan_check`` (docs/scaling-out.md)."""

import pytest

from videoopd.qwen.tiny import build_tiny_model, save_tiny_checkpoint
from videoopd.training.memory_plan import GIB, max_video_tokens, model_size, named_config, plan_memory


@pytest.fixture(scope="module")
def sizes():
    return {name: model_size(name) for name in ("qwen3-vl-2b", "qwen3-vl-8b", "qwen3-vl-32b")}


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_model_size_counts_the_real_model(tmp_path, family):
    model = build_tiny_model(family, hidden_size=64, num_layers=2)
    size = model_size(model.config)
    assert size.params == sum(p.numel() for p in model.parameters())
    assert size.vision_params == sum(p.numel() for p in model.model.visual.parameters())
    assert size.layer_params == sum(p.numel() for p in model.model.language_model.layers[0].parameters())
    assert size.layers == 2 and size.width == 64
    save_tiny_checkpoint(tmp_path / "ckpt", family)  # a model folder: its config.json alone
    assert model_size(tmp_path / "ckpt").params == model_size(str(tmp_path / "ckpt")).params > 0


def test_named_configs_are_the_published_sizes(sizes):
    # Qwen3-VL-2B / 8B / 32B: 2.1B, 8.8B and 33.4B parameters (the model cards' 2B / 8B / 32B)
    assert sizes["qwen3-vl-2b"].params == pytest.approx(2.13e9, rel=0.01)
    assert sizes["qwen3-vl-8b"].params == pytest.approx(8.77e9, rel=0.01)
    assert sizes["qwen3-vl-32b"].params == pytest.approx(33.36e9, rel=0.01)
    assert sizes["qwen3-vl-2b"].head_params == 0  # tied
    assert named_config("qwen3-vl-32b").text_config.hidden_size == 5120


def test_fsdp2_state_is_the_hand_arithmetic(sizes):
    s, t = sizes["qwen3-vl-8b"], sizes["qwen3-vl-32b"]
    plan = plan_memory(s, t, gpus=8, video_tokens=16_384, gradient_accumulation_steps=4)
    part = {p.name: p.bytes for p in plan.parts}
    assert part["student weights"] == pytest.approx(4 * s.params / 8)  # fp32 shards
    trained = s.params - s.vision_params  # the vision tower is frozen
    assert part["student gradients"] == pytest.approx(4 * trained / 8)
    assert part["AdamW state"] == pytest.approx(8 * trained / 8)
    assert part["teacher weights"] == pytest.approx(2 * t.params / 8)  # bf16 shards
    assert part["rollout copy of the student"] == pytest.approx(2 * s.params)  # the gathered bf16 student
    assert part["teacher head copies"] == pytest.approx(2 * 151_936 * 5_120)
    # the step's 4 micro-batches in one generate call (--rollout-batch-size 0), or one a call
    assert part["KV cache"] == pytest.approx(4 * 2 * 36 * 1024 * (16_384 + 160 + 64) * 2)
    one_a_call = plan_memory(s, t, gpus=8, video_tokens=16_384, gradient_accumulation_steps=4, rollout_batch_size=1)
    assert {p.name: p.bytes for p in one_a_call.parts}["KV cache"] == pytest.approx(part["KV cache"] / 4)
    assert one_a_call.phase_bytes("rollout") < plan.phase_bytes("rollout")
    # docs/scaling-out.md: 16 bytes a trained student parameter (4 for a frozen one) + 2 a teacher
    # parameter, over 8 GPUs: 25.0 GB
    state = sum(part[k] for k in ("student weights", "student gradients", "AdamW state", "teacher weights"))
    assert state / 1e9 == pytest.approx((16 * 8.191e9 + 4 * 0.576e9 + 2 * 33.357e9) / 8 / 1e9, rel=1e-3)
    assert plan_memory(s, t, gpus=8, train_vision=True).phase_bytes("optimizer") > plan.phase_bytes("optimizer")
    assert plan.fits and not plan.advice
    assert plan.peak_bytes == max(plan.phase_bytes(ph) for ph in ("rollout", "teacher", "student", "optimizer"))


def test_teacher_heads_and_gathered_rollout_add_what_they_hold(sizes):
    s, t = sizes["qwen3-vl-8b"], sizes["qwen3-vl-32b"]
    one = plan_memory(s, t, gpus=8, gradient_accumulation_steps=4)
    four = plan_memory(s, t, gpus=8, gradient_accumulation_steps=4, teacher_heads=4)
    assert four.phase_bytes("student") - one.phase_bytes("student") == pytest.approx(3 * 2 * 151_936 * 5_120)
    sharded = plan_memory(s, t, gpus=8, gradient_accumulation_steps=4, rollout="sharded")
    assert "rollout copy of the student" not in {p.name for p in sharded.parts}
    assert sharded.phase_bytes("rollout") < one.phase_bytes("rollout") - 10 * GIB


def test_ddp_of_the_papers_pair_does_not_fit_and_says_what_to_change(sizes):
    plan = plan_memory(sizes["qwen3-vl-8b"], sizes["qwen3-vl-32b"], engine="ddp", gpus=8, video_tokens=16_384)
    assert not plan.fits and plan.peak_bytes > 80 * GIB
    assert any("fsdp2" in a for a in plan.advice)
    assert "does NOT fit" in plan.summary() and "To fit:" in plan.summary()


def test_max_video_tokens_is_the_edge_of_fitting(sizes):
    kw = dict(gpus=8, gpu_memory_gib=80, gradient_accumulation_steps=4)
    most = max_video_tokens(sizes["qwen3-vl-8b"], sizes["qwen3-vl-32b"], **kw)
    assert 16_384 < most < 115_200
    assert plan_memory(sizes["qwen3-vl-8b"], sizes["qwen3-vl-32b"], video_tokens=most, **kw).fits
    assert not plan_memory(sizes["qwen3-vl-8b"], sizes["qwen3-vl-32b"], video_tokens=most + 1, **kw).fits
    advice = plan_memory(sizes["qwen3-vl-8b"], sizes["qwen3-vl-32b"], video_tokens=115_200, **kw).advice
    assert any(f"{most:,}" in a for a in advice)


def test_grpo_needs_no_teacher_and_generates_a_group(sizes):
    plan = plan_memory(sizes["qwen3-vl-2b"], objective="grpo", gpus=1, video_tokens=4096)
    assert plan.settings["num_generations"] == 8 and "teacher weights" not in {p.name for p in plan.parts}
    one = plan_memory(sizes["qwen3-vl-2b"], objective="grpo", gpus=1, video_tokens=4096, num_generations=1)
    kv = {p.name: p.bytes for p in plan.parts}["KV cache"]
    assert kv == pytest.approx(8 * {p.name: p.bytes for p in one.parts}["KV cache"])


@pytest.mark.parametrize(
    "kw, word",
    [
        ({"engine": "zero3"}, "engine"),
        ({"gpus": 0}, "gpus"),
        ({"video_tokens": -1}, "video_tokens"),
        ({"dtype": "int8"}, "dtype"),
        ({"headroom": 1.5}, "headroom"),
        ({"rollout": "x"}, "rollout"),
        ({"engine": "ddp", "teacher_placement": "shard"}, "teacher_placement"),
    ],
)
def test_bad_settings_name_the_argument(sizes, kw, word):
    with pytest.raises(ValueError, match=word):
        plan_memory(sizes["qwen3-vl-2b"], sizes["qwen3-vl-8b"], **kw)


def test_bad_models_are_refused(tmp_path):
    with pytest.raises(ValueError, match="teacher is required"):
        plan_memory("qwen3-vl-2b")
    with pytest.raises(ValueError, match="config.json"):
        model_size(tmp_path)
    with pytest.raises(TypeError, match="model must be"):
        model_size(3)


def test_a_run_plans_its_own_settings_and_says_when_it_does_not_fit():
    """What a run on CUDA checks at start: the plan of its models, engine and video budget
    (--preset video-opd's 14,336 tokens a video), and the warning with the numbers."""
    import torch

    from videoopd import train as T
    from videoopd.data.video import DecodeConfig
    from videoopd.qwen.tiny import build_tiny_processor, build_tiny_tokenizer
    from videoopd.training.loop import make_accelerator
    from videoopd.training.post_training import fit_warning, run_memory_plan

    tokenizer = build_tiny_tokenizer("qwen3_vl")
    processor = build_tiny_processor("qwen3_vl", tokenizer)
    student, teacher = (build_tiny_model("qwen3_vl", tokenizer, seed=s, hidden_size=h) for s, h in ((1, 32), (2, 64)))
    cfg = T.resolve_config(
        [
            "--preset",
            "video-opd",
            "--student",
            "s",
            "--teacher",
            "t",
            "--device",
            "cpu",
            "--gradient-accumulation-steps",
            "4",
            "--rounds",
            "0",
        ]
    )
    decode = DecodeConfig.for_run(processor, cfg)
    accelerator = make_accelerator(cfg)
    roomy = run_memory_plan(cfg, accelerator, student, teacher, decode, gpu_memory_gib=80)
    assert roomy.fits and roomy.settings["video_tokens"] == 14336
    assert roomy.settings["engine"] == "ddp" and roomy.settings["gpus"] == 1
    tight = run_memory_plan(cfg, accelerator, student, teacher, decode, gpu_memory_gib=0.05)
    assert not tight.fits
    message = fit_warning(tight, decode)
    assert "14,336 video tokens" in message and "GiB" in message and "does NOT fit" in message
    assert next(student.parameters()).dtype == torch.float32 and roomy.settings.get("dtype", "fp32") == "fp32"
