"""The CPU demo (tiny Qwen3-VL teacher and student on synthetic videos) and how its models are made."""
