"""Evaluation: answer parsing, IoU metrics, batched greedy evaluation (one or many processes)."""
