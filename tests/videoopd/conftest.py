"""Shared fixtures: synthetic videos and tiny Qwen-VL models, all built offline."""

import os

# Nothing in these tests may reach the Hugging Face hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from videoopd.data.synthetic import generate_dataset  # noqa: E402

# Small frames keep the tiny models fast: a 64x96 video sized for factor 28 is 56x84
# (2x3 merged tokens a temporal patch), for factor 32 it is 64x96 (2x3 again).
SMALL_PIXELS = {"min_pixels": 56 * 56, "max_pixels": 64 * 96}


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    generate_dataset(out, num_videos=3, seed=0, duration=8.0, fps=4, height=64, width=96, events_per_video=2)
    return out


@pytest.fixture(scope="session")
def tiny_qwen25():
    from videoopd.qwen.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer("qwen2_5_vl")
    processor = build_tiny_processor("qwen2_5_vl", tokenizer)
    model = build_tiny_model("qwen2_5_vl", tokenizer, seed=0)
    return model, processor


@pytest.fixture(scope="session")
def tiny_qwen25_checkpoint(tmp_path_factory):
    from videoopd.qwen.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_qwen25"), "qwen2_5_vl", seed=0)
