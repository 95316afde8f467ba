"""What an op hands its autograd Function and its backend besides tensors, and how big a token chunk is.

Cut Cross-Entropy's habit (its ``CCEParams``): the public op checks its arguments once and
freezes the resolved options into one dataclass, which travels unchanged through the
autograd Function (forward and backward) into the backend. No backend takes bare flags.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ._validation import Reduction

MIN_TOKEN_CHUNK = 16
MAX_TOKEN_CHUNK = 4096
MAX_CHUNK_BYTES = 1 << 30


def default_chunk_size(vocab: int, hidden_dim: int, logit_bytes: int) -> int:
    """Tokens per chunk C when the caller gives no ``chunk_size``: the one policy of every chunked backend.

    A chunk of C tokens multiplies them by the whole vocabulary and holds C * V logits' worth
    of buffers, ``logit_bytes`` bytes per logit: 8 for the torch reverse KL (two fp32 blocks,
    student and teacher, the gradient written over one), 8 + itemsize for the Triton chunked
    reverse KL (the two fp32 blocks and the gradient in the input dtype), 4 for the torch
    log-probs and top-k (one fp32 block). Those buffers are held to twice the fp32 size of
    the LM head, 8 * V * D bytes (the class of the fp32 weight gradient the op builds anyway),
    and to 1 GiB:

        C = min(8 * D / logit_bytes, 2^30 / (logit_bytes * V)),

    rounded down to a multiple of 16 and clamped to [16, 4096]. So the torch reverse KL takes
    C = D_s (256 tokens, 66 MB of logits, for D_s = 256 and V = 32,000), the torch log-probs
    C = 2 D, and at V = 151,936 the 1 GiB cap rules: 880 tokens (torch reverse KL), 704 (Triton
    chunked, bf16 / fp16), 576 (Triton chunked, fp32), 1,760 (torch log-probs).
    """
    by_head = 8 * hidden_dim // logit_bytes
    by_cap = MAX_CHUNK_BYTES // (logit_bytes * max(vocab, 1))
    chunk = min(by_head, by_cap) // MIN_TOKEN_CHUNK * MIN_TOKEN_CHUNK
    return max(MIN_TOKEN_CHUNK, min(chunk, MAX_TOKEN_CHUNK))


@dataclass(frozen=True)
class KernelParams:
    """The options every op's backend takes, resolved by the op.

    inv_tau: 1 / temperature (logits are z = h W^T * inv_tau).
    backend: "torch" or "triton" (never "auto": the op resolved it).
    chunk_size: tokens per chunk of the chunked backends; None: :func:`default_chunk_size`.
    need_dh, need_dw: form the gradient w.r.t. the hidden states / the LM head.
    """

    inv_tau: float
    backend: str
    chunk_size: int | None = None
    need_dh: bool = False
    need_dw: bool = False

    def tokens_per_chunk(self, vocab: int, hidden_dim: int, logit_bytes: int) -> int:
        """``chunk_size`` if the caller gave one, else :func:`default_chunk_size` for the backend's buffers."""
        return self.chunk_size or default_chunk_size(vocab, hidden_dim, logit_bytes)

    @property
    def need_grad(self) -> bool:
        return self.need_dh or self.need_dw

    def forward_only(self):
        """The same options without gradients (a backend call for the values alone)."""
        return replace(self, need_dh=False, need_dw=False)


@dataclass(frozen=True)
class ReducedParams(KernelParams):
    """The options of an op that reduces a terminal loss (its gradient formed in the forward call).

    reduction: one of :data:`opd_kernels.REDUCTIONS`.
    sequences: the denominator of reduction "sequence_sum": the product of the leading dims
        but the last (1 for one sequence).
    """

    reduction: Reduction = "mean"
    sequences: int = 1


@dataclass(frozen=True)
class ReverseKLParams(ReducedParams):
    """fused_reverse_kl's options. schedule: "chunked" or "fused" (Triton; resolved, never "auto"; the
    torch backend has one)."""

    schedule: str = "chunked"


@dataclass(frozen=True)
class PolicyGradientParams(ReducedParams):
    """fused_policy_gradient_loss's options (its reduction "none" never reaches the fused pass)."""


@dataclass(frozen=True)
class LogprobParams(KernelParams):
    """token_logprobs' and topk_logprobs' options. return_entropy: also the entropy (and its gradient)."""

    return_entropy: bool = False
