"""Qwen2.5-VL / Qwen3-VL: loading, pair checks, hidden states and head access, processors, prompts,
collators, generation, LoRA, tiny models."""
