"""opd_kernels: on-policy distillation losses over full LLM vocabularies, without [tokens, vocab] tensors.

Public API:
    fused_reverse_kl(student_hidden, student_weight, teacher_hidden, teacher_weight, *, mask,
                     temperature, reduction, backend, schedule, chunk_size)
    FusedReverseKL(...)  -- the same as an nn.Module
"""

from .reverse_kl import FusedReverseKL, fused_reverse_kl

__all__ = ["fused_reverse_kl", "FusedReverseKL"]
__version__ = "0.1.0"
