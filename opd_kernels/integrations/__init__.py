"""Integrations of opd_kernels with the trainers its users already run.

Each submodule imports its library when it is imported itself, never before:
``import opd_kernels`` (and ``import opd_kernels.integrations``) import neither TRL nor
transformers.

    opd_kernels.integrations.trl   TRL's DistillationTrainer with its reverse-KL loss
                                   (beta = 1) computed by fused_reverse_kl (extra "trl")
"""
