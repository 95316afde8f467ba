"""TRL's DistillationTrainer with its reverse-KL loss (``beta=1``) computed by fused_reverse_kl.

    from trl import DistillationConfig
    from opd_kernels.integrations.trl import FusedDistillationTrainer

    trainer = FusedDistillationTrainer(model=student, teacher_model=teacher,
                                       args=DistillationConfig(beta=1.0, ...), train_dataset=prompts)
    trainer.train()

Tested with TRL 1.16.0 (transformers 5.24). TRL's ``beta`` selects the divergence (its
DistillationConfig and trl.kernels.chunked_divergence): 0 is the forward KL(teacher ||
student), 1 the reverse KL(student || teacher), in between the generalized JSD. Only the
reverse KL is fused; any other ``beta`` stays on TRL's own path, with a warning.

What changes against DistillationTrainer is the one function that turns both models' last
hidden states and LM heads into the loss (TRL's ``_chunked_divergence_loss``), and nothing
around it: TRL still generates the completions, runs both backbones, routes the student's
loss through the DDP / FSDP wrapper's forward (its ``_forward_redirection``: the gradient is
formed where the engine sees it), normalises by the completion tokens of the whole
gradient-accumulation batch over the processes (``num_items_in_batch``; the local mean where
there is none, in evaluation) and logs the student's entropy. Temperature and the completion
mask (with the tool mask of multi-turn runs) are TRL's, so the loss is TRL's own value.

TRL 1.16 already bounds its memory (fp32 tiles of 4,096 tokens x 32,768 vocabulary rows of
both models, i.e. [tokens, vocab] up to 4,096 tokens, and a second pass in the backward that
recomputes both models' projections); fused_reverse_kl builds no [tokens, vocab] tensor, forms
the gradient in the same pass as the loss (4 matmuls instead of 6) and accumulates in fp32
(bench.trl_distillation measures both; docs/kernels.md has the table).

Heads this does not fuse stay on TRL's path, with a warning: a bias on either LM head, logits
scaled or soft-capped by the model config (``logit_scale``, ``final_logit_softcapping``, ...).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import warnings

import torch

from opd_kernels import fused_reverse_kl, token_logprobs

try:
    import trl
    from trl import DistillationTrainer
    from trl.trainer import distillation_trainer as _trainer_module
except ImportError as error:  # pragma: no cover - the extra is missing
    raise ImportError("opd_kernels.integrations.trl needs TRL >= 1.16: pip install 'video-opd[trl]'") from error

__all__ = ["FusedDistillationTrainer", "fused_divergence_loss", "TESTED_TRL_VERSION"]

#: The TRL release this integration is tested with.
TESTED_TRL_VERSION = "1.16.0"

# TRL's function that DistillationTrainer._compute_loss calls inside the student's forward.
_trl_divergence_loss = getattr(_trainer_module, "_chunked_divergence_loss", None)
if _trl_divergence_loss is None or not hasattr(DistillationTrainer, "_compute_loss"):  # pragma: no cover
    raise ImportError(
        f"opd_kernels.integrations.trl is written for TRL's DistillationTrainer as of TRL {TESTED_TRL_VERSION}, "
        f"whose loss is trl.trainer.distillation_trainer._chunked_divergence_loss; TRL {trl.__version__} has none"
    )
_TRL_SIGNATURE = inspect.signature(_trl_divergence_loss)


def _unfused_reason(a: dict) -> str | None:
    """Why TRL's own loss must compute this call, or None when fused_reverse_kl computes it exactly."""
    if a["beta"] != 1.0:
        return f"beta={a['beta']} is not the reverse KL (beta=1)"
    if a["student_lm_head_bias"] is not None or a["teacher_lm_head_bias"] is not None:
        return "an LM head has a bias"
    if a["student_logit_scale"] != 1.0 or a["teacher_logit_scale"] != 1.0:
        return "the model config scales the logits (logit_scale and its kin)"
    if a["student_final_logit_softcapping"] is not None or a["teacher_final_logit_softcapping"] is not None:
        return "the model config soft-caps the logits (final_logit_softcapping)"
    return None


def _full(weight: torch.Tensor) -> torch.Tensor:
    # An FSDP2 LM head read outside its module's forward (the teacher's, after its backbone ran)
    # is a DTensor: gather it once, as TRL does (its backward reduce-scatters the gradient).
    dtensor = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)
    return weight.full_tensor() if dtensor is not None and isinstance(weight, dtensor) else weight


def fused_divergence_loss(*args, log_entropy: bool = True, **kwargs):
    """TRL's ``_chunked_divergence_loss`` (same arguments, same returns), by fused_reverse_kl.

    Returns (loss, entropy_sum, n_valid) over the local batch: the reverse KL summed over the
    completion tokens (``completion_mask != 0``) divided by ``num_items_in_batch``, or by the
    local token count (at least 1) when that is None; the student's entropy summed over them
    (NaN with ``log_entropy=False``, which saves one forward matmul over the student head; TRL's
    log then shows no entropy); their count. A call fused_reverse_kl cannot compute exactly
    (see :func:`_unfused_reason`) goes to TRL's own function, with a warning.
    """
    bound = _TRL_SIGNATURE.bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    reason = _unfused_reason(a)
    if reason is not None:
        warnings.warn(f"opd_kernels: {reason}; this loss stays on TRL's DistillationTrainer path", stacklevel=2)
        return _trl_divergence_loss(*args, **kwargs)

    h_s, h_t = a["student_hidden_states"], a["teacher_hidden_states"]
    W_s, W_t = _full(a["student_lm_head_weight"]), _full(a["teacher_lm_head_weight"])
    if not torch.is_autocast_enabled(h_s.device.type):
        # TRL's matmuls run in the hidden states' dtype (an fp32 master head under mixed
        # precision is cast to it); so do these. Under autocast the op follows autocast.
        W_s, W_t = W_s.to(h_s.dtype), W_t.to(h_t.dtype)
    # Only the completion tokens are projected (TRL compacts them the same way on GPUs).
    valid = a["completion_mask"].reshape(-1) != 0
    rows = valid.nonzero().squeeze(1)
    n_valid = valid.sum()
    h_s = h_s.reshape(-1, h_s.shape[-1]).index_select(0, rows)
    h_t = h_t.reshape(-1, h_t.shape[-1]).index_select(0, rows)
    temperature = a["temperature"]
    loss = fused_reverse_kl(h_s, W_s, h_t, W_t, temperature=temperature, reduction="sum")
    num_items = a["num_items_in_batch"]
    if num_items is None:
        loss = loss / n_valid.clamp(min=1)
    else:
        loss = loss / (num_items.to(loss.device) if isinstance(num_items, torch.Tensor) else num_items)
    if log_entropy:
        with torch.no_grad():
            _, entropy = token_logprobs(h_s, W_s, torch.zeros_like(rows), temperature=temperature, return_entropy=True)
        entropy_sum = entropy.sum()
    else:
        entropy_sum = loss.new_full((), float("nan"))
    return loss, entropy_sum, n_valid


@contextlib.contextmanager
def _divergence_loss(fn):
    """TRL's module-level loss function replaced by ``fn`` for the duration of one loss call."""
    _trainer_module._chunked_divergence_loss = fn
    try:
        yield
    finally:
        _trainer_module._chunked_divergence_loss = _trl_divergence_loss


class FusedDistillationTrainer(DistillationTrainer):
    """DistillationTrainer whose reverse-KL loss (``beta=1``) is computed by fused_reverse_kl.

    Takes DistillationTrainer's arguments, plus ``log_entropy`` (default True: the student's
    entropy is logged as TRL logs it, at the cost of one forward matmul over the student head;
    False skips it). With ``args.beta != 1`` it warns once and is DistillationTrainer.
    """

    def __init__(self, *args, log_entropy: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.log_entropy = bool(log_entropy)
        if self.beta != 1.0:
            warnings.warn(
                f"FusedDistillationTrainer fuses only the reverse KL (beta=1); with beta={self.beta} "
                "the loss stays on TRL's DistillationTrainer path",
                stacklevel=2,
            )

    def _compute_loss(self, unwrapped_student, inputs, num_items_in_batch):
        # Runs inside the student wrapper's forward (TRL's compute_loss redirects it there).
        if self.beta != 1.0:
            return super()._compute_loss(unwrapped_student, inputs, num_items_in_batch)
        with _divergence_loss(functools.partial(fused_divergence_loss, log_entropy=self.log_entropy)):
            return super()._compute_loss(unwrapped_student, inputs, num_items_in_batch)
