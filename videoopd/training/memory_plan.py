"""Per-GPU memory of an OPD or GRPO run, by part and by phase of the step, before it starts.

``plan_memory(student, teacher, gpus=8, video_tokens=16_384, ...)`` returns a :class:`MemoryPlan`:
each part's bytes on one process (student weights, gradients, AdamW state and fp32 masters under
DDP or FSDP2; the teacher replicated or sharded; the training forward's activations with gradient
checkpointing; the loss head's chunk buffers; the unsharded rollout copy; the KV cache; what the
step keeps of each micro-batch), the peak over the step's phases (rollout, teacher, student,
optimizer), whether it fits ``gpu_memory_gib``, and when it does not, which setting to change
(``advice``; :func:`max_video_tokens` finds the longest video that fits).

Models are counted, not loaded: a config (a model folder's ``config.json``, a transformers config,
or one of :data:`NAMED_CONFIGS`: the Qwen3-VL-2B / 8B / 32B architectures, built in code) becomes
a model on the meta device, whose parameters give the exact sizes of the whole model, its vision
tower, embedding, head and largest FSDP unit. The activation terms are per-token byte counts of
the tensors a Qwen-VL decoder layer and vision block hold (listed where they are defined); the
plan was checked against measured peaks (``python -m bench.plan_check``; the error
is in docs/scaling-out.md). Every figure is an estimate: allocator caching, fragmentation and the
framework's own buffers (CUDA context, NCCL) come on top, which ``headroom`` stands for.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Literal

from videoopd.algo.algorithms import default_num_generations
from videoopd.training.config import DecodeOptions
from videoopd.training.model_sizes import NAMED_CONFIGS as NAMED_CONFIGS
from videoopd.training.model_sizes import ModelSize as ModelSize
from videoopd.training.model_sizes import model_size as model_size
from videoopd.training.model_sizes import named_config as named_config
from videoopd.training.plan_parts import GIB as GIB
from videoopd.training.plan_parts import PHASES as PHASES
from videoopd.training.plan_parts import MemoryPlan as MemoryPlan
from videoopd.training.plan_parts import Part as Part

__all__ = ["MemoryPlan", "max_video_tokens", "plan_memory"]

ENGINES = ("ddp", "fsdp2")
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
# A CPU process's resident memory also holds what its first step loads and caches (kernels' code,
# the processor's and generate's buffers): measured as the peak RSS growth of the smallest step
# (python -m bench.plan_check --sizes 64x1/96x1/4096/64: 187 MiB) less the tensors this plan counts
# there (66 MiB). The CUDA allocator's figure has no such part (the CUDA context is the headroom's).
CPU_RUNTIME_BYTES = 120 * 2**20
# the loop's --max-new-tokens default, the answer tokens a plan assumes unless told
ANSWER_TOKENS = next(f.default for f in dataclasses.fields(DecodeOptions) if f.name == "max_new_tokens")
PATCH_VALUES = 2 * 3 * 16 * 16  # values of one Qwen-VL video patch (2 frames x RGB x 16 x 16)


# ------------------------------------------------------------------------------------------ activations
# Bytes per token (in units of the activation dtype) of the tensors one layer holds. A decoder
# layer's training forward keeps, for its backward: the input norm's output (D), q, k, v (after
# the q/k norms and rotary: q and kv twice), the attention output (q), the o-projection output and
# the residual (2 D), the post-attention norm (D), the MLP's gate, up, activation and product
# (4 I), the down projection's output (D). Gradient checkpointing keeps only each layer's input
# (D) and recomputes one layer at a time in the backward, where the layer's gradients of the same
# tensors come on top (x 2).


def _layer_saved(m: ModelSize) -> int:
    return 5 * m.width + 3 * m.q_width + 4 * m.kv_width + 4 * m.intermediate


def _layer_no_grad(m: ModelSize) -> int:
    """A forward without autograd frees each tensor after its use: the live set peaks in the MLP
    (input, gate, up, their product) or the attention (input, q, k, v, output)."""
    return max(2 * m.width + 3 * m.intermediate, 2 * m.width + 2 * m.q_width + 2 * m.kv_width)


def _vision_block_no_grad(m: ModelSize) -> int:
    return 2 * m.vision_width + 2 * m.vision_intermediate


def _check(name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def plan_memory(
    student: Any,
    teacher: Any = None,
    *,
    objective: Literal["opd", "grpo"] = "opd",
    gpus: int = 1,
    gpu_memory_gib: float = 80.0,
    engine: Literal["ddp", "fsdp2"] = "fsdp2",
    teacher_placement: Literal["auto", "replicate", "shard"] = "auto",
    video_tokens: int = 16_384,
    text_tokens: int = 160,
    answer_tokens: int = ANSWER_TOKENS,
    per_device_train_batch_size: int = 1,
    gradient_accumulation_steps: int = 1,
    num_generations: int | None = None,
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16",
    master_weights: Literal["auto", "fp32", "none"] = "auto",
    gradient_checkpointing: bool = True,
    rollout: Literal["gathered", "sharded"] = "gathered",
    teacher_heads: int = 1,
    train_vision: bool = False,
    device: Literal["cuda", "cpu"] = "cuda",
    headroom: float = 0.1,
    rollout_batch_size: int = 0,
) -> MemoryPlan:
    """The per-process memory of a run (see the module docstring).

    ``student``/``teacher``: a config name, model folder, transformers config or :class:`ModelSize`
    (no teacher for GRPO). ``rollout``: "gathered" generates with the student's full weights
    gathered once per generate call (FSDP2: a full bf16 copy during the rollout), "sharded" runs
    generation as the sharded model's forward (each unit gathered while it runs, every token).
    ``teacher_heads``: full copies of the teacher's LM head the exact objective holds under a sharded
    teacher (one per micro-batch in a loop that clones it per micro-batch). ``headroom``: the share
    of ``gpu_memory_gib`` left for the allocator, CUDA context and communication buffers.
    ``rollout_batch_size``: rollouts per generate call and teacher forward (whole micro-batches;
    0: all of the step's, as ``videoopd.train``'s default).
    """
    _check("objective", objective, objective in ("opd", "grpo"), "opd or grpo")
    _check("engine", engine, engine in ENGINES, " or ".join(ENGINES))
    _check(
        "teacher_placement",
        teacher_placement,
        teacher_placement in ("auto", "replicate", "shard"),
        "auto, replicate or shard",
    )
    _check("dtype", dtype, dtype in DTYPE_BYTES, ", ".join(DTYPE_BYTES))
    _check("master_weights", master_weights, master_weights in ("auto", "fp32", "none"), "auto, fp32 or none")
    _check("rollout", rollout, rollout in ("gathered", "sharded"), "gathered or sharded")
    _check("device", device, device in ("cuda", "cpu"), "cuda or cpu")
    for name, value, low in (
        ("gpus", gpus, 1),
        ("video_tokens", video_tokens, 0),
        ("text_tokens", text_tokens, 0),
        ("answer_tokens", answer_tokens, 1),
        ("per_device_train_batch_size", per_device_train_batch_size, 1),
        ("gradient_accumulation_steps", gradient_accumulation_steps, 1),
        ("teacher_heads", teacher_heads, 0),
        ("rollout_batch_size", rollout_batch_size, 0),
    ):
        _check(name, value, isinstance(value, int) and not isinstance(value, bool) and value >= low, f"an int >= {low}")
    _check("gpu_memory_gib", gpu_memory_gib, gpu_memory_gib > 0, "> 0")
    _check("headroom", headroom, 0 <= headroom < 1, "in [0, 1)")
    if objective == "opd" and teacher is None:
        raise ValueError("teacher is required for objective 'opd'")
    if teacher_placement == "shard" and engine != "fsdp2":
        raise ValueError("teacher_placement 'shard' needs engine 'fsdp2'")
    s, t = model_size(student), model_size(teacher) if objective == "opd" else None
    kw = dict(
        objective=objective,
        gpus=gpus,
        gpu_memory_gib=gpu_memory_gib,
        engine=engine,
        teacher_placement=teacher_placement,
        video_tokens=video_tokens,
        text_tokens=text_tokens,
        answer_tokens=answer_tokens,
        per_device_train_batch_size=per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        num_generations=num_generations,
        dtype=dtype,
        master_weights=master_weights,
        gradient_checkpointing=gradient_checkpointing,
        rollout=rollout,
        teacher_heads=teacher_heads,
        train_vision=train_vision,
        device=device,
        headroom=headroom,
        rollout_batch_size=rollout_batch_size,
    )
    plan = _plan(s, t, **kw)
    if not plan.fits:
        plan.advice = _advice(plan, s, t, kw)
    return plan


def _plan(
    s: ModelSize,
    t: ModelSize | None,
    *,
    objective: str,
    gpus: int,
    gpu_memory_gib: float,
    engine: str,
    teacher_placement: str,
    video_tokens: int,
    text_tokens: int,
    answer_tokens: int,
    per_device_train_batch_size: int,
    gradient_accumulation_steps: int,
    num_generations: int | None,
    dtype: str,
    master_weights: str,
    gradient_checkpointing: bool,
    rollout: str,
    teacher_heads: int,
    train_vision: bool,
    device: str,
    headroom: float,
    rollout_batch_size: int,
) -> MemoryPlan:
    """The plan's parts, each with the phases that hold it, for the checked settings of
    :func:`plan_memory` (its docstring and the module's say what each part counts)."""
    g = num_generations if num_generations is not None else default_num_generations(objective)
    _check("num_generations", g, isinstance(g, int) and g >= 1, "an int >= 1")
    fsdp = engine == "fsdp2"
    placement = teacher_placement if teacher_placement != "auto" else ("shard" if fsdp else "replicate")
    w = DTYPE_BYTES[dtype]  # weights' dtype (FSDP2: the dtype units are gathered in)
    a = w  # activations
    seqs = per_device_train_batch_size * g  # sequences of one micro-batch
    # sequences of one generate call and teacher forward: whole micro-batches, at most the step's
    per_call = (
        max(1, min(gradient_accumulation_steps, rollout_batch_size // seqs))
        if rollout_batch_size
        else gradient_accumulation_steps
    )
    call_seqs = per_call * seqs
    length = video_tokens + text_tokens + answer_tokens
    tokens = seqs * length
    all_phases = PHASES
    parts: list[Part] = []

    def add(name: str, nbytes: float, phases: tuple[str, ...], note: str) -> None:
        parts.append(Part(name, float(nbytes), phases, note))

    # --- the student's state: gradients and AdamW state for the trained parameters only (the
    # vision tower is frozen unless train_vision)
    n = s.params
    trained = n if train_vision else n - s.vision_params
    if fsdp:
        add("student weights", 4 * n / gpus, all_phases, f"fp32, sharded over {gpus} (FSDP2 keeps fp32 shards)")
        add("student gradients", 4 * trained / gpus, ("student", "optimizer"), "fp32, sharded; freed after the step")
        add("AdamW state", 8 * trained / gpus, all_phases, "fp32 exp_avg + exp_avg_sq, sharded")
        unit = w * max(s.layer_params, s.vision_block_params)
        add(
            "gathered student units",
            2 * unit + w * (s.embed_params + s.head_params),
            ("student",),
            f"{dtype} copies of the running and the prefetched layer, and of embedding + head (root unit)",
        )
        state = 4  # AdamW's values are fp32
    else:
        masters = master_weights == "fp32" or (master_weights == "auto" and w < 4)
        state = 4 if masters else w  # AdamW keeps its state in the dtype of the parameters it steps
        add("student weights", w * n, all_phases, f"{dtype}, a full copy per process (DDP)")
        add("student gradients", w * trained, ("student", "optimizer"), f"{dtype}, full; all-reduced in buckets")
        add(
            "AdamW state",
            2 * state * trained,
            all_phases,
            f"exp_avg + exp_avg_sq in {'fp32' if state == 4 else dtype}, full",
        )
        if masters:
            add("fp32 master weights", 4 * trained, all_phases, "--master-weights auto/fp32 with low-precision weights")
            add("fp32 master gradients", 4 * trained, ("optimizer",), "gradients copied to the masters")
    shard = 1 / gpus if fsdp else 1
    # torch's AdamW: on CUDA the foreach form builds one temporary the size of all trained
    # parameters (sqrt(exp_avg_sq)); on CPU the per-parameter loop one the size of the largest
    if device == "cuda":
        add("AdamW step temporaries", state * trained * shard, ("optimizer",), "foreach AdamW's sqrt(exp_avg_sq)")
    else:
        largest = max(s.embed_params, s.head_params, s.layer_params)
        add("AdamW step temporaries", state * largest * shard, ("optimizer",), "AdamW's per-parameter sqrt buffer")

    if device == "cpu":
        add("process runtime (CPU)", CPU_RUNTIME_BYTES, all_phases, "code and caches of the first step, in RSS")

    # --- the teacher
    if t is not None:
        if placement == "shard":
            add("teacher weights", w * t.params / gpus, all_phases, f"{dtype}, sharded over {gpus}, frozen")
            add(
                "gathered teacher units",
                2 * w * max(t.layer_params, t.vision_block_params) + w * (t.embed_params + t.head_params),
                ("teacher",),
                "running + prefetched layer, root unit",
            )
            if teacher_heads:
                add(
                    "teacher head copies",
                    teacher_heads * w * t.vocab * t.width,
                    ("teacher", "student"),
                    f"{teacher_heads} full {dtype} copy(ies) of the frozen head for the exact objective",
                )
        else:
            add("teacher weights", w * t.params, all_phases, f"{dtype}, a full copy per process, frozen")

    # --- what the step keeps of each micro-batch until its student forward
    # per sequence: the processor's patches ([4 x video tokens, 2 x 3 x 16 x 16] in the activation dtype on
    # the device) and the student's encoded video with its deepstack features (reused by the training forward)
    kept = gradient_accumulation_steps * seqs * a * video_tokens * (4 * PATCH_VALUES + s.width * (1 + s.deepstack))
    add(
        "the step's micro-batches",
        kept,
        ("rollout", "teacher", "student"),
        f"{gradient_accumulation_steps} micro-batch(es): the video's patches and the student's encoded video "
        "(+ deepstack features), kept from rollout to the student's forward",
    )

    # --- rollout
    full_weights = w * n if fsdp and rollout == "gathered" else 0
    if fsdp and rollout == "gathered":
        add(
            "rollout copy of the student",
            full_weights,
            ("rollout",),
            f"the full {dtype} student, gathered once per generate call",
        )
    elif fsdp:
        add(
            "gathered student units (rollout)",
            2 * w * max(s.layer_params, s.vision_block_params) + w * (s.embed_params + s.head_params),
            ("rollout",),
            "each unit gathered while it runs, every token",
        )
    cache = 2 * s.layers * s.kv_width * call_seqs * length * a
    add(
        "KV cache",
        cache,
        ("rollout",),
        f"{call_seqs} sequence(s) of a generate call x {length:,} tokens x {s.layers} layers",
    )
    patches = 4 * video_tokens * call_seqs  # 2 x 2 patches merge into one video token
    call_tokens = call_seqs * length
    vision_live = a * patches * _vision_block_no_grad(s) if s.vision_width else 0
    prefill = max(a * call_tokens * _layer_no_grad(s), vision_live) + a * call_tokens * s.width
    add("rollout forward (prefill)", prefill, ("rollout",), "one layer's live tensors without autograd")

    # --- teacher scoring
    if t is not None:
        t_live = (
            max(a * call_tokens * _layer_no_grad(t), a * patches * _vision_block_no_grad(t) if t.vision_width else 0)
            + a * call_tokens * t.width
        )
        add("teacher forward", t_live, ("teacher",), "one layer's live tensors without autograd")
        add(
            "teacher answer states",
            gradient_accumulation_steps * a * seqs * answer_tokens * t.width,
            ("teacher", "student"),
            "the teacher's hidden states of the answers, kept for the loss",
        )

    # --- the student's training forward + backward
    if gradient_checkpointing:
        acts = a * tokens * (s.layers * s.width + 2 * _layer_saved(s))
        note = "each layer's input kept, one layer recomputed with its gradients (x 2)"
    else:
        acts = a * tokens * s.layers * _layer_saved(s)
        note = "every layer's tensors kept (no gradient checkpointing)"
    add("training activations", acts + a * tokens * s.width * 2, ("student",), note + "; embeddings and output")
    from_head = t.width if t is not None else 0
    logit_bytes = 8 if t is not None else 4
    chunk = min(seqs * answer_tokens, max(16, min(8 * s.width // logit_bytes, 2**30 // (logit_bytes * s.vocab))))
    add(
        "loss head",
        chunk * s.vocab * logit_bytes
        + 4 * s.vocab * s.width * shard
        + a * seqs * answer_tokens * (s.width + from_head),
        ("student",),
        f"opd_kernels: a {chunk}-token chunk of fp32 logits, the head's fp32 gradient",
    )
    settings = dict(
        objective=objective,
        gpus=gpus,
        engine=engine,
        teacher_placement=placement,
        video_tokens=video_tokens,
        text_tokens=text_tokens,
        answer_tokens=answer_tokens,
        per_device_train_batch_size=per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        num_generations=g,
        dtype=dtype,
        rollout=rollout,
        teacher_heads=teacher_heads,
        rollout_batch_size=call_seqs,
        student=s.name,
        teacher=t.name if t else None,
    )
    return MemoryPlan(parts, gpu_memory_gib * GIB, headroom, settings)


def _advice(plan: MemoryPlan, s: ModelSize, t: ModelSize | None, kw: dict[str, Any]) -> list[str]:
    """Settings that make the run fit, each tried alone, most effective first."""

    def fits(**change: Any) -> MemoryPlan:
        return _plan(s, t, **{**kw, **change})

    tries = []
    if kw["engine"] == "ddp":
        tries.append(("launch with configs/accelerate/fsdp2.yaml (shard the student)", {"engine": "fsdp2"}))
    if kw["engine"] == "fsdp2" and kw["teacher_placement"] == "replicate":
        tries.append(("--teacher-placement shard", {"teacher_placement": "shard"}))
    if kw["rollout"] == "gathered" and kw["engine"] == "fsdp2":
        tries.append(
            (
                "--gather-for-generation false (no gathered rollout copy; slower: a gather per token)",
                {"rollout": "sharded"},
            )
        )
    if kw["teacher_heads"] > 1:
        tries.append(("keep one teacher head copy", {"teacher_heads": 1}))
    if not kw["gradient_checkpointing"]:
        tries.append(("--gradient-checkpointing true", {"gradient_checkpointing": True}))
    one_call = kw["per_device_train_batch_size"] * (kw["num_generations"] or default_num_generations(kw["objective"]))
    if kw["gradient_accumulation_steps"] > 1 and kw["rollout_batch_size"] != one_call:
        tries.append(
            (
                f"--rollout-batch-size {one_call} (one micro-batch's rollouts per generate call)",
                {"rollout_batch_size": one_call},
            )
        )
    if kw["per_device_train_batch_size"] > 1:
        tries.append(
            (
                "--per-device-train-batch-size 1 (raise --gradient-accumulation-steps to keep the effective batch)",
                {"per_device_train_batch_size": 1},
            )
        )
    out = []
    for text, change in tries:
        p = fits(**change)
        if p.fits:
            out.append(f"{text}: peak {p.peak_bytes / GIB:,.1f} GiB")
    for gpus in (2, 4, 8, 16, 32, 64):
        more = fits(gpus=gpus)
        if gpus > kw["gpus"] and kw["engine"] == "fsdp2" and more.fits:
            out.append(f"{gpus} GPUs (FSDP2 shards the state further): peak {more.peak_bytes / GIB:,.1f} GiB")
            break
    most = _max_video_tokens(s, t, {k: v for k, v in kw.items() if k != "video_tokens"})
    if most > 0:
        out.append(
            f"video tokens at most {most:,} a video (now {kw['video_tokens']:,}): lower --total-pixels / "
            "--max-frames / --fps"
        )
    if not out:
        out.append("no single setting makes it fit: more or larger GPUs, or a smaller student/teacher")
    return out


def max_video_tokens(student: Any, teacher: Any = None, **settings: Any) -> int:
    """The most video tokens a video may have for ``plan_memory(student, teacher, video_tokens=..., **settings)``
    to fit (0: not even a video of none)."""
    if "video_tokens" in settings:
        raise TypeError("max_video_tokens finds video_tokens; do not pass it")
    plan_memory(student, teacher, video_tokens=0, **settings)  # checks the settings
    objective = settings.get("objective", "opd")
    kw = {k: v for k, v in {**PLAN_DEFAULTS, **settings}.items() if k != "video_tokens"}
    return _max_video_tokens(model_size(student), model_size(teacher) if objective == "opd" else None, kw)


def _max_video_tokens(s: ModelSize, t: ModelSize | None, kw: dict[str, Any], upper: int = 1 << 21) -> int:
    def fits(v: int) -> bool:
        return _plan(s, t, video_tokens=v, **kw).fits

    if not fits(0):
        return 0
    low, high = 0, upper
    if fits(high):
        return high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


# plan_memory's settings and their defaults, declared once (its signature); the command's options use them
PLAN_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(plan_memory).parameters.items()
    if p.default is not inspect.Parameter.empty and name != "teacher"
}
