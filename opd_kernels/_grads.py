"""Gradients a terminal loss forms in its forward pass, handed to autograd without a copy.

A fused loss (``fused_reverse_kl``, ``fused_policy_gradient_loss``) computes dL/dh and dL/dW in
the same pass as L, so its backward only scales them by grad_output. Scaling a copy
(``dW * grad_output``) would hold a second [V, D] buffer while autograd stores the first as
``W.grad``; instead the first backward scales the buffers in place and drops the Function's own
reference, so that autograd's gradient accumulation keeps the buffer itself as ``.grad`` (it
takes an incoming gradient without copying when nothing else refers to it). A second backward
through the same graph (``retain_graph=True``, gradcheck) finds the buffers gone and recomputes.
"""

from __future__ import annotations

import torch


def keep_forward_grads(ctx, *grads: torch.Tensor | None) -> None:
    """Store the gradients formed in the forward, unscaled, for :func:`take_forward_grads`."""
    ctx.forward_grads = grads


def take_forward_grads(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...] | None:
    """The stored gradients scaled by ``grad_output`` (0-dim), in place, handed over: the ctx
    keeps no reference. None when a previous backward took them (recompute instead)."""
    grads = ctx.forward_grads
    if grads is None:
        return None
    ctx.forward_grads = None
    return tuple(g.mul_(grad_output.to(g.dtype)) if g is not None else None for g in grads)
