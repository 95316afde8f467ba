"""Checks of a Hugging Face checkpoint folder before loading it: config, weights, tokenizer, chat template;
each failure a :class:`CheckpointError` naming the file and what is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__: list[str] = []  # nothing here is promised: docs/api.md


class CheckpointError(ValueError):
    """A model folder that cannot be loaded; the message names the file and what is wrong."""


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # or vocab.json + merges.txt (byte-level BPE)
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def _json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"weights file missing: {path}")
    try:
        with safe_open(str(path), framework="pt") as weights:  # reads the header only
            weights.keys()
    except Exception as exc:  # SafetensorError: truncated, not safetensors, bad header
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); re-save or re-download it") from None


def _check_weights(path: Path) -> None:
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").exists():
        _check_safetensors(path / "model.safetensors")
    elif index.is_file():
        weight_map = _json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        for shard in sorted(set(weight_map.values())):
            _check_safetensors(path / shard)
    elif (path / "pytorch_model.bin.index.json").is_file():
        weight_map = _json_object(path / "pytorch_model.bin.index.json").get("weight_map") or {}
        missing = sorted(shard for shard in set(weight_map.values()) if not (path / shard).is_file())
        if not weight_map or missing:
            raise CheckpointError(
                f"{path / 'pytorch_model.bin.index.json'} names missing weight shards: {missing[:3] or 'none listed'}"
            )
    elif not (path / "pytorch_model.bin").is_file():
        raise CheckpointError(
            f"{path} has no weights (model.safetensors, a sharded model.safetensors.index.json "
            "with its shards, or pytorch_model.bin)"
        )


def _check_tokenizer(path: Path) -> None:
    has_bpe_files = (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
    if not (has_bpe_files or any((path / name).is_file() for name in TOKENIZER_FILES)):
        # transformers would build an empty tokenizer here, without a word
        raise CheckpointError(
            f"{path} has no tokenizer ({' or '.join(TOKENIZER_FILES)}, or vocab.json + "
            "merges.txt): copy the tokenizer files of the model it was trained from"
        )
    if any((path / name).is_file() for name in CHAT_TEMPLATE_FILES):
        return
    for name in ("tokenizer_config.json", "processor_config.json"):
        if (path / name).is_file() and _json_object(path / name).get("chat_template"):
            return
    raise CheckpointError(
        f"{path} has no chat template ({' or '.join(CHAT_TEMPLATE_FILES)}, or chat_template "
        "in tokenizer_config.json): prompts cannot be rendered; copy it from the model it was "
        "trained from"
    )


def check_checkpoint(path: str | Path) -> Path:
    """``path`` as a loadable Hugging Face Qwen-VL checkpoint folder, checked cheaply (no
    tensor is read): config.json with a model_type transformers knows, weights whose headers
    read, a tokenizer and a chat template. Raises :class:`CheckpointError` naming what is wrong."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model folder not found: {path}")
    config_file = path / "config.json"
    if not config_file.is_file() and (path / "adapter_config.json").is_file():
        base = adapter_base(path)
        try:
            check_checkpoint(base)
        except CheckpointError as exc:
            raise CheckpointError(f"{path} holds a LoRA adapter over {base}, which does not load: {exc}") from None
        _check_tokenizer(path)
        return path
    if not config_file.is_file():
        raise CheckpointError(f"{path} has no config.json (not a Hugging Face checkpoint)")
    model_type = _json_object(config_file).get("model_type")
    if not model_type:
        raise CheckpointError(f"{config_file} has no model_type")
    if model_type not in CONFIG_MAPPING:
        raise CheckpointError(f"{config_file}: model_type {model_type!r} is unknown to this transformers")
    _check_weights(path)
    _check_tokenizer(path)
    return path


def adapter_base(path: str | Path) -> Path:
    """The base model folder a peft LoRA adapter folder records (``adapter_config.json``'s
    ``base_model_name_or_path``: as the training run gave it, absolute or relative to the
    working folder it ran in; a relative one is also looked for beside the adapter folder)."""
    path = Path(path)
    recorded = _json_object(path / "adapter_config.json").get("base_model_name_or_path")
    if not recorded:
        raise CheckpointError(f"{path / 'adapter_config.json'} names no base_model_name_or_path")
    base = Path(recorded)
    if not base.is_absolute() and not base.is_dir() and (path / base).is_dir():
        base = path / base
    return base
