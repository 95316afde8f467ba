"""Tiny Qwen-VL models, tokenizer and processor built entirely in code (no downloads).

For tests, the CPU demo and CI: a byte-level tokenizer with the special tokens Qwen-VL
needs and a Qwen-style chat template, the Qwen2.5-VL / Qwen3-VL processor around it, and
randomly initialised models from small configs. ``save_tiny_checkpoint`` writes all of it
as a local checkpoint that ``python -m videoopd.eval --model DIR`` loads like a real one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["build_tiny_model", "build_tiny_processor", "build_tiny_tokenizer", "save_tiny_checkpoint"]

FAMILIES = ("qwen2_5_vl", "qwen3_vl")

# The Qwen-VL control tokens, in the Qwen order (their ids are contiguous after the bytes).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The Qwen2.5-VL chat template: a default system prompt when none is given, vision
# placeholders for image/video content items.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The Qwen3-VL (Instruct) chat template, for the message shapes videoopd produces: no
# default system prompt.
QWEN3_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CHAT_TEMPLATES = {"qwen2_5_vl": QWEN2_5_VL_CHAT_TEMPLATE, "qwen3_vl": QWEN3_VL_CHAT_TEMPLATE}


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def build_tiny_tokenizer(family: str = "qwen2_5_vl") -> Any:
    """A byte-level BPE tokenizer with no merges (every UTF-8 byte is a token, so any text
    round-trips), the Qwen-VL special tokens and the family's chat template."""
    _check_family(family)
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={symbol: i for i, symbol in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in QWEN_SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )
    tokenizer.chat_template = CHAT_TEMPLATES[family]
    return tokenizer


def build_tiny_processor(
    family: str = "qwen2_5_vl", tokenizer: Any | None = None, use_torchvision: bool | None = None
) -> Any:
    """The family's processor around ``tokenizer`` (default: :func:`build_tiny_tokenizer`).

    The video processor is transformers' own when torchvision is importable (or
    ``use_torchvision=True``), else :class:`videoopd.qwen.processing.TorchQwenVideoProcessor`.
    """
    _check_family(family)
    from videoopd.qwen.processing import (
        QWEN_VIDEO_DEFAULTS,
        TorchQwenVideoProcessor,
        pil_image_processor_class,
        torchvision_available,
    )

    if tokenizer is None:
        tokenizer = build_tiny_tokenizer(family)
    if use_torchvision is None:
        use_torchvision = torchvision_available()
    defaults = {k: v for k, v in QWEN_VIDEO_DEFAULTS[family].items() if k != "hub_class"}
    if use_torchvision:
        from transformers import Qwen2VLImageProcessor

        if family == "qwen2_5_vl":
            from transformers import Qwen2VLVideoProcessor as VideoProcessor
        else:
            from transformers import Qwen3VLVideoProcessor as VideoProcessor
        video_processor = VideoProcessor(**defaults)
        image_processor = Qwen2VLImageProcessor(
            patch_size=defaults["patch_size"], image_mean=defaults["image_mean"], image_std=defaults["image_std"]
        )
    else:
        video_processor = TorchQwenVideoProcessor.for_family(family)
        image_processor = pil_image_processor_class()(
            patch_size=defaults["patch_size"], image_mean=defaults["image_mean"], image_std=defaults["image_std"]
        )
    if use_torchvision:
        if family == "qwen2_5_vl":
            from transformers import Qwen2_5_VLProcessor as processor_class
        else:
            from transformers import Qwen3VLProcessor as processor_class
    else:
        from videoopd.qwen.processing import torchvision_free_processor_class

        processor_class = torchvision_free_processor_class(family)
    return processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATES[family],
    )


def vision_token_ids(tokenizer: Any) -> dict[str, int]:
    """The Qwen-VL vision placeholder tokens' ids as a model config names them (image, video,
    vision start / end); ValueError when the tokenizer lacks one."""
    ids = {
        name: tokenizer.convert_tokens_to_ids(token)
        for name, token in (
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        )
    }
    if any(value is None or value == tokenizer.unk_token_id for value in ids.values()):
        raise ValueError(f"tokenizer lacks the Qwen-VL vision tokens: {ids}")
    return ids


def build_tiny_model(
    family: str = "qwen2_5_vl",
    tokenizer: Any | None = None,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_hidden_size: int = 32,
    vision_depth: int = 2,
) -> torch.nn.Module:
    """A randomly initialised ``*ForConditionalGeneration`` of the family, in float32, eval mode.

    The vocabulary is the tokenizer's; head_dim is 16 so that M-RoPE's (t, h, w) sections
    are (2, 3, 3) frequency pairs.
    """
    _check_family(family)
    if tokenizer is None:
        tokenizer = build_tiny_tokenizer(family)
    for name, value in (
        ("hidden_size", hidden_size),
        ("num_layers", num_layers),
        ("vision_hidden_size", vision_hidden_size),
        ("vision_depth", vision_depth),
    ):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if hidden_size % 16 or vision_hidden_size % 16:
        raise ValueError("hidden_size and vision_hidden_size must be multiples of 16 (head_dim 16)")
    ids = vision_token_ids(tokenizer)
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": hidden_size // 16,
        "num_key_value_heads": max(1, hidden_size // 32),
        "max_position_embeddings": 4096,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(seed)
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        text["rope_scaling"] = {"type": "mrope", "mrope_section": [2, 3, 3]}
        config = Qwen2_5_VLConfig(
            text_config=text,
            vision_config={
                "depth": vision_depth,
                "hidden_size": vision_hidden_size,
                "intermediate_size": 2 * vision_hidden_size,
                "num_heads": vision_hidden_size // 16,
                "out_hidden_size": hidden_size,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "tokens_per_second": 2,
                "window_size": 56,
                "fullatt_block_indexes": [vision_depth - 1],
            },
            **ids,
        )
        model = Qwen2_5_VLForConditionalGeneration(config)
    else:
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        text["head_dim"] = 16
        text["rope_scaling"] = {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True}
        config = Qwen3VLConfig(
            text_config=text,
            vision_config={
                "depth": vision_depth,
                "hidden_size": vision_hidden_size,
                "intermediate_size": 2 * vision_hidden_size,
                "num_heads": vision_hidden_size // 16,
                "out_hidden_size": hidden_size,
                "patch_size": 16,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "num_position_embeddings": 64,
                "deepstack_visual_indexes": [0],
            },
            **ids,
        )
        model = Qwen3VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return model.eval()


def save_tiny_checkpoint(out: str | Path, family: str = "qwen2_5_vl", seed: int = 0, **model_kwargs: Any) -> Path:
    """Write a tiny model and its processor to ``out`` as a local checkpoint; return ``out``."""
    _check_family(family)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(family)
    processor = build_tiny_processor(family, tokenizer)
    model = build_tiny_model(family, tokenizer, seed=seed, **model_kwargs)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
