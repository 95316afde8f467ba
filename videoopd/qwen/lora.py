"""LoRA adapters (peft) for a Qwen-VL policy: adapters in the language model's projections, the
vision tower and the LM head frozen (so the kernels skip the head's weight gradient).

The rest of videoopd sees through the ``PeftModel``: :func:`videoopd.qwen.models.unwrap_peft`
gives the Hugging Face model whose modules carry the adapters, which is where hidden states and
the head come from. Saving a ``PeftModel`` writes the adapter; :func:`merged_model` builds the
plain model with the adapters folded in (``--merge-lora``).
"""

from __future__ import annotations

import re
from typing import Any

import torch

__all__: list[str] = []  # nothing here is promised: docs/api.md

# The language model's attention and MLP projections (Qwen2.5-VL and Qwen3-VL name them alike).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def target_pattern(targets: str | tuple[str, ...] | list[str]) -> str:
    """A peft ``target_modules`` regex matching the named modules *inside the language model
    only*: the vision tower has modules of the same names (Qwen2.5-VL's vision MLP)."""
    names = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else [t.strip() for t in targets]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"targets names no module: {targets!r}")
    return r"(.*\.)?language_model\.(.*\.)?(" + "|".join(re.escape(n) for n in names) + ")"


def apply_lora(
    model: Any,
    *,
    r: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets: str | tuple[str, ...] = DEFAULT_TARGETS,
) -> Any:
    """``model`` (a Qwen-VL ``*ForConditionalGeneration``) wrapped as a ``peft.PeftModel`` with
    rank-``r`` adapters (``lora_alpha`` = ``alpha``, default ``2 r``) on ``targets``; every other
    weight frozen. Raises ValueError for r < 1 or targets that match no module."""
    from peft import LoraConfig, get_peft_model

    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"r must be a positive integer, got {r!r}")
    config = LoraConfig(
        r=r,
        lora_alpha=alpha if alpha is not None else 2 * r,
        lora_dropout=dropout,
        target_modules=target_pattern(targets),
        bias="none",
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:
        raise ValueError(f"LoRA targets {targets!r} match no module of the language model: {exc}") from None
    return peft_model


def is_lora(model: Any) -> bool:
    """True for a ``peft.PeftModel``."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def merged_model(peft_model: Any, state_dict: dict[str, torch.Tensor]) -> Any:
    """A plain Hugging Face model (on the CPU) of ``peft_model``'s architecture with the adapters
    of ``state_dict`` (a full ``PeftModel`` state dict, e.g. gathered from FSDP2 shards) merged
    into its weights, built by peft's ``merge_and_unload`` on a copy: the training model is left
    as it is. Only the state dict's tensors are allocated (the copy is built on the meta device)."""
    from peft import get_peft_model

    base = peft_model.get_base_model()
    with torch.device("meta"):
        skeleton = type(base)._from_config(base.config)
    copy = get_peft_model(skeleton, peft_model.peft_config[peft_model.active_adapter])
    copy.load_state_dict({k: v.detach().cpu() for k, v in state_dict.items()}, strict=True, assign=True)
    merged = copy.merge_and_unload()
    trained = dict(base.named_buffers())
    for name, buffer in list(merged.named_buffers()):  # non-persistent (rotary tables): not in a state dict
        if buffer.is_meta:
            owner, _, leaf = name.rpartition(".")
            merged.get_submodule(owner).register_buffer(leaf, trained[name].detach().cpu().clone(), persistent=False)
    return merged
