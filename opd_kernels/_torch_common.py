"""PyTorch building blocks shared by the chunked torch backend of every op.

The Triton kernels keep their own inline copy of the streaming update: a nested jit call
costs ~1 ms a call under the interpreter.
"""

from __future__ import annotations

import torch


def fold_logsumexp_tile(m: torch.Tensor, s: torch.Tensor, z: torch.Tensor):
    """Fold a tile of logits z [rows, cols] into the running max m [rows] and sum s = sum exp(z - m).

    Returns (m, s, rescale, e): the updated statistics; rescale = exp(m_old - m_new), by which
    the caller multiplies any other accumulator it keeps relative to the running max (the
    reverse KL's sum of p * (z_s - z_t), the entropy's sum of p * z); and e = exp(z - m_new),
    the tile's unnormalised probabilities, for the caller's own tile sums.
    """
    new_m = torch.maximum(m, z.amax(dim=1))
    rescale = torch.exp(m - new_m)
    e = torch.exp(z - new_m[:, None])
    return new_m, s * rescale + e.sum(dim=1), rescale, e
