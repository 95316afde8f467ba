"""GRPO, the reinforcement-learning baseline, as an objective of the one loop.

Each prompt is answered ``num_generations`` (G) times (the collator repeats it, each copy with
its own rollout seed), each answer is rewarded by its temporal IoU (:mod:`videoopd.grounding.rewards`),
and the rewards are normalised within the prompt's group into one advantage per answer:
``(r - mean) / (std + eps)`` (``advantage="std"``, GRPO's) or ``r - mean`` (``"mean"``,
Dr. GRPO's). The student's log-probs of its own tokens come from base-model hidden states
and enter :func:`opd_kernels.policy_gradient_loss` (computed with them in one pass from the
hidden states, :func:`opd_kernels.fused_policy_gradient_loss`), the same token-level
clipped policy-gradient loss as on-policy distillation's sampled objective (whose advantage is
the per-token ``lp_teacher - lp_student``), with the sampler's log-probs as the old policy's
and an optional k3 KL penalty to a frozen reference policy (``beta``, default 0 as in TimeLens).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from opd_kernels import fused_policy_gradient_loss
from videoopd.algo.objectives import (
    GenerationContext,
    MicroBatch,
    RolledBatch,
    SampledObjective,
    answer_slice,
    score_rollout,
    scoring_inputs,
)
from videoopd.grounding.rewards import iou_reward, is_exact_format
from videoopd.qwen.generation import Rollout

__all__: list[str] = []  # nothing here is promised: docs/api.md

ADVANTAGES = ("std", "mean")


class GroupedCollator:
    """``collator`` over each item repeated ``num_generations`` times in a row: a batch of B
    prompts becomes B groups of G identical prompts (G rollouts each, one per seed)."""

    def __init__(self, collator: Callable[[list[Any]], dict[str, Any]], num_generations: int):
        if num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {num_generations!r}")
        self.collator, self.num_generations = collator, num_generations

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        return self.collator([item for item in items for _ in range(self.num_generations)])


def group_advantages(rewards: torch.Tensor, group_size: int, mode: str = "std", eps: float = 1e-4) -> torch.Tensor:
    """Per-answer advantages [N] of ``rewards`` [N] (N = groups x ``group_size``, a group's
    answers adjacent): ``r - mean(group)`` divided by ``std(group) + eps`` for "std" (the
    unbiased std, as TRL), not divided for "mean". A group of equal rewards gets 0."""
    if mode not in ADVANTAGES:
        raise ValueError(f"mode must be one of {ADVANTAGES}, got {mode!r}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be [groups * {group_size}], got shape {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if mode == "std" and group_size > 1:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


class GRPOObjective(SampledObjective):
    """Group-relative policy optimisation on temporal-grounding rewards (see the module
    docstring). Batches come from a :class:`GroupedCollator`. ``reference``: the frozen
    reference policy (needed when ``beta > 0``)."""

    name = "grpo"

    def __init__(
        self,
        processor: Any,
        *,
        num_generations: int = 8,
        advantage: str = "std",
        clip_eps: float = 0.2,
        beta: float = 0.0,
        reference: Any = None,
        format_reward: float = 0.0,
        reduction: str = "mean",
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        seed: int = 0,
        vocab_size: int | None = None,
        backend: str = "auto",
        rollout_batch_size: int = 0,
    ):
        if advantage not in ADVANTAGES:
            raise ValueError(f"advantage must be one of {ADVANTAGES}, got {advantage!r}")
        super().__init__(
            processor,
            reduction=reduction,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
            vocab_size=vocab_size,
            backend=backend,
            num_generations=num_generations,
            rollout_batch_size=rollout_batch_size,
        )
        if beta > 0 and reference is None:
            raise ValueError("beta > 0 needs a reference model")
        self.advantage = advantage
        self.clip_eps = clip_eps
        self.beta = beta
        self.reference = reference
        self.format_reward = format_reward

    def score(self, ctx: GenerationContext, rolled: RolledBatch) -> MicroBatch:
        inputs, rollout, records = rolled.inputs, rolled.rollout, rolled.records
        scored = [iou_reward(a, r.span) for a, r in zip(rollout.answers, records)]
        ious = torch.tensor([s[0] for s in scored], dtype=torch.float64, device=ctx.device)
        exact = torch.tensor(
            [float(is_exact_format(a)) for a in rollout.answers], dtype=torch.float64, device=ctx.device
        )
        rewards = ious + self.format_reward * exact
        advantages = group_advantages(rewards, self.num_generations, self.advantage)
        grouped = rewards.view(-1, self.num_generations)
        reference_view = None
        if self.beta > 0:
            reference_view = score_rollout(
                self.reference,
                self.reference,
                inputs,
                rollout,
                objective="sampled",
                temperature=self.temperature,
                vocab_size=self.vocab(ctx),
                device=ctx.device,
                backend=self.backend,
            )["teacher_logprobs"]
        tokens, sequences, units = self.units(ctx, rollout)
        sums = {
            "answer_tokens": tokens,
            "sequences": sequences,
            "context_tokens": rollout.attention_mask.sum().double().to(ctx.device),
            "reward_sum": rewards.sum(),
            "iou_sum": ious.sum(),
            "parsed_answers": torch.tensor(float(sum(s[1] for s in scored)), dtype=torch.float64, device=ctx.device),
            "groups": torch.tensor(float(grouped.shape[0]), dtype=torch.float64, device=ctx.device),
            "equal_reward_groups": (grouped.max(dim=1).values == grouped.min(dim=1).values).sum().double(),
        }
        return MicroBatch(
            student_inputs=scoring_inputs(inputs, rollout, ctx.device, sampler=True),
            loss_fn=lambda hidden, weight: self.loss(hidden, weight, rollout, advantages, reference_view),
            units=units,
            sums=sums,
            records=list(records),
        )

    def loss(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        rollout: Rollout,
        advantages: torch.Tensor,
        reference_logprobs: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss summed over this micro-batch's answer tokens, metric sums)."""
        h, tokens, mask = answer_slice(hidden, rollout)
        old = rollout.sampler_logprobs.to(h.device) if rollout.sampler_logprobs is not None else None
        per_token_advantage = advantages.to(torch.float32)[:, None].expand(mask.shape)
        # policy_gradient_loss on token_logprobs, in one pass from the hidden states
        loss, m = fused_policy_gradient_loss(
            h,
            weight,
            tokens,
            mask,
            advantages=per_token_advantage,
            old_logprobs=old,
            clip_eps=self.clip_eps,
            reference_logprobs=reference_logprobs,
            beta=self.beta,
            temperature=self.temperature,
            reduction="sum",
            backend=self.backend,
        )
        count = m["tokens"].double()
        sums = {
            f"{name}_sum": (m[name] * count).double()
            for name in ("importance_ratio", "clipped_fraction", "reference_kl")
            if name in m
        }
        return loss, sums

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        tokens = max(1.0, sums.get("answer_tokens", 0.0))
        sequences = max(1.0, sums.get("sequences", 0.0))
        out = {
            "reward": sums.get("reward_sum", 0.0) / sequences,
            "rollout_mIoU": 100 * sums.get("iou_sum", 0.0) / sequences,
            "parsed_rate": sums.get("parsed_answers", 0.0) / sequences,
            "equal_reward_groups": sums.get("equal_reward_groups", 0.0) / max(1.0, sums.get("groups", 0.0)),
            "answer_tokens": int(sums.get("answer_tokens", 0.0)),
            "mean_answer_len": sums.get("answer_tokens", 0.0) / sequences,
            "rollouts": int(sums.get("sequences", 0.0)),
        }
        for name in ("importance_ratio", "clipped_fraction", "reference_kl"):
            if f"{name}_sum" in sums:
                out[name] = sums[f"{name}_sum"] / tokens
        return out
