"""The sizes of a model that a memory plan needs (parameters, layers, widths, vision tower), read from
a checkpoint folder, a config object or one of the named Qwen3-VL configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

__all__: list[str] = []  # nothing here is promised: docs/api.md


# Qwen3-VL-{2B,8B,32B}-Instruct's config.json, text and vision parts (the fields that size the model).
_QWEN3_VL = {
    "qwen3-vl-2b": dict(
        hidden_size=2048,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        intermediate_size=6144,
        tie=True,
        vision=(1024, 24, 4096),
    ),
    "qwen3-vl-8b": dict(
        hidden_size=4096,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=12288,
        tie=False,
        vision=(1152, 27, 4304),
    ),
    "qwen3-vl-32b": dict(
        hidden_size=5120,
        num_hidden_layers=64,
        num_attention_heads=64,
        num_key_value_heads=8,
        intermediate_size=25600,
        tie=False,
        vision=(1152, 27, 4304),
    ),
}
NAMED_CONFIGS = tuple(_QWEN3_VL)


def named_config(name: str) -> Any:
    """The transformers ``Qwen3VLConfig`` of one of :data:`NAMED_CONFIGS` (no download)."""
    from transformers import Qwen3VLConfig

    if name not in _QWEN3_VL:
        raise ValueError(f"config name must be one of {', '.join(NAMED_CONFIGS)}, got {name!r}")
    spec = dict(_QWEN3_VL[name])
    tie = spec.pop("tie")
    width, depth, intermediate = spec.pop("vision")
    text = {
        **spec,
        "vocab_size": 151_936,
        "head_dim": 128,
        "max_position_embeddings": 262_144,
        "rope_scaling": {"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True},
        "tie_word_embeddings": tie,
    }
    vision = {
        "depth": depth,
        "hidden_size": width,
        "intermediate_size": intermediate,
        "num_heads": 16,
        "out_hidden_size": spec["hidden_size"],
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [5, 11, 17] if depth == 24 else [8, 16, 24],
    }
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie)


@dataclasses.dataclass(frozen=True)
class ModelSize:
    """What sizes a Qwen-VL model's memory, counted from its parameters on the meta device."""

    name: str
    params: int  # all parameters
    vision_params: int
    embed_params: int
    head_params: int  # 0 when the head is tied to the embedding
    layer_params: int  # one decoder layer (the largest FSDP2 unit)
    vision_block_params: int
    layers: int
    width: int
    q_width: int  # heads x head_dim
    kv_width: int  # kv heads x head_dim
    intermediate: int
    vocab: int
    vision_width: int
    vision_intermediate: int
    deepstack: int  # visual features added to the first decoder layers (Qwen3-VL: 3)


def _text_and_vision(config: Any) -> tuple[Any, Any]:
    return getattr(config, "text_config", config), getattr(config, "vision_config", None)


def model_size(model: str | Path | Any, name: str | None = None) -> ModelSize:
    """:class:`ModelSize` of a named config, a model folder (its ``config.json``) or a config object."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    if isinstance(model, ModelSize):
        return model
    if isinstance(model, str) and model in _QWEN3_VL:
        name, config = model, named_config(model)
    elif isinstance(model, (str, Path)):
        if not (Path(model) / "config.json").is_file():
            raise ValueError(
                f"model must be one of {', '.join(NAMED_CONFIGS)} or a folder with a config.json, got {str(model)!r}"
            )
        name, config = name or str(model), AutoConfig.from_pretrained(model)
    elif hasattr(model, "to_dict"):
        name, config = name or type(model).__name__, model
    else:
        raise TypeError(
            f"model must be a config name, a model folder or a transformers config, got {type(model).__name__}"
        )
    with torch.device("meta"):
        net = AutoModelForImageTextToText.from_config(config)
    text, vision = _text_and_vision(config)
    inner = net.model
    visual = getattr(inner, "visual", None)
    count = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
    embed = net.get_input_embeddings()
    head = net.get_output_embeddings()
    tied = head is not None and head.weight is embed.weight
    layers = inner.language_model.layers
    blocks = getattr(visual, "blocks", None) or []
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return ModelSize(
        name=name,
        params=count(net),
        vision_params=count(visual),
        embed_params=count(embed),
        head_params=0 if tied else count(head),
        layer_params=max(count(layer) for layer in layers),
        vision_block_params=max((count(b) for b in blocks), default=0),
        layers=len(layers),
        width=text.hidden_size,
        q_width=text.num_attention_heads * head_dim,
        kv_width=text.num_key_value_heads * head_dim,
        intermediate=text.intermediate_size,
        vocab=text.vocab_size,
        vision_width=getattr(vision, "hidden_size", 0) if vision is not None else 0,
        vision_intermediate=getattr(vision, "intermediate_size", 0) if vision is not None else 0,
        deepstack=len(getattr(vision, "deepstack_visual_indexes", None) or []) if vision is not None else 0,
    )
