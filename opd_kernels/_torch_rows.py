"""Row math of the torch backend: whole fp32 logit rows [C, V] in, per-row statistics and logit gradients out.

The torch backend multiplies a chunk of C tokens by the *whole* vocabulary (cuBLAS / MKL /
oneDNN), then one of these functions turns the logit rows into what the op needs, writing the
logit gradient over one of its input buffers so that a chunk never holds more than the two
(reverse KL) or one (log-probs) [C, V] fp32 blocks it was given.

Each function has an eager form, a sequence of in-place ATen ops, and a fused form for
``torch.compile`` (inductor generates a few vectorised C++ loops per chunk instead of a dozen
passes over [C, V]). Which one runs is decided per call by :func:`compile_mode`:

- environment variable ``OPD_KERNELS_TORCH_COMPILE``: ``auto`` (default) compiles for fp32 CPU
  and CUDA tensors (on an H200 it takes token_logprobs' forward from 54% to 63% of the bf16
  peak, 92% of the speed of its matmul alone; see the README), ``1`` on every device, ``0`` never;
- eager is used anyway for fp64 (gradchecks), inside a caller's own ``torch.compile`` trace,
  and under a ``TorchDispatchMode`` (compiled graphs do not run under one);
- if compiling or running the compiled form raises, a warning says why and the process keeps
  to the eager form from then on.

Contract of every function but ``logsumexp_rows`` (which keeps its input): the [C, V] inputs
are consumed (their contents are unspecified afterwards); a returned gradient may share
storage with one of them.
"""

from __future__ import annotations

import os
import warnings

import torch

COMPILE_ENV = "OPD_KERNELS_TORCH_COMPILE"
_COMPILE_CHOICES = ("auto", "0", "1")


def compile_mode() -> str:
    """The ``OPD_KERNELS_TORCH_COMPILE`` setting: "auto", "0" or "1" (an unknown value warns and reads as "auto")."""
    value = os.environ.get(COMPILE_ENV, "auto").strip().lower() or "auto"
    if value not in _COMPILE_CHOICES:
        warnings.warn(f"{COMPILE_ENV}={value!r} is not one of {_COMPILE_CHOICES}; using 'auto'", stacklevel=3)
        return "auto"
    return value


def _dispatch_mode_active() -> bool:
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    return _get_current_dispatch_mode() is not None


def _wants_compiled(t: torch.Tensor) -> bool:
    mode = compile_mode()
    if mode == "0" or t.dtype != torch.float32:
        return False
    if mode == "auto" and t.device.type not in ("cpu", "cuda"):
        return False
    return not (torch.compiler.is_compiling() or _dispatch_mode_active())


class RowFunction:
    """An eager function and its fused twin under torch.compile, with a one-way fallback to eager."""

    def __init__(self, name: str, eager, fused):
        self.name = name
        self.eager = eager
        self.fused = fused
        self._compiled = None
        self.broken: str | None = None  # why the compiled form is not used any more

    def __call__(self, *args):
        if self.broken is None and _wants_compiled(args[0]):
            if self._compiled is None:
                # dynamic: one graph for every chunk height and vocabulary size.
                self._compiled = torch.compile(self.fused, dynamic=True)
            try:
                return self._compiled(*args)
            except Exception as error:  # noqa: BLE001 - any compiler failure falls back to eager
                self.broken = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
                warnings.warn(
                    f"opd_kernels: torch.compile of the {self.name} row math failed ({self.broken}); "
                    f"using eager PyTorch from now on (set {COMPILE_ENV}=0 to skip compiling)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self.eager(*args)


# ---------------------------------------------------------------------------------------
# Reverse KL: z_s, z_t [C, V] raw logits (before 1/tau) -> rkl [C] and g = dL/dz_s [C, V]
#
# With zs = z_s / tau, d = zs - zt, e = exp(zs - max zs), s_s = sum e:
#   E_p[d] = sum(e d) / s_s,   rkl = E_p[d] - lse_s + lse_t,
#   g = scale * p * (log p - log q - rkl) = (scale / s_s) * e * (d - E_p[d]),
# where scale = w / tau carries the token weight and the 1/tau of z = h W^T / tau.
# ---------------------------------------------------------------------------------------


# Columns per block of the eager forms' exp sums: a [C, 8192] temporary, not a third [C, V] block.
EXP_BLOCK = 8192


def _scaled_block(z: torch.Tensor, c0: int, inv_tau: float) -> torch.Tensor:
    """Columns [c0, c0 + EXP_BLOCK) of z / tau, z itself left as it is."""
    block = z[:, c0 : c0 + EXP_BLOCK]
    return block if inv_tau == 1.0 else block * inv_tau


def _logsumexp_blocked(z: torch.Tensor, inv_tau: float = 1.0) -> torch.Tensor:
    """torch.logsumexp(z / tau, dim=1) with a [C, EXP_BLOCK] temporary instead of a [C, V] one; z is kept."""
    m = z.amax(dim=1) * inv_tau  # 1/tau > 0 commutes with the max
    s = torch.zeros_like(m)
    for c0 in range(0, z.shape[1], EXP_BLOCK):
        s += torch.exp(_scaled_block(z, c0, inv_tau) - m[:, None]).sum(dim=1)
    return m + torch.log(s)


def _rkl_eager(z_s, z_t, inv_tau, scale):
    if inv_tau != 1.0:
        z_s.mul_(inv_tau)
        z_t.mul_(inv_tau)
    lse_t = _logsumexp_blocked(z_t)
    m_s = z_s.amax(dim=1)
    neg_d = z_t.sub_(z_s)  # z_t now holds -d = zt - zs
    e = z_s.sub_(m_s[:, None]).exp_()  # z_s now holds e = exp(zs - max)
    s_s = e.sum(dim=1)
    # torch.sum's cascade summation, not a BLAS dot (whose error grows with V), for E_p[d].
    e_neg_d = neg_d.mul_(e)  # z_t now holds -e d
    mean_d = -e_neg_d.sum(dim=1) / s_s
    rkl = mean_d - (m_s + torch.log(s_s)) + lse_t
    if scale is None:
        return rkl, None
    # g = (scale / s_s) e (d - E_p[d]) = -(scale / s_s) (-e d + E_p[d] e), in place in z_t.
    g = e_neg_d.add_(e.mul_(mean_d[:, None])).mul_((-scale / s_s)[:, None])
    return rkl, g


def _rkl_fused(z_s, z_t, inv_tau, scale):
    # exp(zs - m_s) is spelled out in each of its three uses: inductor keeps an exp that has
    # several users in a [C, V] buffer on CPU; one use each, it recomputes it in every loop.
    zs = z_s * inv_tau
    zt = z_t * inv_tau
    m_s = zs.amax(dim=1, keepdim=True)
    m_t = zt.amax(dim=1, keepdim=True)
    s_s = torch.exp(zs - m_s).sum(dim=1, keepdim=True)
    s_t = torch.exp(zt - m_t).sum(dim=1, keepdim=True)
    mean_d = (torch.exp(zs - m_s) * (zs - zt)).sum(dim=1, keepdim=True) / s_s
    rkl = (mean_d - m_s - torch.log(s_s) + m_t + torch.log(s_t)).squeeze(1)
    if scale is None:
        return rkl, None
    z_s.copy_(torch.exp(zs - m_s) * (scale[:, None] / s_s) * (zs - zt - mean_d))
    return rkl, z_s


_RKL = RowFunction("reverse-KL", _rkl_eager, _rkl_fused)


def reverse_kl_rows(z_s: torch.Tensor, z_t: torch.Tensor, inv_tau: float, scale: torch.Tensor | None):
    """Per-row reverse KL of softmax(z_s / tau) from softmax(z_t / tau), and its logit gradient.

    z_s, z_t: [C, V] fp32/fp64 raw logits (consumed). scale: [C] (token weight / tau, 0 on
    masked rows), or None for no gradient. Returns (rkl [C], g [C, V] or None) with
    g = d(sum_i w_i rkl_i) / d(raw z_s).
    """
    return _RKL(z_s, z_t, inv_tau, scale)


# ---------------------------------------------------------------------------------------
# Log-probs: z [C, V] raw logits -> lse [C] (and the entropy H [C]), and the softmax part of
# the gradient, -p * (go_lp + go_ent * (log p + H)) / tau.
#
# The entropy comes from logits centred on their row max m: H = log s - E_p[z - m] with
# s = sum exp(z - m), both terms of one sign and E_p[z - m] near 0 on a peaked row. The form
# lse - E_p[z] subtracts two numbers of the logits' size in fp32 and loses the entropy to
# rounding when they are large (std 30: 1e-3 nats; std 100: 1e-2, against entropies of 0.06).
# ---------------------------------------------------------------------------------------


def _lse_eager(z, inv_tau, with_entropy):
    m = z.amax(dim=1) * inv_tau  # 1/tau > 0 commutes with the max
    s = torch.zeros_like(m)
    for c0 in range(0, z.shape[1], EXP_BLOCK):
        s += torch.exp(_scaled_block(z, c0, inv_tau) - m[:, None]).sum(dim=1)
    log_s = torch.log(s)
    if not with_entropy:
        return m + log_s, None
    centred_mean = torch.zeros_like(m)  # E_p[z - m]
    for c0 in range(0, z.shape[1], EXP_BLOCK):
        d = _scaled_block(z, c0, inv_tau) - m[:, None]
        centred_mean += torch.exp(d - log_s[:, None]).mul_(d).sum(dim=1)
    return m + log_s, log_s - centred_mean


def _lse_fused(z, inv_tau, with_entropy):
    z = z * inv_tau
    m = z.amax(dim=1, keepdim=True)
    s = torch.exp(z - m).sum(dim=1, keepdim=True)
    log_s = torch.log(s)
    lse = (m + log_s).squeeze(1)
    if not with_entropy:
        return lse, None
    # exp spelled out again rather than shared: see _rkl_fused.
    d = z - m
    return lse, (log_s - (torch.exp(d) * d).sum(dim=1, keepdim=True) / s).squeeze(1)


_LSE = RowFunction("log-sum-exp", _lse_eager, _lse_fused)


def logsumexp_rows(z: torch.Tensor, inv_tau: float, with_entropy: bool):
    """lse [C] of z / tau and, with_entropy, the entropy [C] of softmax(z / tau), from logits
    centred on their row max.

    Unlike the other row functions it keeps z as it was, so that a terminal loss can form its
    logit gradient from the same block once the lse (and so the log-probs) of the chunk are known."""
    return _LSE(z, inv_tau, with_entropy)


def _softmax_grad_eager(z, inv_tau, lse, entropy, go_lp, go_ent):
    log_p = z.mul_(inv_tau).sub_(lse[:, None])
    if go_ent is None:
        return log_p.exp_().mul_((-inv_tau * go_lp)[:, None])
    for c0 in range(0, log_p.shape[1], EXP_BLOCK):  # p block by block: no [C, V] temporary
        block = log_p[:, c0 : c0 + EXP_BLOCK]
        p = torch.exp(block)
        block.add_(entropy[:, None]).mul_(go_ent[:, None]).add_(go_lp[:, None]).mul_(p).mul_(-inv_tau)
    return log_p


def _softmax_grad_fused(z, inv_tau, lse, entropy, go_lp, go_ent):
    log_p = z * inv_tau - lse[:, None]
    weight = go_lp[:, None] if go_ent is None else go_lp[:, None] + go_ent[:, None] * (log_p + entropy[:, None])
    z.copy_(torch.exp(log_p) * weight * -inv_tau)
    return z


_SOFTMAX_GRAD = RowFunction("log-prob gradient", _softmax_grad_eager, _softmax_grad_fused)


def softmax_grad_rows(z, inv_tau: float, lse, entropy, go_lp, go_ent):
    """g = -p * (go_lp + go_ent * (log p + H)) / tau over [C, V] raw logits z (consumed; g may be z).

    lse, go_lp: [C]; entropy, go_ent: [C] or None (no entropy term).
    """
    return _SOFTMAX_GRAD(z, inv_tau, lse, entropy, go_lp, go_ent)
