"""Temporal grounding's pure pieces, beneath every other package: answer parsing, temporal IoU,
R1@m / mIoU (:mod:`videoopd.grounding.metrics`) and the IoU rewards of GRPO
(:mod:`videoopd.grounding.rewards`). No models, no torch."""
