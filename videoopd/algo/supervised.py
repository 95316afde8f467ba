"""Supervised fine-tuning's objective: the mean negative log-likelihood of the answer tokens, through
``token_logprobs`` over base-model hidden states."""

from __future__ import annotations

from typing import Any

import torch

from opd_kernels import token_logprobs
from videoopd.algo.rollouts import GenerationContext, MicroBatch, to_device

__all__: list[str] = []  # nothing here is promised: docs/api.md


class SupervisedObjective:
    """SFT: the mean negative log-likelihood of the answer tokens (and the closing end-of-turn
    token) over the step's answer tokens, from base-model hidden states through
    ``token_logprobs``. Batches come from :class:`videoopd.data.datasets.SFTCollator`."""

    name = "sft"

    def __init__(self, backend: str = "auto"):
        self.backend = backend

    def rollout(self, ctx: GenerationContext, batch: dict[str, Any]) -> dict[str, Any]:
        return batch

    def rollout_step(self, ctx: GenerationContext, batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(batches)

    def score_step(self, ctx: GenerationContext, batches: list[dict[str, Any]]) -> list[MicroBatch]:
        return [self.score(ctx, batch) for batch in batches]

    def score(self, ctx: GenerationContext, batch: dict[str, Any]) -> MicroBatch:
        inputs = to_device(batch["inputs"], ctx.device)
        answer_mask = batch["answer_mask"].to(ctx.device)
        tokens = answer_mask[:, 1:].sum().double()
        return MicroBatch(
            student_inputs=dict(inputs),
            loss_fn=lambda hidden, weight: self.loss(hidden, weight, inputs["input_ids"], answer_mask),
            units=tokens,
            sums={
                "answer_tokens": tokens,
                "sequences": torch.tensor(float(answer_mask.shape[0]), device=ctx.device, dtype=torch.float64),
                "context_tokens": inputs["attention_mask"].sum().double(),
            },
            records=list(batch["records"]),
        )

    def loss(
        self, hidden: torch.Tensor, weight: torch.Tensor, input_ids: torch.Tensor, answer_mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(NLL summed over the answer tokens, {}). Only the hidden states that predict answer
        tokens enter ``token_logprobs``."""
        predicts = answer_mask[:, 1:]
        targets = input_ids[:, 1:][predicts]
        logprobs = token_logprobs(hidden[:, :-1][predicts], weight, targets, backend=self.backend)
        return -logprobs.sum(), {}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        return {"answer_tokens": int(sums.get("answer_tokens", 0.0))}
