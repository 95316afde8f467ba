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


MIN_TOKEN_CHUNK = 16
MAX_TOKEN_CHUNK = 4096
MAX_CHUNK_BYTES = 1 << 30


def default_token_chunk(vocab: int, head_dim: int, row_buffers: int) -> int:
    """Tokens per chunk of the torch backend when the caller gives no ``chunk_size``.

    A chunk of C tokens holds ``row_buffers`` fp32 [C, V] blocks of logits (2 for the reverse
    KL, student and teacher; 1 for log-probs), the logit gradient written over one of them.
    Their size, 4 * row_buffers * C * V bytes, is held to twice the fp32 size of the LM head,
    2 * 4 * V * D bytes (the class of the fp32 weight gradient the op builds anyway), and to
    1 GiB:

        C = min(2 * D / row_buffers, 2^30 / (4 * row_buffers * V)),

    rounded down to a multiple of 16 and clamped to [16, 4096]. Reverse KL: C = D_s (256 tokens
    for D_s = 256: 66 MB of logits at V = 32,000); log-probs: C = 2 D. The row math adds no
    [C, V] temporary (the eager form sums exponentials 8,192 columns at a time).
    """
    by_head = 2 * head_dim // row_buffers
    by_cap = MAX_CHUNK_BYTES // (4 * row_buffers * max(vocab, 1))
    chunk = min(by_head, by_cap) // MIN_TOKEN_CHUNK * MIN_TOKEN_CHUNK
    return max(MIN_TOKEN_CHUNK, min(chunk, MAX_TOKEN_CHUNK))
