"""What is benchmarked: the ops, their inputs, FLOP counts, float64 references, and the providers.

An *op mode* is one kernel in one mode ("forward", or "full" = forward + backward, Liger's
naming). A *provider* is one implementation of it: ours (Triton / torch backends), naive
PyTorch with materialised fp32 logits, the same ``torch.compile``d, and the peers
(Liger-Kernel for reverse KL: its fused linear JSD at beta = 1, also with fp32 weight-gradient
accumulation, its chunked JSD loss, and its fused linear KL divergence, which takes teacher
probabilities and computes the forward KL; Cut Cross-Entropy for token log-probs). A peer the
installed version lacks is a row saying so.

Every provider's ``compute`` returns the op's output in one form per kernel, so one
objective, one accuracy check and one reference serve them all:

- fused_reverse_kl: the mean reverse KL over the N tokens (a scalar);
- token_logprobs:   log p(token) per token, [N] fp32;
- topk_logprobs:    the k largest log-probs per token, ([N, k] values, [N, k] indices);
- policy_gradient_loss: GRPO's clipped policy-gradient loss on the sampled tokens (a scalar, the
  mean over the N tokens; sequences of ``PG_SEQUENCE`` tokens, one advantage each, the sampler's
  log-probs near the policy's so that a few ratios clip), from hidden states and the head.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .shapes import Shape

# --------------------------------------------------------------------------------------------
# Op modes


@dataclass(frozen=True)
class OpMode:
    kernel: str  # CSV kernel_name
    mode: str  # CSV kernel_operation_mode: "forward" | "full"
    side: str  # whose hidden size the single-model ops use: "teacher" | "student" | "both"
    flop_formula: str

    @property
    def key(self) -> str:
        return f"{self.kernel}-{self.mode}"

    @property
    def title(self) -> str:
        mode = "forward + backward" if self.mode == "full" else "forward only"
        return f"{self.kernel}, {mode}"

    @property
    def needs_grad(self) -> bool:
        return self.mode == "full"

    def hidden_dim(self, shape: Shape) -> int:
        return shape.teacher_dim if self.side == "teacher" else shape.student_dim

    def flops(self, shape: Shape) -> int:
        n, v, d_s, d_t = shape.tokens, shape.vocab, shape.student_dim, shape.teacher_dim
        if self.kernel == "policy_gradient_loss":
            # The logits and dh = g W, dW = g^T h: the loss is terminal, nothing is recomputed.
            return 6 * n * v * self.hidden_dim(shape)
        if self.kernel == "fused_reverse_kl":
            # Issue 5's count: the two logit GEMMs, and for the backward their recompute plus
            # dh = g W_s and dW_s = g^T h_s.
            return 2 * n * v * (d_s + d_t) if self.mode == "forward" else 4 * n * v * (d_s + d_t) + 4 * n * v * d_s
        d = self.hidden_dim(shape)
        # The same convention for the single-model ops: logits 2NVD; the backward recomputes
        # them (2NVD) and forms dh and dW (4NVD). top-k's selection is not counted.
        return 2 * n * v * d if self.mode == "forward" else 8 * n * v * d


OP_MODES: dict[str, OpMode] = {
    m.key: m
    for m in (
        OpMode("fused_reverse_kl", "full", "both", "4NV(D_s+D_t) + 4NVD_s"),
        OpMode("fused_reverse_kl", "forward", "both", "2NV(D_s+D_t)"),
        # The teacher only scores tokens (no grad); the student needs log-probs and their gradient.
        OpMode("token_logprobs", "forward", "teacher", "2NVD_t"),
        OpMode("token_logprobs", "full", "student", "8NVD_s"),
        OpMode("topk_logprobs", "forward", "teacher", "2NVD_t"),
        # The student's side of sampled OPD and of GRPO: log-probs, the loss and its gradient.
        OpMode("policy_gradient_loss", "full", "student", "6NVD_s"),
    )
}
KERNELS = tuple(dict.fromkeys(m.kernel for m in OP_MODES.values()))


def op_modes_for(kernel: str) -> list[OpMode]:
    return [m for m in OP_MODES.values() if m.kernel == kernel]


# --------------------------------------------------------------------------------------------
# Inputs


def make_inputs(
    op: OpMode, shape: Shape, *, dtype: torch.dtype, device: torch.device, topk: int, temperature: float, seed: int = 0
) -> dict:
    """Random inputs whose logits spread like a real model's (std about 2).

    Drawn on the device itself: the reference shapes' heads have 10^9 entries, too many to
    draw on a CPU and copy over for every case."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*size, scale=1.0):
        return torch.randn(*size, generator=gen, device=device, dtype=dtype).mul_(scale)

    n, v = shape.tokens, shape.vocab
    inputs: dict = {"temperature": temperature}
    if op.kernel == "policy_gradient_loss":
        return _policy_gradient_inputs(op, shape, inputs, randn, gen, device)
    if op.kernel == "fused_reverse_kl":
        d_s, d_t = shape.student_dim, shape.teacher_dim
        inputs.update(
            student_hidden=randn(n, d_s),
            student_weight=randn(v, d_s, scale=2.0 / d_s**0.5),
            teacher_hidden=randn(n, d_t),
            teacher_weight=randn(v, d_t, scale=2.0 / d_t**0.5),
            # Liger's losses select tokens by label != -100; every token counts here.
            labels=torch.zeros(n, dtype=torch.long, device=device),
        )
        grad_leaves = ("student_hidden", "student_weight")
    else:
        d = op.hidden_dim(shape)
        inputs.update(hidden=randn(n, d), weight=randn(v, d, scale=2.0 / d**0.5))
        if op.kernel == "token_logprobs":
            inputs["tokens"] = torch.randint(0, v, (n,), generator=gen, device=device)
            # Sampled-token OPD: loss = -mean(A * log p(token)) with a detached advantage A.
            inputs["advantage"] = torch.randn(n, generator=gen, device=device)
        else:
            inputs["k"] = topk
        grad_leaves = ("hidden", "weight")
    if op.needs_grad:
        for name in grad_leaves:
            inputs[name].requires_grad_(True)
    inputs["grad_leaves"] = grad_leaves if op.needs_grad else ()
    return inputs


# Tokens per sequence of the policy-gradient inputs (one advantage per sequence, GRPO's).
PG_SEQUENCE = 512
PG_CLIP_EPS = 0.2


def _policy_gradient_inputs(op: OpMode, shape: Shape, inputs: dict, randn, gen, device) -> dict:
    import opd_kernels

    n, v, d = shape.tokens, shape.vocab, op.hidden_dim(shape)
    seq = PG_SEQUENCE if n % PG_SEQUENCE == 0 else n
    hidden, weight = randn(n, d), randn(v, d, scale=2.0 / d**0.5)
    tokens = torch.randint(0, v, (n,), generator=gen, device=device)
    with torch.no_grad():
        policy = opd_kernels.token_logprobs(hidden, weight, tokens, temperature=inputs["temperature"])
    old = policy + 0.1 * torch.randn(n, generator=gen, device=device)
    inputs.update(
        hidden=hidden.requires_grad_(),
        weight=weight.requires_grad_(),
        tokens=tokens,
        sequence_advantages=torch.randn(max(n // seq, 1) if n else 0, generator=gen, device=device),
        old_logprobs=old,
        sequence=seq,
        grad_leaves=("hidden", "weight"),
    )
    inputs["advantages"] = inputs["sequence_advantages"].repeat_interleave(seq)
    return inputs


def objective(op: OpMode, inputs: dict, output) -> torch.Tensor:
    """The scalar a training step would call .backward() on."""
    if op.kernel in ("fused_reverse_kl", "policy_gradient_loss"):
        return output
    if op.kernel == "token_logprobs":
        return -(inputs["advantage"] * output).mean()
    raise ValueError(f"{op.kernel} has no backward in the benchmark")


# --------------------------------------------------------------------------------------------
# float64 references (materialised logits; accuracy figures only)


def reference_output(op: OpMode, inputs: dict, quantity: str = ""):
    """float64 output of the op from the same (already rounded) inputs, differentiable w.r.t.
    the returned leaves. For top-k: (values, indices, all log-probs). ``quantity`` names what a
    provider computes when it is not the op itself ("forward_kl": KL(teacher || student))."""
    from opd_kernels.testing import reference_logits, reverse_kl_reference

    tau = inputs["temperature"]
    leaves = {
        name: inputs[name].detach().double().requires_grad_(name in inputs["grad_leaves"])
        for name in ("student_hidden", "student_weight", "teacher_hidden", "teacher_weight", "hidden", "weight")
        if name in inputs
    }
    if op.kernel == "policy_gradient_loss":
        log_probs = torch.log_softmax(leaves["hidden"] @ leaves["weight"].t() / tau, dim=-1)
        lp = log_probs.gather(-1, inputs["tokens"][:, None]).squeeze(-1)
        advantages, ratio = inputs["advantages"].double(), torch.exp(lp - inputs["old_logprobs"].double())
        clipped = ratio.clamp(1 - PG_CLIP_EPS, 1 + PG_CLIP_EPS)
        if quantity == "ppo_surrogate":  # its value; the gradient is the same
            out = -torch.minimum(ratio * advantages, clipped * advantages).mean()
        else:  # -A w lp, w = the detached ratio, 0 where the clip is flat
            flat = torch.minimum(ratio * advantages, clipped * advantages) != ratio * advantages
            out = -(advantages * torch.where(flat, 0.0, ratio.detach()) * lp).mean()
        return out, leaves
    if quantity == "forward_kl":
        vocab = leaves["student_weight"].shape[0]
        log_p = torch.log_softmax(reference_logits(leaves["student_hidden"], leaves["student_weight"], tau), dim=-1)
        log_q = torch.log_softmax(
            reference_logits(leaves["teacher_hidden"], leaves["teacher_weight"][:vocab], tau), dim=-1
        )
        out = (log_q.exp() * (log_q - log_p)).sum(dim=-1).mean()
    elif op.kernel == "fused_reverse_kl":
        out = reverse_kl_reference(
            leaves["student_hidden"],
            leaves["student_weight"],
            leaves["teacher_hidden"],
            leaves["teacher_weight"],
            temperature=tau,
            reduction="mean",
        )
    else:
        log_probs = torch.log_softmax(leaves["hidden"] @ leaves["weight"].t() / tau, dim=-1)
        if op.kernel == "token_logprobs":
            out = log_probs.gather(-1, inputs["tokens"][:, None]).squeeze(-1)
        else:
            values, indices = log_probs.topk(inputs["k"], dim=-1)
            out = (values, indices, log_probs)  # all log-probs too, to judge another provider's indices
    return out, leaves


# --------------------------------------------------------------------------------------------
# Naive PyTorch: what a user writes without a kernel library (HF-style bf16 logits, upcast)


def _naive_log_probs(hidden, weight, temperature):
    return torch.log_softmax((hidden @ weight.t()).float() / temperature, dim=-1)


def naive_reverse_kl(student_hidden, student_weight, teacher_hidden, teacher_weight, temperature):
    vocab = student_weight.shape[0]
    log_p = _naive_log_probs(student_hidden, student_weight, temperature)
    log_q = _naive_log_probs(teacher_hidden, teacher_weight[:vocab], temperature)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()


def naive_token_logprobs(hidden, weight, tokens, temperature):
    return _naive_log_probs(hidden, weight, temperature).gather(-1, tokens[:, None]).squeeze(-1)


def naive_topk_logprobs(hidden, weight, k: int, temperature):
    values, indices = _naive_log_probs(hidden, weight, temperature).topk(k, dim=-1)
    return values, indices


def _policy_gradient_loss(lp, advantages, old_logprobs):
    from opd_kernels import policy_gradient_loss

    mask = torch.ones_like(lp, dtype=torch.bool)
    return policy_gradient_loss(
        lp, advantages, mask, old_logprobs=old_logprobs, clip_eps=PG_CLIP_EPS, reduction="mean"
    )[0]


def naive_policy_gradient_loss(hidden, weight, tokens, advantages, old_logprobs, temperature):
    return _policy_gradient_loss(naive_token_logprobs(hidden, weight, tokens, temperature), advantages, old_logprobs)


NAIVE = {
    "fused_reverse_kl": naive_reverse_kl,
    "token_logprobs": naive_token_logprobs,
    "topk_logprobs": naive_topk_logprobs,
    "policy_gradient_loss": naive_policy_gradient_loss,
}


@functools.cache
def _compiled(kernel: str):
    # One compiled object per kernel, shared by the speed and the accuracy tests so a shape
    # compiles once. Static shapes: the best case for the compiler, one graph per shape.
    return torch.compile(NAIVE[kernel], dynamic=False)


def _call_kernel(fn, op: OpMode, x: dict):
    tau = x["temperature"]
    if op.kernel == "fused_reverse_kl":
        return fn(x["student_hidden"], x["student_weight"], x["teacher_hidden"], x["teacher_weight"], tau)
    if op.kernel == "token_logprobs":
        return fn(x["hidden"], x["weight"], x["tokens"], tau)
    if op.kernel == "policy_gradient_loss":
        return fn(x["hidden"], x["weight"], x["tokens"], x["advantages"], x["old_logprobs"], tau)
    return fn(x["hidden"], x["weight"], x["k"], tau)


# --------------------------------------------------------------------------------------------
# Providers


@dataclass(frozen=True)
class Provider:
    name: str
    family: str  # "ours" | "naive" | "peer"
    kernels: tuple[str, ...]
    description: str
    needs_cuda: bool = False
    module: str | None = None  # an import that must succeed
    attribute: str | None = None  # ... and provide this name (ops still being written)
    # Run after the import: why the installed version cannot run this provider, or None.
    check: Callable[[], str | None] | None = None
    # What the provider computes when it is not the op itself (reference_output's quantity), and
    # the note printed under the tables it appears in.
    quantity: str = ""
    note: str = ""
    timing_only: bool = False  # no output of the op to judge: speed and memory rows only
    env: tuple[tuple[str, str], ...] = ()  # environment variables set around each call (its backward too)

    @contextlib.contextmanager
    def environment(self):
        saved = {name: os.environ.get(name) for name, _ in self.env}
        os.environ.update(dict(self.env))
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def unavailable(self, op: OpMode, device: torch.device) -> str | None:
        """Why this provider cannot run here (the row's status), or None."""
        if self.needs_cuda and device.type != "cuda":
            return "skipped: no CUDA (Triton runs only under the interpreter on CPU: no speed figure)"
        if self.module is not None:
            try:
                mod = importlib.import_module(self.module)
            except ImportError as e:
                return f"skipped: {self.module} not installed ({e})"
            attribute = self.attribute.format(kernel=op.kernel) if self.attribute else None
            if attribute and not hasattr(mod, attribute):
                return f"skipped: {self.module}.{attribute} does not exist yet"
        if self.check is not None:
            return self.check()
        return None

    def compute(self, op: OpMode, x: dict):
        return _COMPUTE[self.name](op, x)


def _ours(backend: str, schedule: str = "auto"):
    def compute(op: OpMode, x: dict):
        import opd_kernels

        tau = x["temperature"]
        if op.kernel == "fused_reverse_kl":
            return opd_kernels.fused_reverse_kl(
                x["student_hidden"],
                x["student_weight"],
                x["teacher_hidden"],
                x["teacher_weight"],
                temperature=tau,
                backend=backend,
                schedule=schedule,
            )
        if op.kernel == "token_logprobs":
            return opd_kernels.token_logprobs(x["hidden"], x["weight"], x["tokens"], temperature=tau, backend=backend)
        if op.kernel == "policy_gradient_loss":
            shape = (-1, x["sequence"])
            return opd_kernels.fused_policy_gradient_loss(
                x["hidden"].view(*shape, x["hidden"].shape[-1]),
                x["weight"],
                x["tokens"].view(shape),
                torch.ones_like(x["tokens"], dtype=torch.bool).view(shape),
                advantages=x["advantages"].view(shape),
                old_logprobs=x["old_logprobs"].view(shape),
                clip_eps=PG_CLIP_EPS,
                temperature=tau,
                reduction="mean",
                backend=backend,
            )[0]
        return opd_kernels.topk_logprobs(x["hidden"], x["weight"], x["k"], temperature=tau, backend=backend)

    return compute


def _liger_fused_linear_jsd(op: OpMode, x: dict):
    from liger_kernel.transformers import LigerFusedLinearJSD

    # jsd_beta=1 is KL(student || teacher); shift_labels=None averages over every token.
    loss = LigerFusedLinearJSD(jsd_beta=1.0, temperature=x["temperature"])
    return loss(x["student_hidden"], x["student_weight"], x["teacher_hidden"], x["teacher_weight"], None)


def _liger_fused_linear_jsd_fp32_accum(op: OpMode, x: dict):
    from liger_kernel.transformers import LigerFusedLinearJSD

    # accum_dtype=float32: the weight gradient is accumulated over token chunks in fp32.
    loss = LigerFusedLinearJSD(jsd_beta=1.0, temperature=x["temperature"], accum_dtype=torch.float32)
    return loss(x["student_hidden"], x["student_weight"], x["teacher_hidden"], x["teacher_weight"], None)


def _liger_fused_linear_kldiv(op: OpMode, x: dict):
    from liger_kernel.transformers import LigerFusedLinearKLDivLoss

    # Liger's fused linear KL takes the teacher's distribution as probabilities, not as hidden
    # states and a head: a user builds them first, so the [N, V] softmax is part of the call.
    tau = x["temperature"]
    vocab = x["student_weight"].shape[0]
    with torch.no_grad():
        target = torch.softmax((x["teacher_hidden"] @ x["teacher_weight"][:vocab].t()).float() / tau, dim=-1)
    loss = LigerFusedLinearKLDivLoss(reduction="batchmean", temperature=tau)
    return loss(x["student_hidden"], x["student_weight"], target)


def _ours_unfused_policy_gradient(op: OpMode, x: dict):
    import opd_kernels

    lp = opd_kernels.token_logprobs(x["hidden"], x["weight"], x["tokens"], temperature=x["temperature"])
    return _policy_gradient_loss(lp, x["advantages"], x["old_logprobs"])


def _liger_fused_linear_grpo(op: OpMode, x: dict):
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    # GRPO without a reference model (beta = 0), token-level ratios clipped at 1 -/+ 0.2, and
    # loss_type "bnpo": the sum over tokens divided by their count, our reduction "mean".
    loss = LigerFusedLinearGRPOLoss(
        beta=0.0,
        use_ref_model=False,
        epsilon_low=PG_CLIP_EPS,
        epsilon_high=PG_CLIP_EPS,
        loss_type="bnpo",
        temperature=x["temperature"],
    )
    seq = x["sequence"]
    out = loss(
        x["hidden"].view(-1, seq, x["hidden"].shape[-1]),
        x["weight"],
        x["tokens"].view(-1, seq),
        torch.ones_like(x["tokens"]).view(-1, seq),
        x["sequence_advantages"],
        old_per_token_logps=x["old_logprobs"].view(-1, seq),
    )
    return out[0] if isinstance(out, tuple) else out


def _liger_chunked_jsd(op: OpMode, x: dict):
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    # beta=1 is KL(student || teacher); weight_hard_loss=0 drops the cross-entropy term
    # (and Liger then skips computing it), so the labels only select tokens (all here).
    loss = LigerFusedLinearJSDLoss(beta=1.0, weight_hard_loss=0.0, weight_soft_loss=1.0, temperature=x["temperature"])
    return loss(x["student_hidden"], x["student_weight"], x["teacher_hidden"], x["teacher_weight"], x["labels"])


def _cce(impl: str):
    def compute(op: OpMode, x: dict):
        from cut_cross_entropy import linear_cross_entropy

        hidden = x["hidden"] / x["temperature"] if x["temperature"] != 1.0 else x["hidden"]
        return -linear_cross_entropy(hidden, x["weight"], x["tokens"], reduction="none", impl=impl).float()

    return compute


def _mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b into fp32: cuBLAS's fp32 output for 16-bit CUDA operands, else upcast operands."""
    if a.is_cuda and a.dtype in (torch.bfloat16, torch.float16):
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.float(), b.float())


class _MatmulFloor(torch.autograd.Function):
    """The matmuls of our fastest schedule and nothing else, each over all N tokens at once,
    16-bit operands into fp32 outputs (as ``opd_kernels._matmul`` asks cuBLAS for them).

    Forward: the logits h W^T of every model. fused_reverse_kl with grad: also its gradient
    matmuls dh = g W_s and dW_s = g^T h_s, in the forward, as the chunked schedule does (g is
    the student's logits rounded to the weight's dtype, the rounding the schedule does too).
    token_logprobs' backward: the logits again (recomputed), then dh and dW. The returned
    zeros stand in for the op's output; their gradient flows to h_s and W_s.
    """

    @staticmethod
    def forward(ctx, out_shape, recompute, h_s, W_s, *teacher):
        z_s = _mm_fp32(h_s, W_s.t())
        for h_t, W_t in zip(teacher[::2], teacher[1::2]):
            _mm_fp32(h_t, W_t.t())
        ctx.recompute, ctx.num_teacher, ctx.grads = recompute, len(teacher), None
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            if recompute:
                ctx.save_for_backward(h_s, W_s)
            else:
                g = z_s.to(W_s.dtype)
                ctx.grads = (_mm_fp32(g, W_s).to(h_s.dtype), _mm_fp32(g.t(), h_s).to(W_s.dtype))
        del z_s
        return h_s.new_zeros(out_shape, dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.recompute:
            h_s, W_s = ctx.saved_tensors
            g = _mm_fp32(h_s, W_s.t()).to(W_s.dtype)
            dh, dW = _mm_fp32(g, W_s).to(h_s.dtype), _mm_fp32(g.t(), h_s).to(W_s.dtype)
        else:
            dh, dW = ctx.grads
        return (None, None, dh, dW, *([None] * ctx.num_teacher))


def _matmul_floor(op: OpMode, x: dict):
    if op.kernel == "fused_reverse_kl":
        vocab = x["student_weight"].shape[0]
        return _MatmulFloor.apply(
            (), False, x["student_hidden"], x["student_weight"], x["teacher_hidden"], x["teacher_weight"][:vocab]
        )
    if op.kernel == "token_logprobs":
        return _MatmulFloor.apply(x["hidden"].shape[:1], True, x["hidden"], x["weight"])
    if op.kernel == "policy_gradient_loss":
        return _MatmulFloor.apply((), False, x["hidden"], x["weight"])
    _mm_fp32(x["hidden"], x["weight"].t())
    shape = (x["hidden"].shape[0], x["k"])
    return x["hidden"].new_zeros(shape, dtype=torch.float32), x["hidden"].new_zeros(shape, dtype=torch.int64)


_COMPUTE: dict[str, Callable] = {
    "ours-triton-chunked": _ours("triton", "chunked"),
    "ours-triton-fused": _ours("triton", "fused"),
    "ours-triton": _ours("triton"),
    "ours-torch": _ours("torch"),
    "ours-torch-compiled": _ours("torch"),
    "naive": lambda op, x: _call_kernel(NAIVE[op.kernel], op, x),
    "naive-compiled": lambda op, x: _call_kernel(_compiled(op.kernel), op, x),
    "liger-fused-linear-jsd": _liger_fused_linear_jsd,
    "liger-fused-linear-jsd-fp32-accum": _liger_fused_linear_jsd_fp32_accum,
    "liger-fused-linear-kldiv": _liger_fused_linear_kldiv,
    "liger-chunked-jsd-loss": _liger_chunked_jsd,
    "liger-fused-linear-grpo": _liger_fused_linear_grpo,
    "ours-unfused": _ours_unfused_policy_gradient,
    "cce": _cce("cce"),
    "cce-torch-compile": _cce("torch_compile"),
    "matmul-floor": _matmul_floor,
}


def _needs(module: str, name: str, option: str | None = None) -> Callable[[], str | None]:
    """A Provider.check: the installed ``module`` has ``name`` (and ``name`` takes ``option``)."""

    def check() -> str | None:
        import inspect

        mod = importlib.import_module(module)
        target = getattr(mod, name, None)
        version = _installed_version(module)
        if target is None:
            return f"skipped: {module}.{name} does not exist in the installed version ({version})"
        if option is not None and option not in inspect.signature(target).parameters:
            return f"skipped: {module}.{name} has no {option} option in the installed version ({version})"
        return None

    return check


def _installed_version(module: str) -> str:
    import importlib.metadata

    dist = {"liger_kernel": "liger-kernel", "cut_cross_entropy": "cut-cross-entropy"}.get(module.split(".")[0])
    try:
        return f"{dist} {importlib.metadata.version(dist)}" if dist else module
    except importlib.metadata.PackageNotFoundError:
        return f"{dist} version unknown"


_ALL = ("fused_reverse_kl", "token_logprobs", "topk_logprobs", "policy_gradient_loss")
_PG = ("policy_gradient_loss",)
_LOGPROB_OPS = ("token_logprobs", "topk_logprobs")

# A name may have one entry per kernel: "ours-torch" of reverse KL exists now, that of the
# log-prob ops is checked for at run time.
PROVIDERS = (
    Provider(
        "ours-triton-chunked",
        "ours",
        ("fused_reverse_kl",),
        "opd_kernels, backend='triton', schedule='chunked' (cuBLAS logits per token chunk + one row kernel)",
        needs_cuda=True,
    ),
    Provider(
        "ours-triton-fused",
        "ours",
        ("fused_reverse_kl",),
        "opd_kernels, backend='triton', schedule='fused' (tl.dot tiles, logits never leave the chip)",
        needs_cuda=True,
    ),
    Provider(
        "ours-triton",
        "ours",
        _LOGPROB_OPS,
        "opd_kernels, backend='triton'",
        needs_cuda=True,
        module="opd_kernels",
        attribute="{kernel}",
    ),
    Provider("ours-torch", "ours", ("fused_reverse_kl",), "opd_kernels, backend='torch' (chunked PyTorch, any device)"),
    Provider(
        "ours-torch",
        "ours",
        _PG,
        "opd_kernels.fused_policy_gradient_loss, backend='torch': log-probs, loss and gradients in one pass",
    ),
    Provider(
        "ours-triton",
        "ours",
        _PG,
        "opd_kernels.fused_policy_gradient_loss, backend='triton' (cuBLAS logits per chunk + two Triton row kernels)",
        needs_cuda=True,
    ),
    Provider(
        "ours-unfused",
        "ours",
        _PG,
        "opd_kernels.token_logprobs then policy_gradient_loss: what the loop did before the fused op "
        "(the backward recomputes the logits)",
    ),
    Provider(
        "ours-torch",
        "ours",
        _LOGPROB_OPS,
        "opd_kernels, backend='torch' (chunked PyTorch, any device)",
        module="opd_kernels",
        attribute="{kernel}",
    ),
    Provider(
        "ours-torch-compiled",
        "ours",
        _ALL,
        "opd_kernels, backend='torch' with OPD_KERNELS_TORCH_COMPILE=1: the row math compiled by torch.compile "
        "on every device (the default compiles it on CPU only)",
        env=(("OPD_KERNELS_TORCH_COMPILE", "1"),),
    ),
    Provider(
        "matmul-floor",
        "floor",
        _ALL,
        "the logit (and gradient) matmuls of our schedule alone, each over all N tokens at once: "
        "the time the op cannot beat",
        timing_only=True,
        note="`matmul-floor` is no implementation: it times only the matmuls our fastest schedule does "
        "(logits; with grad, dh and dW, and for token_logprobs the recomputed logits), 16-bit operands "
        "into fp32 outputs, each over all N tokens at once. An op's time over this row is its overhead "
        "beyond its matmuls.",
    ),
    Provider("naive", "naive", _ALL, "PyTorch: logits = (h @ W.T).float(), log_softmax over all of V"),
    Provider("naive-compiled", "naive", _ALL, "the naive code under torch.compile(dynamic=False)"),
    Provider(
        "liger-fused-linear-jsd",
        "peer",
        ("fused_reverse_kl",),
        "Liger-Kernel LigerFusedLinearJSD(jsd_beta=1.0) (Triton)",
        needs_cuda=True,
        module="liger_kernel.transformers",
    ),
    Provider(
        "liger-fused-linear-jsd-fp32-accum",
        "peer",
        ("fused_reverse_kl",),
        "Liger-Kernel LigerFusedLinearJSD(jsd_beta=1.0, accum_dtype=torch.float32) (Triton)",
        needs_cuda=True,
        module="liger_kernel.transformers",
        check=_needs("liger_kernel.transformers", "LigerFusedLinearJSD", "accum_dtype"),
    ),
    Provider(
        "liger-fused-linear-kldiv",
        "peer",
        ("fused_reverse_kl",),
        "Liger-Kernel LigerFusedLinearKLDivLoss(reduction='batchmean') (Triton) against the teacher's "
        "probabilities softmax(h_t W_t^T / tau), built [N, V] fp32 inside the timed call",
        needs_cuda=True,
        module="liger_kernel.transformers",
        check=_needs("liger_kernel.transformers", "LigerFusedLinearKLDivLoss"),
        quantity="forward_kl",
        note="`liger-fused-linear-kldiv` computes KL(teacher ‖ student), the forward KL, from teacher "
        "probabilities it must be given: the [N, V] fp32 softmax of the teacher's logits is built inside "
        "the timed call; its error columns compare with the float64 forward KL.",
    ),
    Provider(
        "liger-chunked-jsd-loss",
        "peer",
        ("fused_reverse_kl",),
        "Liger-Kernel chunked_loss.LigerFusedLinearJSDLoss(beta=1.0, weight_hard_loss=0.0, "
        "weight_soft_loss=1.0) (PyTorch + torch.compile)",
        module="liger_kernel.chunked_loss",
    ),
    Provider(
        "liger-fused-linear-grpo",
        "peer",
        _PG,
        "Liger-Kernel chunked_loss.LigerFusedLinearGRPOLoss(beta=0, loss_type='bnpo', epsilon 0.2) "
        "(PyTorch + torch.compile)",
        module="liger_kernel.chunked_loss",
        check=_needs("liger_kernel.chunked_loss", "LigerFusedLinearGRPOLoss"),
        quantity="ppo_surrogate",
        note="`liger-fused-linear-grpo` returns the value of PPO's clipped surrogate, -min(r A, clip(r) A), "
        "where ours returns -A w lp (w the detached ratio, 0 where the clip is flat): the same "
        "gradient, another value; its error column compares with the float64 surrogate.",
    ),
    Provider(
        "cce",
        "peer",
        ("token_logprobs",),
        "Cut Cross-Entropy linear_cross_entropy(reduction='none', impl='cce'), negated (Triton)",
        needs_cuda=True,
        module="cut_cross_entropy",
    ),
    Provider(
        "cce-torch-compile",
        "peer",
        ("token_logprobs",),
        "Cut Cross-Entropy linear_cross_entropy(reduction='none', impl='torch_compile'), negated",
        module="cut_cross_entropy",
    ),
)


def providers_for(kernel: str) -> list[Provider]:
    return [p for p in PROVIDERS if kernel in p.kernels]


PROVIDER_NAMES = tuple(dict.fromkeys(p.name for p in PROVIDERS))
PROVIDER_NOTES = {p.name: p.note for p in PROVIDERS if p.note}
