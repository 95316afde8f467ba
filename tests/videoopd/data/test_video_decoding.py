import json
import os

import numpy as np
import pytest
import torch

from videoopd.data.annotations import load_annotations
from videoopd.data.datasets import GroundingVideoDataset
from videoopd.data.synthetic import COLOURS
from videoopd.data.video import (
    QWEN3_VL_FACTOR,
    DecodeConfig,
    VideoDecodeError,
    decode_video,
    frame_size,
    probe_video,
    sample_frame_indices,
    smart_resize,
)
from videoopd.qwen.collators import GroundingCollator

SMALL = {"min_pixels": 56 * 56, "max_pixels": 64 * 96}


# ------------------------------------------------------------------------ pure functions


def test_smart_resize_hand_computed():
    # Already close to multiples of 28 and within the budget: nearest multiples.
    assert smart_resize(64, 96, 28, 56 * 56, 64 * 96) == (56, 84)
    # 1080p over Qwen2.5-VL's max_pixels (768 * 28 * 28): scaled down by sqrt(1080*1920/602112).
    assert smart_resize(1080, 1920, 28, 128 * 28 * 28, 768 * 28 * 28) == (560, 1008)
    # Under min_pixels: scaled up, rounded up to multiples of 28.
    assert smart_resize(20, 30, 28, 224 * 224, 10**6) == (196, 280)
    # Never below one factor per side.
    assert smart_resize(10, 10, 28, 1, 10**6) == (28, 28)
    assert smart_resize(64, 96, 32, 32 * 32, 10**6) == (64, 96)


def test_smart_resize_rejects_bad_input():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 3000, 28, 1, 10**7)
    with pytest.raises(ValueError, match="height"):
        smart_resize(0, 10, 28, 1, 100)
    with pytest.raises(ValueError, match="min_pixels"):
        smart_resize(10, 10, 28, 100, 10)


def test_sample_frame_indices_at_two_fps():
    indices, window = sample_frame_indices(32, 4.0, DecodeConfig())
    assert window == 32
    assert len(indices) == 16
    assert indices == np.linspace(0, 31, 16).round().astype(int).tolist()


def test_sample_frame_indices_caps_and_floors():
    # 40 s at 25 fps would be 80 frames at 2 fps; max_frames caps it (to a multiple of 2).
    indices, _ = sample_frame_indices(1000, 25.0, DecodeConfig(max_frames=11))
    assert len(indices) == 10
    # 2 s at 1 fps would be 2 frames: raised to min_frames (4).
    indices, _ = sample_frame_indices(8, 4.0, DecodeConfig(fps=1.0))
    assert len(indices) == 4
    # Never more frames than the video has, and a multiple of the temporal patch.
    indices, _ = sample_frame_indices(5, 1.0, DecodeConfig(fps=30.0))
    assert indices == [0, 1, 3, 4]


def test_sample_frame_indices_window():
    indices, window = sample_frame_indices(32, 4.0, DecodeConfig(), video_start=2.0, video_end=5.0)
    assert window == 13  # frames 8..20
    assert indices[0] == 8 and indices[-1] == 20 and len(indices) == 6


def test_sample_frame_indices_rejects_bad_input():
    with pytest.raises(ValueError, match="temporal_patch_size"):
        sample_frame_indices(1, 4.0, DecodeConfig())
    with pytest.raises(ValueError, match="video_end"):
        sample_frame_indices(32, 4.0, DecodeConfig(), video_start=3.0, video_end=2.0)
    with pytest.raises(ValueError, match="num_frames"):
        sample_frame_indices(0, 4.0, DecodeConfig())


def test_frame_size_shares_the_total_budget_across_frames():
    # A 784 * 8 pixel budget over 16 frames (8 temporal patches) leaves one 28x28 patch a frame.
    config = DecodeConfig(min_pixels=28 * 28, max_pixels=10**6, total_pixels=28 * 28 * 8)
    assert frame_size(64, 96, 16, config) == (28, 28)
    # Without the total cap the frame keeps its size.
    assert frame_size(64, 96, 16, DecodeConfig(**SMALL)) == (56, 84)


def test_decode_config_defaults_follow_the_factor():
    assert DecodeConfig().resolved_min_pixels == 128 * 28 * 28
    assert DecodeConfig().resolved_max_pixels == 768 * 28 * 28
    assert DecodeConfig(factor=QWEN3_VL_FACTOR).resolved_total_pixels == int(128000 * 0.9 * 32 * 32)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"fps": 0}, "fps"),
        ({"max_frames": 1}, "max_frames"),
        ({"factor": 0}, "factor"),
        ({"min_pixels": -1}, "min_pixels"),
        ({"min_pixels": 100, "max_pixels": 10}, "min_pixels"),
        ({"backend": "opencv"}, "backend"),
    ],
)
def test_decode_config_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DecodeConfig(**kwargs)


# ---------------------------------------------------------------------------- decoding


def test_probe_video(synthetic_dir):
    info = probe_video(synthetic_dir / "videos" / "synth_00000.mp4")
    assert (info.num_frames, info.fps, info.height, info.width) == (32, 4.0, 64, 96)
    assert info.duration == 8.0


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_decode_frame_count_timestamps_and_size(synthetic_dir, backend):
    video = decode_video(synthetic_dir / "videos" / "synth_00000.mp4", DecodeConfig(backend=backend, **SMALL))
    assert video.backend == backend
    assert video.frames.dtype == torch.uint8
    assert tuple(video.frames.shape) == (16, 3, 56, 84)
    assert video.timestamps == [i / 4.0 for i in video.frame_indices]
    assert video.timestamps[0] == 0.0 and video.timestamps[-1] == 31 / 4.0
    assert video.sampled_fps == pytest.approx(2.0)
    assert video.second_per_grid_ts == pytest.approx(1.0)
    assert video.metadata == {
        "total_num_frames": 32,
        "fps": 4.0,
        "width": 96,
        "height": 64,
        "duration": 8.0,
        "video_backend": backend,
        "frames_indices": video.frame_indices,
    }


def test_backends_decode_the_same_pixels(synthetic_dir):
    path = synthetic_dir / "videos" / "synth_00001.mp4"
    decord_frames = decode_video(path, DecodeConfig(backend="decord", **SMALL)).frames
    pyav_frames = decode_video(path, DecodeConfig(backend="pyav", **SMALL)).frames
    assert (decord_frames.int() - pyav_frames.int()).abs().max() <= 2


def test_pixel_budget_and_factor(synthetic_dir):
    path = synthetic_dir / "videos" / "synth_00000.mp4"
    video = decode_video(path, DecodeConfig(factor=32, min_pixels=32 * 32, max_pixels=32 * 64))
    height, width = video.frames.shape[-2:]
    assert height % 32 == 0 and width % 32 == 0 and height * width <= 32 * 64
    tiny = decode_video(path, DecodeConfig(min_pixels=28 * 28, max_pixels=10**6, total_pixels=28 * 28 * 8))
    assert tuple(tiny.frames.shape[-2:]) == (28, 28)


def test_frame_cap_and_window(synthetic_dir):
    path = synthetic_dir / "videos" / "synth_00000.mp4"
    assert decode_video(path, DecodeConfig(max_frames=6, **SMALL)).frames.shape[0] == 6
    window = decode_video(path, DecodeConfig(**SMALL), video_start=2.0, video_end=5.0)
    assert window.timestamps[0] == 2.0 and window.timestamps[-1] == 5.0
    assert window.metadata["total_num_frames"] == 13
    assert window.sampled_fps == pytest.approx(6 / 13 * 4.0)


def _colour_visible(frame: torch.Tensor, colour: tuple[int, int, int]) -> bool:
    distance = (frame.permute(1, 2, 0).int() - torch.tensor(colour)).abs().sum(-1)
    return int((distance < 60).sum()) >= 20


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_timestamps_line_up_with_the_annotated_spans(synthetic_dir, backend):
    """The synthetic shapes are visible exactly on the frames whose timestamp is in the span."""
    records, _ = load_annotations(synthetic_dir / "annotations.jsonl")
    for record in records:
        video = decode_video(record.video, DecodeConfig(backend=backend, **SMALL))
        colour = COLOURS[record.query.split()[1]]
        seen = [_colour_visible(frame, colour) for frame in video.frames]
        expected = [record.span[0] <= t < record.span[1] for t in video.timestamps]
        assert seen == expected, record


def test_corrupt_and_missing_videos_name_the_file(tmp_path, synthetic_dir):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(4096))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes((synthetic_dir / "videos" / "synth_00000.mp4").read_bytes()[:1500])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for path in (garbage, truncated, empty):
        for backend in ("decord", "pyav"):
            with pytest.raises(VideoDecodeError, match=path.name) as info:
                decode_video(path, DecodeConfig(backend=backend))
            assert info.value.path == str(path)
    with pytest.raises(FileNotFoundError, match="absent.mp4"):
        decode_video(tmp_path / "absent.mp4")
    with pytest.raises(TypeError, match="config"):
        decode_video(garbage, {"fps": 2})


# ------------------------------------------------------------------- dataset and collate


class _PidRecordingDataset(GroundingVideoDataset):
    def __getitem__(self, index):
        item = super().__getitem__(index)
        item["pid"] = os.getpid()
        return item


def test_dataloader_workers_decode_and_process(synthetic_dir, tiny_qwen25):
    _, processor = tiny_qwen25
    records, _ = load_annotations(synthetic_dir / "annotations.jsonl")
    dataset = _PidRecordingDataset(records[:4], DecodeConfig.for_processor(processor, **SMALL))
    collate = GroundingCollator(processor)

    def collate_with_pid(items):
        batch = collate(items)
        batch["pids"] = {item["pid"] for item in items}
        return batch

    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1, collate_fn=collate_with_pid)
    batches = list(loader)
    assert len(batches) == 2
    for batch in batches:
        assert batch["pids"] and os.getpid() not in batch["pids"]
        assert batch["failed"] == []
        inputs = batch["inputs"]
        assert inputs["input_ids"].shape[0] == 2
        assert inputs["video_grid_thw"].tolist() == [[8, 4, 6], [8, 4, 6]]
        # Left padding for generation: every row ends with the assistant prompt.
        assert (inputs["attention_mask"][:, -1] == 1).all()


def test_dataset_reports_undecodable_videos_when_asked(tmp_path, synthetic_dir, tiny_qwen25):
    _, processor = tiny_qwen25
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    rows = [
        {"video": str(bad), "query": "a red circle appears", "start": 1, "end": 2, "duration": 8},
        {
            "video": str(synthetic_dir / "videos" / "synth_00000.mp4"),
            "query": "a dog",
            "start": 1,
            "end": 2,
            "duration": 8,
        },
    ]
    annotations = tmp_path / "a.jsonl"
    annotations.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, _ = load_annotations(annotations)
    config = DecodeConfig.for_processor(processor, **SMALL)
    with pytest.raises(VideoDecodeError, match="bad.mp4"):
        GroundingVideoDataset(records, config)[0]
    dataset = GroundingVideoDataset(records, config, on_error="report")
    batch = GroundingCollator(processor)([dataset[0], dataset[1]])
    assert [(record.id, "bad.mp4" in error) for record, error in batch["failed"]] == [(records[0].id, True)]
    assert [r.id for r in batch["records"]] == [records[1].id]
    assert batch["inputs"]["input_ids"].shape[0] == 1


def test_dataset_and_collator_validate_arguments(tiny_qwen25):
    _, processor = tiny_qwen25
    with pytest.raises(ValueError, match="on_error"):
        GroundingVideoDataset([], on_error="ignore")
    with pytest.raises(TypeError, match="config"):
        GroundingVideoDataset([], config={"fps": 2})
    with pytest.raises(ValueError, match="prompt_style"):
        GroundingCollator(processor, prompt_style="chatty")
    with pytest.raises(TypeError, match="processor"):
        GroundingCollator("processor")


def test_collator_prompt_style_and_system_prompt(synthetic_dir, tiny_qwen25):
    _, processor = tiny_qwen25
    record = load_annotations(synthetic_dir / "annotations.jsonl").records[0]
    default = GroundingCollator(processor).texts([record])[0]
    assert default.startswith("<|im_start|>system\nYou are a video analysis expert.<|im_end|>")
    assert record.query in default
    # None drops the system message; the Qwen2.5-VL template then inserts its own default.
    dropped = GroundingCollator(processor, system_prompt=None).texts([record])[0]
    assert dropped.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    timelens = GroundingCollator(processor, prompt_style="timelens").texts([record])[0]
    assert "The event happens in <start time> - <end time> seconds" in timelens


def test_auto_backend_falls_back_to_pyav_without_decord(synthetic_dir, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "decord" else real_find_spec(name, *a)
    )
    video = decode_video(synthetic_dir / "videos" / "synth_00000.mp4", DecodeConfig(**SMALL))
    assert video.backend == "pyav" and video.frames.shape[0] == 16
    with pytest.raises(ImportError, match="decord"):
        decode_video(synthetic_dir / "videos" / "synth_00000.mp4", DecodeConfig(backend="decord"))
