"""Loading Qwen-VL processors, with a fallback for installs without torchvision.

transformers' Qwen video processors are torchvision-backed, and a torchvision wheel must
match the installed torch build exactly (the PyPI wheel does not load next to the CPU
build of torch). Our decoder already samples and resizes frames (:mod:`videoopd.data.video`), so
all the video processor has left to do is rescale, normalize and patchify, which needs
only torch. :class:`TorchQwenVideoProcessor` is the transformers Qwen video processor with
those steps in plain torch; :func:`load_processor` uses it only when the regular
``AutoProcessor`` cannot load because torchvision is missing.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from videoopd.data.video import PREPROCESSING_RECORD, DecodeConfig
from videoopd.qwen.models import adapter_base

__all__ = ["load_processor"]

logger = logging.getLogger(__name__)

_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# What each model family's video processor is configured with; `hub_class` is the class a
# checkpoint names, so a saved tiny model loads with the regular processor where torchvision exists.
QWEN_VIDEO_DEFAULTS: dict[str, dict[str, Any]] = {
    "qwen2_5_vl": {
        "hub_class": "Qwen2VLVideoProcessor",
        "patch_size": 14,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "image_mean": _CLIP_MEAN,
        "image_std": _CLIP_STD,
        "size": {"shortest_edge": 128 * 28 * 28, "longest_edge": 768 * 28 * 28},
    },
    "qwen3_vl": {
        "hub_class": "Qwen3VLVideoProcessor",
        "patch_size": 16,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "size": {"shortest_edge": 128 * 32 * 32, "longest_edge": 768 * 32 * 32},
    },
}


def torchvision_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def _qwen3_video_processor_class() -> type:
    # The Qwen3-VL video processor module imports torchvision only if present; its
    # preprocessing (group, rescale/normalize, patchify) is the same as Qwen2-VL's.
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    return Qwen3VLVideoProcessor


class TorchQwenVideoProcessor(_qwen3_video_processor_class()):  # type: ignore[misc]
    """A Qwen-VL video processor that needs no torchvision.

    It takes frames that are already sampled and sized (each side a multiple of
    ``patch_size * merge_size``), as :func:`videoopd.data.video.decode_video` returns them, and
    produces the same ``pixel_values_videos`` / ``video_grid_thw`` as the transformers
    processor called with ``do_resize=False``. It does not resize: call it with
    ``do_resize=False`` (its default), and give it RGB frames.
    """

    do_resize = False
    do_convert_rgb = False
    do_sample_frames = False
    hub_class = "Qwen3VLVideoProcessor"

    def __init__(self, hub_class: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if hub_class is not None:
            self.hub_class = hub_class

    @classmethod
    def for_family(cls, family: str, **overrides: Any) -> TorchQwenVideoProcessor:
        if family not in QWEN_VIDEO_DEFAULTS:
            raise ValueError(f"family must be one of {sorted(QWEN_VIDEO_DEFAULTS)}, got {family!r}")
        return cls(**{**QWEN_VIDEO_DEFAULTS[family], **overrides})

    def normalize(self, image: torch.Tensor, mean: Any, std: Any, inplace: bool = False, **kwargs: Any) -> torch.Tensor:
        mean = torch.as_tensor(mean, dtype=image.dtype, device=image.device).reshape(-1, 1, 1)
        std = torch.as_tensor(std, dtype=image.dtype, device=image.device).reshape(-1, 1, 1)
        return image.sub_(mean).div_(std) if inplace else (image - mean) / std

    def convert_to_rgb(self, video: torch.Tensor) -> torch.Tensor:
        if video.shape[-3] == 3:
            return video
        if video.shape[-3] == 1:
            return video.expand(*video.shape[:-3], 3, *video.shape[-2:])
        raise ValueError(f"expected 1 or 3 channels, got a video of shape {tuple(video.shape)}")

    def resize(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise ValueError(
            "TorchQwenVideoProcessor does not resize: decode with videoopd.data.video.decode_video, which "
            "samples and sizes the frames, and call the processor with do_resize=False"
        )

    def _preprocess(self, videos: list[torch.Tensor], **kwargs: Any):
        factor = (kwargs.get("patch_size") or self.patch_size) * (kwargs.get("merge_size") or self.merge_size)
        for video in videos:
            height, width = video.shape[-2:]
            if height % factor or width % factor:
                raise ValueError(
                    f"frame size {height}x{width} is not a multiple of {factor}: size frames with "
                    "videoopd.data.video.decode_video (DecodeConfig.for_processor) first"
                )
        return super()._preprocess(videos, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        # Saved as the regular class so that checkpoints stay loadable by AutoProcessor.
        output["video_processor_type"] = output.pop("hub_class", None) or self.hub_class
        for key in ("do_resize", "do_convert_rgb", "do_sample_frames"):
            output.pop(key, None)
        return output


def pil_image_processor_class() -> type:
    """The Qwen2-VL image processor that works without torchvision (PIL/numpy backend)."""
    try:  # transformers 5
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil
    except ImportError:  # transformers 4.x: the "slow" processor is the PIL/numpy one
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

        return Qwen2VLImageProcessor


def _chat_template(path: Path, tokenizer: Any) -> str | None:
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    legacy = path / "chat_template.json"
    if legacy.is_file():
        return json.loads(legacy.read_text(encoding="utf-8"))["chat_template"]
    return getattr(tokenizer, "chat_template", None)


def torchvision_free_processor_class(family: str) -> type:
    """The family's processor class, accepting a :class:`TorchQwenVideoProcessor`.

    transformers 5 checks a processor's video processor against ``VideoProcessorMixin``,
    which it only exports when torchvision is installed; this subclass accepts ours too.
    It carries its base's name, so the checkpoints it saves name the regular class.
    """
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor as base
    elif family == "qwen3_vl":
        from transformers import Qwen3VLProcessor as base
    else:
        raise ValueError(f"family must be one of {sorted(QWEN_VIDEO_DEFAULTS)}, got {family!r}")
    if family not in _PROCESSOR_CLASSES:

        def check_argument_for_proper_class(self: Any, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor" and isinstance(argument, TorchQwenVideoProcessor):
                return type(argument)
            return base.check_argument_for_proper_class(self, argument_name, argument)

        _PROCESSOR_CLASSES[family] = type(
            base.__name__,
            (base,),
            {"check_argument_for_proper_class": check_argument_for_proper_class, "__module__": __name__},
        )
    return _PROCESSOR_CLASSES[family]


_PROCESSOR_CLASSES: dict[str, type] = {}


def _saved_settings(path: Path, key: str, filenames: tuple[str, ...]) -> dict[str, Any]:
    """A sub-processor's saved settings: transformers 5 nests them in processor_config.json,
    4.x wrote one file each (Qwen2.5-VL hub checkpoints have only preprocessor_config.json)."""
    unified = path / "processor_config.json"
    if unified.is_file():
        settings = json.loads(unified.read_text(encoding="utf-8")).get(key)
        if isinstance(settings, dict):
            return settings
    for name in filenames:
        if (path / name).is_file():
            return json.loads((path / name).read_text(encoding="utf-8"))
    return {}


# Settings the patching depends on; the resize budgets do not matter here (frames come sized).
_PATCH_SETTINGS = ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std", "rescale_factor")
# Kept so that a checkpoint saved again still says how its frames were sampled and sized.
_SAMPLING_SETTINGS = ("fps", "max_frames", "min_frames", "size", PREPROCESSING_RECORD)


def _load_without_torchvision(path: Path) -> Any:
    from transformers import AutoConfig, AutoTokenizer

    # a LoRA adapter folder holds the processor, and its base model the config
    config_folder = (
        path if (path / "config.json").is_file() or not (path / "adapter_config.json").is_file() else adapter_base(path)
    )
    model_type = AutoConfig.from_pretrained(str(config_folder), local_files_only=True).model_type
    if model_type not in QWEN_VIDEO_DEFAULTS:
        raise ValueError(
            f"{path}: loading a processor without torchvision supports {sorted(QWEN_VIDEO_DEFAULTS)} checkpoints, "
            f"got model_type={model_type!r}; install torchvision matching your torch build"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    defaults = {k: v for k, v in QWEN_VIDEO_DEFAULTS[model_type].items() if k != "hub_class"}
    video_settings = _saved_settings(
        path, "video_processor", ("video_preprocessor_config.json", "preprocessor_config.json")
    )
    image_settings = _saved_settings(path, "image_processor", ("preprocessor_config.json",))
    video_processor = TorchQwenVideoProcessor(
        hub_class=video_settings.get("video_processor_type", QWEN_VIDEO_DEFAULTS[model_type]["hub_class"]),
        **{**defaults, **{k: video_settings[k] for k in _PATCH_SETTINGS + _SAMPLING_SETTINGS if k in video_settings}},
    )
    image_processor = pil_image_processor_class()(
        **{k: v for k, v in {**defaults, **image_settings}.items() if k in _PATCH_SETTINGS}
    )
    return torchvision_free_processor_class(model_type)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=_chat_template(path, tokenizer),
    )


def load_processor(path: str | Path) -> Any:
    """The processor saved in the local checkpoint ``path`` (never downloads).

    ``AutoProcessor`` when it can load; without torchvision, a Qwen2.5-VL / Qwen3-VL
    processor whose video processor is :class:`TorchQwenVideoProcessor`.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}")
    if not torchvision_available():
        logger.info("torchvision is not installed: loading %s with TorchQwenVideoProcessor", path)
        return _load_without_torchvision(path)
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(path), local_files_only=True)


def record_preprocessing(processor: Any, decode_config: DecodeConfig) -> None:
    """Record in ``processor`` the frame sampling a model is trained with (``decode_config``),
    so that what ``save_pretrained`` writes carries it and ``DecodeConfig.for_processor`` of the
    saved checkpoint (eval, sft, train) uses it where no flag overrides it.

    Stored as the video processor's :data:`~videoopd.data.video.PREPROCESSING_RECORD` (in
    ``processor_config.json``); the video processor's own ``fps`` and ``max_frames`` are set
    too, for users of the plain transformers processor. Its ``size`` is left alone: transformers'
    Qwen3-VL video processor reads it as a budget over several frames, ours is per frame.
    """
    video_processor = getattr(processor, "video_processor", None)
    if video_processor is None:
        raise TypeError(f"processor must be a Qwen-VL processor with a video processor, got {type(processor).__name__}")
    setattr(video_processor, PREPROCESSING_RECORD, decode_config.recorded_settings())
    video_processor.fps = decode_config.fps
    video_processor.max_frames = decode_config.max_frames


# --------------------------------------------------------------------------------------
# processor inputs


def _collapse_qwen3_video_markers(processor: Any, texts: Sequence[str]) -> list[str]:
    """Qwen3-VL: hand the processor a bare ``<|video_pad|>`` where the template wrote
    ``<|vision_start|><|video_pad|><|vision_end|>``.

    Qwen's processor replaces that whole triplet by the per-frame
    ``<t seconds><|vision_start|>...<|vision_end|>`` blocks; transformers 5's replaces only
    the pad token, leaving an extra ``<|vision_start|>`` before the first stamp and an extra
    ``<|vision_end|>`` after the last frame. Both expand a bare pad token to Qwen's layout.
    """
    from transformers import Qwen3VLProcessor

    if not isinstance(processor, Qwen3VLProcessor):
        return list(texts)
    triplet = f"{processor.vision_start_token}{processor.video_token}{processor.vision_end_token}"
    return [text.replace(triplet, processor.video_token) for text in texts]


def processor_inputs(processor: Any, texts: Sequence[str], videos: Sequence[Any], padding_side: str = "left") -> Any:
    """Run a Qwen-VL processor on prompt texts (one video placeholder each) and decoded videos.

    Left padding by default, for generation; training examples use ``padding_side="right"``.
    ``second_per_grid_ts`` (Qwen2.5-VL) is set from the decoder's sampled rate: transformers 5
    derives the same value from ``video_metadata``, transformers 4.x from an ``fps`` argument that defaults to 2.
    """
    if len(texts) != len(videos):
        raise ValueError(f"texts and videos must have the same length, got {len(texts)} and {len(videos)}")
    if not videos:
        raise ValueError("videos must not be empty")
    texts = _collapse_qwen3_video_markers(processor, texts)
    kwargs: dict[str, Any] = {
        "video_metadata": [video.metadata for video in videos],
        "do_resize": False,
        "do_sample_frames": False,
    }
    video_processor = getattr(processor, "video_processor", None)
    if hasattr(video_processor, "cap_pixels_per_frame") and video_processor.cap_pixels_per_frame is None:
        kwargs["cap_pixels_per_frame"] = False  # resizing is ours; silences a deprecation warning
    inputs = processor(
        text=list(texts),
        videos=[video.frames for video in videos],
        padding=True,
        padding_side=padding_side,
        return_tensors="pt",
        **kwargs,
    )
    if "second_per_grid_ts" in inputs:
        inputs["second_per_grid_ts"] = torch.tensor([video.second_per_grid_ts for video in videos], dtype=torch.float32)
    return inputs
