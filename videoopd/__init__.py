"""videoopd: on-policy distillation for video LLMs on temporal video grounding."""
