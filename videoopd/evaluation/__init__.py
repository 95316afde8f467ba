"""Evaluation: batched greedy evaluation on one or many processes, predictions files, run comparisons
(the answer parsing and IoU metrics it scores with: :mod:`videoopd.grounding`)."""
