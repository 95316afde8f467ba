"""Student / teacher loading, base-model hidden states and pair compatibility checks.

Hidden states come from the *base* model (``model.model``: Qwen2_5_VLModel / Qwen3VLModel in
transformers 5.x, whose output ``last_hidden_state`` is the final-norm hidden state that
``lm_head`` would read); the head weight is ``model.lm_head.weight``. No [tokens, vocab]
logits are ever built here. :func:`policy_head_forward` computes "hidden states -> head_fn(hidden,
W)" inside the model's forward (and the head's), where DDP and FSDP2 see the weights' use.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from videoopd.qwen.checkpoints import CHAT_TEMPLATE_FILES as CHAT_TEMPLATE_FILES
from videoopd.qwen.checkpoints import TOKENIZER_FILES as TOKENIZER_FILES
from videoopd.qwen.checkpoints import CheckpointError as CheckpointError
from videoopd.qwen.checkpoints import adapter_base as adapter_base
from videoopd.qwen.checkpoints import check_checkpoint as check_checkpoint

__all__ = ["load_policy"]

T = TypeVar("T")


def attn_implementation_for(device: str | torch.device) -> str:
    """flash_attention_2 on CUDA when flash-attn is installed, else sdpa (never imports flash_attn)."""
    on_cuda = torch.device(device).type == "cuda"
    return "flash_attention_2" if on_cuda and importlib.util.find_spec("flash_attn") is not None else "sdpa"


def unwrap_peft(model: Any) -> Any:
    """The Hugging Face model inside a ``peft.PeftModel`` (its modules carry the adapters), or
    ``model`` itself."""
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def _base_model(model: Any) -> Any:
    model = unwrap_peft(model)
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "language_model"):
        raise TypeError(f"expected a Qwen-VL *ForConditionalGeneration with .model, got {type(model).__name__}")
    return base


def lm_head_module(model: Any) -> torch.nn.Module:
    """The LM head module (``model.lm_head``, or the output embeddings)."""
    model = unwrap_peft(model)
    head = getattr(model, "lm_head", None)
    if head is None:
        head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise TypeError(f"{type(model).__name__} has no LM head")
    return head


def lm_head_weight(model: Any) -> torch.Tensor:
    """The LM head weight [V, D] (``model.lm_head.weight``; tied heads share the embedding).
    Under FSDP2 this is a sharded DTensor outside the head's forward: the training loop reads
    it inside (``videoopd.training.distributed.policy_head_forward``)."""
    return lm_head_module(model).weight


def base_hidden_states(model: Any, **inputs: Any) -> torch.Tensor:
    """Final hidden states [B, L, D] of the base model (never the lm_head logits)."""
    inputs.pop("labels", None)
    inputs.setdefault("use_cache", False)
    out = _base_model(model)(**inputs, return_dict=True)
    return out.last_hidden_state


def freeze_vision(model: Any, frozen: bool = True) -> None:
    """Freeze (or unfreeze) the vision tower (``model.model.visual``)."""
    visual = getattr(_base_model(model), "visual", None)
    if visual is None:
        raise TypeError(f"{type(model).__name__} has no vision tower at .model.visual")
    for p in visual.parameters():
        p.requires_grad_(not frozen)


# The processor's pixel tensors of each modality, and the grid its encoder reads with them.
VISION_PIXEL_INPUTS = {"video": ("pixel_values_videos", "video_grid_thw"), "image": ("pixel_values", "image_grid_thw")}


def encode_vision(model: Any, inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The frozen vision tower's output for ``inputs``' pixels, as the base model's forward
    takes it back (``mm_encoder_outputs``: {"video": ..., "image": ...}), so that a step that
    runs the same video through the model twice (the rollout's generate, then the training
    forward) encodes it once; the forward then gives what it gives from the pixels.

    None where that does not hold or cannot be done: no pixels, a vision tower with any
    trainable parameter (``train_vision``, adapters on it), an FSDP2-sharded model (its
    weights exist only inside its forward), or a transformers version whose forward takes no
    ``mm_encoder_outputs``.
    """
    if is_fsdp_sharded(model):
        return None
    base = _base_model(model)
    visual = getattr(base, "visual", None)
    if visual is None or "mm_encoder_outputs" not in inspect.signature(base.forward).parameters:
        return None
    if any(p.requires_grad for p in visual.parameters()):
        return None
    encoded = {}
    with torch.no_grad():
        for modality, (pixels, grid) in VISION_PIXEL_INPUTS.items():
            if inputs.get(pixels) is not None:
                features = getattr(base, f"get_{modality}_features")
                encoded[modality] = features(inputs[pixels], inputs[grid], return_dict=True)
    return encoded or None


def concat_encoded_vision(encodings: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The :func:`encode_vision` outputs of several batches as one, for the batch that
    concatenates their rows (:func:`videoopd.qwen.collators.concat_model_inputs`): the encoder
    output holds one entry per video in the batch's order (``pooler_output``: a tuple of
    per-video tensors; ``deepstack_features``: a list over layers of such tuples; flat patch
    tensors concatenated over videos), so each field is joined in the batches' order. None when
    any batch has none (then every batch feeds its pixels)."""
    if not encodings or any(e is None for e in encodings):
        return None
    if len(encodings) == 1:
        return encodings[0]
    modalities = set(encodings[0])
    if any(set(e) != modalities for e in encodings):
        raise ValueError(f"batches encode different modalities: {[sorted(e) for e in encodings]}")

    def join(values: list[Any]) -> Any:
        first = values[0]
        if first is None:
            return None
        if torch.is_tensor(first):
            return torch.cat(values, dim=0)
        if isinstance(first, tuple):  # one tensor per video
            return tuple(item for value in values for item in value)
        if isinstance(first, list):  # per layer, each one tensor per video
            return [join([value[i] for value in values]) for i in range(len(first))]
        raise TypeError(f"cannot join encoder outputs of type {type(first).__name__}")

    merged = {}
    for modality in encodings[0]:
        outputs = [e[modality] for e in encodings]
        fields = {key: join([o[key] if key in o else None for o in outputs]) for key in outputs[0].keys()}
        merged[modality] = type(outputs[0])(**fields)
    return merged


def with_encoded_vision(inputs: dict[str, Any], encoded: dict[str, Any] | None) -> dict[str, Any]:
    """``inputs`` with the pixels of each modality in ``encoded`` replaced by its encoder
    output (``mm_encoder_outputs``; the grids stay: the position ids need them)."""
    if not encoded:
        return inputs
    dropped = {VISION_PIXEL_INPUTS[modality][0] for modality in encoded}
    return {**{k: v for k, v in inputs.items() if k not in dropped}, "mm_encoder_outputs": dict(encoded)}


def prepare_policy(
    model: Any, *, trainable: bool, gradient_checkpointing: bool = True, train_vision: bool = False
) -> Any:
    """Set requires_grad / checkpointing for a loaded or in-memory model; returns it."""
    if trainable:
        for p in model.parameters():
            p.requires_grad_(True)
        freeze_vision(model, frozen=not train_vision)
        if gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = True  # generate uses the KV cache in eval mode
        model.train()
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
    return model


def available_device(spec: str) -> torch.device:
    """``spec`` as a device of this machine; ValueError saying why not (not a device name, no
    such kind of device here, or an index past the devices there are)."""
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ValueError(f"{spec!r} is not a device name (e.g. cpu, cuda, cuda:1, mps)") from None
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu, ...
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise ValueError(f"{spec!r}: this machine has no {device.type} device")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise ValueError(
            f"{spec!r}: this machine has {count} {device.type} device(s), {device.type}:0 to {device.type}:{count - 1}"
        )
    return device


def load_policy(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    trainable: bool,
    dtype: str = "auto",
    gradient_checkpointing: bool = True,
    train_vision: bool = False,
    attn_implementation: str | None = None,
) -> Any:
    """A local checkpoint as ``AutoModelForImageTextToText`` (never downloads); a LoRA adapter
    folder (a ``--lora-r`` run's ``final/``) loads its base model with the adapter merged in
    (frozen models only).

    dtype "auto": bfloat16 on CUDA, float32 elsewhere. The teacher (``trainable=False``) is
    frozen and in eval mode; the student has its vision tower frozen unless ``train_vision``.
    """
    from transformers import AutoModelForImageTextToText

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}")
    if not (path / "config.json").is_file() and (path / "adapter_config.json").is_file():
        if trainable:
            raise ValueError(
                f"{path} holds a LoRA adapter: train from its base model with --lora-r, or from a "
                "model written with --merge-lora"
            )
        from peft import PeftModel

        base = load_policy(
            adapter_base(path), device=device, trainable=False, dtype=dtype, attn_implementation=attn_implementation
        )
        merged = PeftModel.from_pretrained(base, str(path)).merge_and_unload()  # plain weights: plain inference
        return prepare_policy(merged, trainable=False)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in model folder {path}")
    on_cuda = torch.device(device).type == "cuda"
    dtypes = {
        "auto": torch.bfloat16 if on_cuda else torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "float32": torch.float32,
    }
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    model = AutoModelForImageTextToText.from_pretrained(
        str(path),
        local_files_only=True,
        dtype=dtypes[dtype],
        attn_implementation=attn_implementation or attn_implementation_for(device),
    )
    model.to(device)
    return prepare_policy(
        model, trainable=trainable, gradient_checkpointing=gradient_checkpointing, train_vision=train_vision
    )


def tokenizer_of(processor_or_tokenizer: Any) -> Any:
    """The tokenizer of a processor, or the tokenizer itself."""
    return getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)


def pair_facts(model: Any, processor: Any) -> dict[str, Any]:
    """What :func:`check_pair_facts` compares of a model and its processor (small, picklable:
    a teacher elsewhere sends it once): the family, the tokenizer's vocabulary and special
    ids, the head's rows and the tokenizer's length."""
    tok = tokenizer_of(processor)
    return {
        "model_type": unwrap_peft(model).config.model_type,
        "vocab": tok.get_vocab(),
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "head_rows": lm_head_weight(model).shape[0],
        "tokenizer_len": len(tok),
    }


def check_pair(student: Any, teacher: Any, student_processor: Any, teacher_processor: Any) -> None:
    """Raise ValueError when the teacher cannot score the student's tokens
    (:func:`check_pair_facts` of both)."""
    check_pair_facts(pair_facts(student, student_processor), pair_facts(teacher, teacher_processor))


def check_pair_facts(student: dict[str, Any], teacher: dict[str, Any]) -> None:
    """Raise ValueError when the teacher cannot score the student's tokens (``student`` and
    ``teacher``: their :func:`pair_facts`).

    Both must be of one model family (model_type): the teacher is fed the inputs the
    student's processor made (video patches, grid and position layout are per family). The
    tokenizers must map the same strings to the same ids (vocabulary and special tokens),
    and the teacher's head must have at least the student's vocabulary rows (a larger,
    padded head is fine: only its first rows are used).
    """
    s_type, t_type = student["model_type"], teacher["model_type"]
    if s_type != t_type:
        raise ValueError(
            f"the student is a {s_type} model and the teacher a {t_type} model: the teacher must be of "
            "the student's family, because the same processed video inputs are fed to both"
        )
    s_vocab, t_vocab = student["vocab"], teacher["vocab"]
    if s_vocab != t_vocab:
        only_s = sorted(set(s_vocab.items()) - set(t_vocab.items()))[:3]
        only_t = sorted(set(t_vocab.items()) - set(s_vocab.items()))[:3]
        raise ValueError(
            "teacher and student tokenizers differ "
            f"(student {len(s_vocab)} entries, teacher {len(t_vocab)}; e.g. student-only {only_s}, "
            f"teacher-only {only_t}); on-policy distillation needs the same tokenizer"
        )
    for attr in ("eos_token_id", "pad_token_id"):
        if student[attr] != teacher[attr]:
            raise ValueError(f"teacher and student tokenizers differ in {attr}: {student[attr]} vs {teacher[attr]}")
    needed = max(student["head_rows"], student["tokenizer_len"])
    if teacher["head_rows"] < needed:
        raise ValueError(
            f"teacher LM head has {teacher['head_rows']} rows, smaller than the student vocabulary "
            f"({needed}); the teacher cannot score every student token"
        )


# --------------------------------------------------------------------------------------
# forward redirection: weights used where the engine (DDP, FSDP2) sees them


def call_as_forward(
    wrapper: torch.nn.Module, module: torch.nn.Module, fn: Callable[..., T], *args: Any, **kwargs: Any
) -> T:
    """``fn(*args, **kwargs)`` run as ``module.forward``, called through ``wrapper``.

    ``wrapper`` is what the engine returned for ``module`` (a DDP wrapper, the FSDP2 module
    itself, or the module): its hooks fire around ``fn``. The original forward is restored
    before ``fn`` runs, so that ``fn`` may call the module again.
    """
    had_own = "forward" in module.__dict__
    own = module.__dict__.get("forward")

    def restore() -> None:
        if had_own:
            module.forward = own
        else:
            module.__dict__.pop("forward", None)

    def redirected(*a: Any, **k: Any) -> T:
        restore()
        return fn(*a, **k)

    module.forward = redirected
    try:
        return wrapper(*args, **kwargs)
    finally:
        restore()


def policy_head_forward(
    wrapper: torch.nn.Module,
    model: torch.nn.Module,
    inputs: dict[str, Any],
    head_fn: Callable[[torch.Tensor, torch.Tensor], T],
) -> T:
    """``head_fn(hidden [B, L, D], head_weight [V, D])`` computed inside ``model``'s forward.

    ``model`` is a Qwen-VL ``*ForConditionalGeneration``, ``wrapper`` its prepared form. The
    hidden states are the base model's (no logits); the head weight is the full tensor, also
    under FSDP2. Whatever ``head_fn`` returns is returned (a loss and metrics, log-probs).
    """
    head = lm_head_module(model)

    def body() -> T:
        hidden = base_hidden_states(model, **inputs)  # through the adapters of a PeftModel
        return call_as_forward(head, head, lambda h: head_fn(h, head.weight), hidden)

    return call_as_forward(wrapper, model, body)


@contextlib.contextmanager
def full_weights_gathered(model: Any) -> Iterator[None]:
    """Under FSDP2, keep every FSDP unit of ``model`` unsharded from its first forward to the
    end of the block: a ``generate`` call gathers each unit once instead of once per generated
    token, for the full model's size in memory meanwhile (16 GB for an 8B student in bf16).
    After it, the units that reshard after their forward are resharded and every unit's own
    setting is restored (the engine sets them per unit: accelerate keeps the root and the
    head's group unsharded after forward, and they stay so). Nothing happens for other models."""
    if not is_fsdp_sharded(model):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    # FSDP2 (torch 2.8-2.14) has a setter and no getter for reshard_after_forward: the setting
    # is each parameter group's post-forward mesh (None: keep unsharded), saved here as it is
    states = {id(state): state for state in (m._get_fsdp_state() for m in units)}
    saved = {
        key: (
            state._auto_reshard_after_forward,
            [(group, group.post_forward_mesh_info) for group in state._fsdp_param_groups],
        )
        for key, state in states.items()
    }
    model.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for key, (auto, groups) in saved.items():
            state = states[key]
            state._auto_reshard_after_forward = auto
            # The root keeps its parameters unsharded after forward once its first forward has
            # made it the root (FSDP2's lazy init): that forward may have run in this block, after
            # the settings were saved, and restoring them would have it gathered again in every
            # backward.
            keep = state._is_root and auto
            for group, mesh_info in groups:
                group.post_forward_mesh_info = None if keep else mesh_info
        for unit in units:
            # units the engine keeps unsharded after forward (the root, the head's group) stay so
            if any(group.post_forward_mesh_info is not None for group in unit._get_fsdp_state()._fsdp_param_groups):
                unit.reshard()


def is_fsdp_sharded(model: Any) -> bool:
    """True when ``model`` is an FSDP2 module (its parameters are sharded DTensors outside
    its forward; generation over several processes needs ``synced_gpus``)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(model, FSDPModule)
