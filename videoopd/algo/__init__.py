"""Algorithms: on-policy rollouts and the per-batch objectives (OPD sampled / full, SFT)."""
