"""The decoder's output through real Qwen-VL processors and tiny models built from configs."""

import inspect
import re

import numpy as np
import pytest
import torch

from videoopd.data.video import DecodeConfig, decode_video
from videoopd.qwen.models import load_policy
from videoopd.qwen.processing import TorchQwenVideoProcessor, load_processor, processor_inputs
from videoopd.qwen.prompts import build_messages, render_chat
from videoopd.qwen.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

SMALL = {"min_pixels": 56 * 56, "max_pixels": 64 * 96}


def _inputs(processor, videos, query="a red circle appears"):
    text = render_chat(processor, build_messages(query))
    return processor_inputs(processor, [text] * len(videos), videos)


def _video_temporal_positions(model, inputs):
    """Distinct temporal M-RoPE positions of the video tokens, from the model's own rope index."""
    get_rope_index = model.model.get_rope_index
    wanted = inspect.signature(get_rope_index).parameters
    kwargs = {k: v for k, v in inputs.items() if k in wanted and k != "input_ids"}
    position_ids, _ = get_rope_index(inputs["input_ids"], **kwargs)
    video_mask = inputs["input_ids"][0] == model.config.video_token_id
    return sorted(set(position_ids[0, 0, video_mask].tolist()))


def test_tiny_qwen25_forward_on_a_decoded_video(synthetic_dir, tiny_qwen25):
    model, processor = tiny_qwen25
    video = decode_video(synthetic_dir / "videos" / "synth_00000.mp4", DecodeConfig.for_processor(processor, **SMALL))
    inputs = _inputs(processor, [video])
    frames, _, height, width = video.frames.shape
    grid = [frames // 2, height // 14, width // 14]
    assert inputs["video_grid_thw"].tolist() == [grid] == [[8, 4, 6]]
    assert tuple(inputs["pixel_values_videos"].shape) == (8 * 4 * 6, 3 * 2 * 14 * 14)
    # One placeholder token per 2x2 merged patch.
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 8 * 4 * 6 // 4
    assert inputs["second_per_grid_ts"].tolist() == [video.second_per_grid_ts] == [1.0]
    with torch.no_grad():
        output = model(**inputs)
    assert output.logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(output.logits).all()


@pytest.mark.parametrize("fps", [2.0, 1.0, 0.75])
def test_processor_derives_the_decoders_temporal_scale_from_the_metadata(synthetic_dir, tiny_qwen25, fps):
    _, processor = tiny_qwen25
    video = decode_video(
        synthetic_dir / "videos" / "synth_00000.mp4", DecodeConfig.for_processor(processor, fps=fps, **SMALL)
    )
    text = render_chat(processor, build_messages("a dog"))
    direct = processor(text=[text], videos=[video.frames], return_tensors="pt", **video.processor_kwargs())
    assert direct["second_per_grid_ts"].tolist() == pytest.approx([video.second_per_grid_ts])
    assert video.second_per_grid_ts == pytest.approx(2 / video.sampled_fps)


def test_sampling_rate_reaches_the_temporal_positions(synthetic_dir, tiny_qwen25):
    """At 2 fps a temporal patch (2 frames) spans 1 s: positions step by tokens_per_second * 1 = 2;
    at 1 fps it spans 2 s and positions step by 4. Wrong metadata would not change the step."""
    model, processor = tiny_qwen25
    path = synthetic_dir / "videos" / "synth_00000.mp4"
    tokens_per_second = model.config.vision_config.tokens_per_second
    for fps, seconds_per_patch in ((2.0, 1.0), (1.0, 2.0)):
        video = decode_video(path, DecodeConfig.for_processor(processor, fps=fps, **SMALL))
        assert video.second_per_grid_ts == pytest.approx(seconds_per_patch)
        positions = _video_temporal_positions(model, _inputs(processor, [video]))
        steps = set(np.diff(positions).tolist())
        assert steps == {tokens_per_second * seconds_per_patch}, (fps, positions)
        assert len(positions) == video.frames.shape[0] // 2


def test_tiny_qwen3_forward_and_frame_timestamps(synthetic_dir):
    tokenizer = build_tiny_tokenizer("qwen3_vl")
    processor = build_tiny_processor("qwen3_vl", tokenizer)
    model = build_tiny_model("qwen3_vl", tokenizer)
    config = DecodeConfig.for_processor(processor, **SMALL)
    assert config.factor == 32
    video = decode_video(synthetic_dir / "videos" / "synth_00000.mp4", config, video_start=1.0)
    inputs = _inputs(processor, [video])
    text = tokenizer.decode(inputs["input_ids"][0])
    # Qwen3-VL writes each temporal patch's time (mean of its two frames) into the prompt:
    # absolute times in the file, so the window starting at 1 s starts at 1.1 s, not 0.
    stamps = [float(s) for s in re.findall(r"<([\d.]+) seconds>", text)]
    expected = [(a + b) / 2 for a, b in zip(video.timestamps[::2], video.timestamps[1::2])]
    assert stamps == pytest.approx(expected, abs=0.051)
    assert stamps[0] > 1.0
    # Qwen's layout: each frame pair is "<t seconds><|vision_start|>pads<|vision_end|>", with no
    # extra marker around the whole video (transformers 5 leaves the template's; we collapse it).
    frames = re.findall(r"<[\d.]+ seconds><\|vision_start\|>(?:<\|video_pad\|>)+<\|vision_end\|>", text)
    assert len(frames) == len(stamps)
    assert text.count("<|vision_start|>") == text.count("<|vision_end|>") == len(stamps)
    assert "user\n<" in text  # the first stamp follows the turn header directly
    with torch.no_grad():
        output = model(**inputs)
    assert torch.isfinite(output.logits).all()


def test_torch_video_processor_matches_the_image_processor_on_a_still_video(synthetic_dir):
    """A video of two identical frames patchifies like an image (which Qwen repeats temporally);
    the image path is transformers' PIL/numpy implementation, independent of ours."""
    processor = build_tiny_processor("qwen2_5_vl", use_torchvision=False)
    video = decode_video(synthetic_dir / "videos" / "synth_00000.mp4", DecodeConfig.for_processor(processor, **SMALL))
    frame = video.frames[5]
    still = frame.unsqueeze(0).repeat(2, 1, 1, 1)
    ours = processor.video_processor(videos=[still], do_resize=False, return_tensors="pt")
    image = processor.image_processor(images=[frame.permute(1, 2, 0).numpy()], do_resize=False, return_tensors="pt")
    assert ours["video_grid_thw"].tolist() == image["image_grid_thw"].tolist()
    torch.testing.assert_close(ours["pixel_values_videos"], image["pixel_values"].float(), atol=1e-5, rtol=1e-5)


def test_torch_video_processor_refuses_unsized_frames():
    processor = TorchQwenVideoProcessor.for_family("qwen2_5_vl")
    with pytest.raises(ValueError, match="multiple of 28"):
        processor(videos=[torch.zeros(2, 3, 30, 56, dtype=torch.uint8)], return_tensors="pt")
    with pytest.raises(ValueError, match="does not resize"):
        processor(videos=[torch.zeros(2, 3, 56, 56, dtype=torch.uint8)], do_resize=True, return_tensors="pt")
    with pytest.raises(ValueError, match="family"):
        TorchQwenVideoProcessor.for_family("llava")


def test_saved_checkpoint_loads_offline_and_processes_the_same(synthetic_dir, tiny_qwen25, tiny_qwen25_checkpoint):
    model, processor = tiny_qwen25
    loaded_processor = load_processor(tiny_qwen25_checkpoint)
    loaded_model = load_policy(tiny_qwen25_checkpoint, trainable=False)
    config = DecodeConfig.for_processor(loaded_processor, **SMALL)
    assert config == DecodeConfig.for_processor(processor, **SMALL)
    video = decode_video(synthetic_dir / "videos" / "synth_00001.mp4", config)
    expected, got = _inputs(processor, [video]), _inputs(loaded_processor, [video])
    assert sorted(expected.keys()) == sorted(got.keys())
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])
    with torch.no_grad():
        torch.testing.assert_close(loaded_model(**got).logits, model(**expected).logits)


def test_load_processor_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_processor(tmp_path / "nowhere")


def test_checkpoint_in_the_transformers_4_layout_loads(tmp_path, synthetic_dir, tiny_qwen25, tiny_qwen25_checkpoint):
    """Hub Qwen2.5-VL checkpoints have preprocessor_config.json and chat_template.json, no
    processor_config.json: the processor must still load (with or without torchvision)."""
    import json
    import shutil

    _, processor = tiny_qwen25
    folder = tmp_path / "legacy"
    shutil.copytree(tiny_qwen25_checkpoint, folder)
    unified = json.loads((folder / "processor_config.json").read_text())
    (folder / "processor_config.json").unlink()
    image = dict(unified["image_processor"], processor_class="Qwen2_5_VLProcessor")
    (folder / "preprocessor_config.json").write_text(json.dumps(image))
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    loaded = load_processor(folder)
    video = decode_video(synthetic_dir / "videos" / "synth_00002.mp4", DecodeConfig.for_processor(loaded, **SMALL))
    expected, got = _inputs(processor, [video]), _inputs(loaded, [video])
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])


def test_tiny_checkpoint_command_line(tmp_path, capsys):
    from videoopd.tiny import main

    assert main(["--out", str(tmp_path / "ckpt"), "--family", "qwen3_vl", "--seed", "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert load_processor(tmp_path / "ckpt").video_processor.patch_size == 16
    assert load_policy(tmp_path / "ckpt", trainable=False).config.model_type == "qwen3_vl"
