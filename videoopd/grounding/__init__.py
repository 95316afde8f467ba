"""Temporal grounding's pure pieces, beneath every other package: answer parsing
(:mod:`videoopd.grounding.parsing`), the prompt texts of each style
(:mod:`videoopd.grounding.prompts`), the evaluation protocols of published benchmarks
(:mod:`videoopd.grounding.protocols`), temporal IoU, R1@m / mIoU and QVHighlights'
moment-retrieval metrics (:mod:`videoopd.grounding.metrics`) and the IoU rewards of GRPO
(:mod:`videoopd.grounding.rewards`). No models, no torch."""
