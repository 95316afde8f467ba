import json

import numpy as np
import pytest

from videoopd.data.synthetic import COLOURS, SyntheticEvent, generate_dataset, render_frames
from videoopd.data.video import probe_video
from videoopd.synthetic import main


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_same_data_different_seed_different_data(tmp_path):
    first = generate_dataset(tmp_path / "a", num_videos=2, seed=7)
    second = generate_dataset(tmp_path / "b", num_videos=2, seed=7)
    other = generate_dataset(tmp_path / "c", num_videos=2, seed=8)
    assert first.read_text() == second.read_text()
    for name in ("synth_00000.mp4", "synth_00001.mp4"):
        assert (tmp_path / "a" / "videos" / name).read_bytes() == (tmp_path / "b" / "videos" / name).read_bytes()
    assert first.read_text() != other.read_text()


ENCODE_REPEATEDLY = """
import hashlib, json, sys
import numpy as np
import videoopd.data.synthetic as synthetic

demo_data = json.loads(sys.argv[2])
clips = []
write_video = synthetic.write_video
synthetic.write_video = lambda path, frames, fps, codec=None: clips.append(frames)
synthetic.generate_dataset(sys.argv[1], num_videos=10, seed=1000, **demo_data)
noise = (np.random.default_rng(9).random((16, 32, 64, 3)) * 255).astype(np.uint8)
for frames in (clips[9], noise):
    digests = {hashlib.md5(write_video(f"{sys.argv[1]}/v{i}.mp4", frames, demo_data["fps"]).read_bytes()).hexdigest()
               for i in range(60)}
    print(len(digests))
"""


def test_the_same_frames_encode_to_the_same_bytes_every_time(tmp_path):
    """libx264's macroblock tree made some clips encode differently from one encode to the next
    (this one, the 10th video of the demo's seed-1000 split, about 1 time in 4 in a plain Python
    process), so the demo's regenerated videos, and its losses, differed from process to
    process: 60 encodes of it, and of a noise clip, give one file each. In a process of its own:
    how often it happened depended on the process (rarely inside pytest)."""
    import subprocess
    import sys

    from videoopd.demo.teacher import DEMO_DATA, DEMO_EVENTS

    # torch not imported there: that process reproduced it most often
    demo_data = json.dumps({**DEMO_DATA, "events_per_video": DEMO_EVENTS})
    run = subprocess.run(
        [sys.executable, "-c", ENCODE_REPEATEDLY, str(tmp_path), demo_data], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["1", "1"]


def test_annotations_are_consistent_with_the_videos(tmp_path):
    annotations = generate_dataset(
        tmp_path, num_videos=4, seed=1, duration=6.0, fps=4, events_per_video=3, min_event=1.0, max_event=3.0
    )
    rows = _rows(annotations)
    assert len(rows) == 12
    for row in rows:
        assert set(row) == {"id", "video", "query", "start", "end", "duration", "source"}
        assert 0 <= row["start"] < row["end"] <= row["duration"] == 6.0
        assert 1.0 <= row["end"] - row["start"] <= 3.0
        assert (row["start"] * 4).is_integer() and (row["end"] * 4).is_integer()  # on the frame grid
        assert row["query"].split()[1] in COLOURS
        assert (tmp_path / row["video"]).is_file()
    by_video = {}
    for row in rows:
        by_video.setdefault(row["video"], []).append(row["query"].split()[1])
    assert all(len(set(colours)) == len(colours) for colours in by_video.values())


def test_render_frames_shows_a_shape_exactly_during_its_span():
    event = SyntheticEvent("red", "square", start=0.5, end=1.25, center=(0.5, 0.5), size=0.2)
    frames = render_frames([event], num_frames=8, fps=4, height=32, width=48)
    red = np.array(COLOURS["red"], dtype=np.uint8)
    visible = [bool((frame == red).all(-1).any()) for frame in frames]
    assert visible == [False, False, True, True, True, False, False, False]  # t = 0.5, 0.75, 1.0


def test_size_duration_and_rate_are_configurable(tmp_path):
    generate_dataset(
        tmp_path,
        num_videos=1,
        seed=0,
        duration=4.0,
        fps=8,
        height=32,
        width=48,
        events_per_video=1,
        min_event=1.0,
        max_event=2.0,
    )
    info = probe_video(tmp_path / "videos" / "synth_00000.mp4")
    assert (info.num_frames, info.fps, info.height, info.width) == (32, 8.0, 32, 48)


def test_command_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--videos", "2", "--seed", "3", "--events", "1"]) == 0
    assert "wrote 2 videos and 2 queries" in capsys.readouterr().out
    assert len(_rows(tmp_path / "annotations.jsonl")) == 2
    assert main(["--out", str(tmp_path), "--videos", "0"]) == 2
    assert "--videos" in capsys.readouterr().err  # the flag, not the library parameter


def test_command_line_writes_the_ms_swift_format_too(tmp_path, capsys):
    from videoopd.data.annotations import load_annotations

    assert main(["--out", str(tmp_path), "--videos", "2", "--events", "1", "--swift-annotations"]) == 0
    assert "ms-swift format" in capsys.readouterr().out
    swift, summary = load_annotations(tmp_path / "annotations.swift.jsonl")
    assert summary.format == "swift" and summary.issues == []
    assert swift == load_annotations(tmp_path / "annotations.jsonl").records


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_videos": 0}, "num_videos"),
        ({"fps": 0}, "fps"),
        ({"height": 31}, "height"),
        ({"width": 8}, "width"),
        ({"events_per_video": 9}, "events_per_video"),
        ({"min_event": 3.0, "max_event": 2.0}, "min_event"),
        ({"duration": 0.2}, "duration"),
        ({"min_event": 9.0, "max_event": 10.0}, "min_event"),
    ],
)
def test_generate_dataset_validates_arguments(tmp_path, kwargs, name):
    arguments = {"num_videos": 1, **kwargs}
    with pytest.raises(ValueError, match=name):
        generate_dataset(tmp_path, **arguments)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--duration", "inf"),
        ("--duration", "nan"),
        ("--duration", "-2"),
        ("--min-event", "nan"),
        ("--max-event", "inf"),
        ("--codec", "no_such_codec"),
        ("--codec", "aac"),
        ("--videos", "0"),
    ],
)
def test_command_line_rejects_bad_values_in_one_line_naming_the_flag(tmp_path, capsys, flag, value):
    out = tmp_path / "out"
    code = main(["--out", str(out), "--videos", "1", flag, value])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and flag in err and value in err, err
    assert not out.exists()  # refused before any work


def test_generate_dataset_rejects_non_finite_durations_and_non_video_codecs(tmp_path):
    for name, value in (("duration", float("inf")), ("min_event", float("nan")), ("max_event", float("inf"))):
        with pytest.raises(ValueError, match=name):
            generate_dataset(tmp_path, 1, **{name: value})
    with pytest.raises(ValueError, match="codec.*'aac'"):
        generate_dataset(tmp_path / "x", 1, codec="aac")
    assert not (tmp_path / "x").exists()
