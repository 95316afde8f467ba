"""Algorithms: on-policy rollouts, the per-batch objectives (OPD sampled / full, SFT) and the TVDF
round selection (curriculum)."""
