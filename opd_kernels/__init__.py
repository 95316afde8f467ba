"""opd_kernels: on-policy distillation losses over full LLM vocabularies, without [tokens, vocab] tensors.

Public API:
    fused_reverse_kl      exact KL(student || teacher) over the vocabulary, from hidden states
    FusedReverseKL        the same as an nn.Module
    token_logprobs        log-probs (and entropy) of given tokens, from hidden states
    topk_logprobs         the k most likely tokens and their log-probs, from hidden states
    policy_gradient_loss  the token-level clipped policy-gradient loss (GRPO / PPO), on log-probs
    sampled_reverse_kl_loss   the sampled-token OPD loss: policy_gradient_loss with A = lp_t - lp_s
    fused_policy_gradient_loss  either of the two from hidden states, forward and backward in one pass
    Reduction, REDUCTIONS     the one reduction vocabulary of every op: "mean" (over selected
                          tokens), "sum", "sequence_sum" (sum per sequence, mean over sequences),
                          "none" (per token); the losses' old "token_mean" warns (DeprecationWarning)
    MAX_TOPK              the largest k of topk_logprobs (64)

Every op follows ``torch.autocast`` (matmuls in its dtype, fp32 inside, each input's gradient in
its own dtype); token_logprobs and fused_policy_gradient_loss take Hugging Face labels
(``ignore_index=-100``).
``opd_kernels.integrations.trl`` (imported on its own, extra "trl") runs TRL's
DistillationTrainer with its reverse KL computed by fused_reverse_kl; ``import opd_kernels``
imports neither TRL nor transformers.

Backends: ``backend="auto"`` picks, from measurements on an H200 (README), Triton's chunked
schedule (cuBLAS logits per token chunk + one Triton row kernel) for fused_reverse_kl on CUDA,
and the chunked torch backend for token_logprobs, topk_logprobs and fused_policy_gradient_loss on every device, CUDA
included: the fused Triton log-prob and top-k kernels are not what "auto" picks (they were
slower, 1.8-9x); pass ``backend="triton"`` for the memory they save. Off CUDA "auto" is torch.
"""

from ._validation import MAX_TOPK, REDUCTIONS, Reduction
from .logprobs import token_logprobs, topk_logprobs
from .losses import policy_gradient_loss, sampled_reverse_kl_loss
from .policy_gradient import fused_policy_gradient_loss
from .reverse_kl import FusedReverseKL, fused_reverse_kl

__all__ = [
    "fused_reverse_kl",
    "FusedReverseKL",
    "token_logprobs",
    "topk_logprobs",
    "policy_gradient_loss",
    "sampled_reverse_kl_loss",
    "fused_policy_gradient_loss",
    "Reduction",
    "REDUCTIONS",
    "MAX_TOPK",
]
__version__ = "0.1.0"
