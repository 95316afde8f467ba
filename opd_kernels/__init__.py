"""opd_kernels: on-policy distillation losses over full LLM vocabularies, without [tokens, vocab] tensors.

Public API:
    fused_reverse_kl      exact KL(student || teacher) over the vocabulary, from hidden states
    FusedReverseKL        the same as an nn.Module
    token_logprobs        log-probs (and entropy) of given tokens, from hidden states
    topk_logprobs         the k most likely tokens and their log-probs, from hidden states
    policy_gradient_loss  the token-level clipped policy-gradient loss (GRPO / PPO), on log-probs
    sampled_reverse_kl_loss   the sampled-token OPD loss: policy_gradient_loss with A = lp_t - lp_s
"""

from .logprobs import token_logprobs, topk_logprobs
from .losses import policy_gradient_loss, sampled_reverse_kl_loss
from .reverse_kl import FusedReverseKL, fused_reverse_kl

__all__ = ["fused_reverse_kl", "FusedReverseKL", "token_logprobs", "topk_logprobs", "policy_gradient_loss",
           "sampled_reverse_kl_loss"]
__version__ = "0.1.0"
