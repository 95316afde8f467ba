"""The ms-swift / LLaMA-Factory video format, on a file written by hand from ms-swift's
custom-dataset docs (docs/source_en/Customization/Custom-dataset.md, "Multimodal": `messages`
with a `<video>` tag in the user turn and the path in `videos`; ShareGPT `conversations` as
LLaMA-Factory writes them), and both ways through our plain JSONL."""

import json
import shutil

import pytest

from videoopd.data.annotations import (
    GroundingRecord,
    detect_format,
    load_annotations,
    write_jsonl_records,
    write_swift_records,
)

PAPER_USER = (  # the paper's prompt, typed out as a user of the official release has it
    '<video>To accurately pinpoint the event "a person opens the door" in the video, determine the precise time '
    "period of the event. Provide the start and end times (in seconds, precise to two decimal places) in the "
    'format "start time to end time", For example: "12.54 to 17.83".'
)
TIMELENS_USER = (
    "<video>Please find the visual event described by the sentence 'someone laughs.', determining its starting "
    "and ending times. The format should be: 'The event happens in <start time> - <end time> seconds'."
)
LINES = [
    # 1: ms-swift messages, the paper's system and prompt; no duration: probed from the video
    {
        "messages": [
            {"role": "system", "content": "You are a video analysis expert."},
            {"role": "user", "content": PAPER_USER},
            {"role": "assistant", "content": "1.50 to 4.25"},
        ],
        "videos": ["clip1.mp4"],
    },
    # 2: TimeLens' prompt, no system message, its answer phrasing
    {
        "messages": [
            {"role": "user", "content": TIMELENS_USER},
            {"role": "assistant", "content": "The event happens in 2.0 - 6.0 seconds."},
        ],
        "videos": ["clip2.mkv"],
        "duration": 8.0,
    },
    # 3: the user's own prompt and system prompt: kept as written
    {
        "messages": [
            {"role": "system", "content": "You are a helpful and harmless assistant."},
            {"role": "user", "content": "<video>When does the dog jump? Answer with start and end seconds."},
            {"role": "assistant", "content": "3.0 to 5.0"},
        ],
        "videos": ["def.mp4"],
        "duration": 8,
    },
    # 4: LLaMA-Factory's ShareGPT layout, top-level system
    {
        "conversations": [{"from": "human", "value": "<video>\nWhere is the cat?"}, {"from": "gpt", "value": "0 - 2"}],
        "system": "Be brief.",
        "videos": ["clip1.mp4"],
        "duration": 8,
        "id": "cat-1",
    },
    # 5: GRPO data: no assistant turn, the answer in `solution`
    {
        "messages": [{"role": "user", "content": PAPER_USER}],
        "videos": ["clip2.mkv"],
        "solution": "1.00 to 2.00",
        "duration": 8,
    },
    # 6: explicit fields win over the (rounded) answer
    {
        "messages": [{"role": "user", "content": PAPER_USER}, {"role": "assistant", "content": "1.23 to 4.57"}],
        "videos": ["def.mp4"],
        "start": 1.234,
        "end": 4.567,
        "duration": 8,
    },
    # 7: two videos
    {
        "messages": [
            {"role": "user", "content": "<video><video>Which one?"},
            {"role": "assistant", "content": "1 to 2"},
        ],
        "videos": ["clip1.mp4", "def.mp4"],
    },
    # 8: no <video> tag
    {
        "messages": [{"role": "user", "content": "When?"}, {"role": "assistant", "content": "1 to 2"}],
        "videos": ["clip1.mp4"],
    },
    # 9: an answer without a span
    {
        "messages": [{"role": "user", "content": PAPER_USER}, {"role": "assistant", "content": "I don't know"}],
        "videos": ["clip1.mp4"],
    },
    # 10: ms-swift's pre-training shape: no user turn
    {"messages": [{"role": "assistant", "content": "<video>is a lion running"}], "videos": ["clip1.mp4"]},
    # 11: a role ms-swift does not know
    {"messages": [{"role": "bot", "content": "<video>x"}], "videos": ["clip1.mp4"]},
]


@pytest.fixture()
def videos(tmp_path, synthetic_dir):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("clip1.mp4", "clip2.mkv", "def.mp4"):
        shutil.copy(synthetic_dir / "videos" / "synth_00000.mp4", folder / name)
    return folder


@pytest.fixture()
def swift_file(videos):
    text = "".join(json.dumps(line) + "\n" for line in LINES) + "{broken\n"  # line 12
    path = videos / "train_swift.jsonl"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_line_of_the_ms_swift_layout_is_accounted_for(swift_file, videos):
    assert detect_format(swift_file) == "swift"
    records, summary = load_annotations(swift_file)
    assert summary.format == "swift" and summary.read == 12 and summary.kept == 6
    assert summary.kept + summary.skipped == summary.read
    assert [(i.location, i.kind) for i in summary.issues] == [(f"line {n}", "malformed") for n in range(7, 13)]
    messages = [i.message for i in summary.issues]
    assert "one video path" in messages[0] and "one <video> tag" in messages[1]
    assert 'no span in the answer "I don\'t know"' in messages[2] and "0 user turns" in messages[3]
    assert "'role' one of" in messages[4] and "invalid JSON" in messages[5]
    got = [(r.query, r.span, r.duration, r.prompt, r.system) for r in records]
    assert got == [
        ("a person opens the door", (1.5, 4.25), pytest.approx(8.0, abs=0.3), None, None),  # probed
        ("someone laughs.", (2.0, 6.0), 8.0, None, None),
        (
            "When does the dog jump? Answer with start and end seconds.",
            (3.0, 5.0),
            8.0,
            "When does the dog jump? Answer with start and end seconds.",
            "You are a helpful and harmless assistant.",
        ),
        ("Where is the cat?", (0.0, 2.0), 8.0, "Where is the cat?", "Be brief."),
        ("a person opens the door", (1.0, 2.0), 8.0, None, None),
        ("a person opens the door", (1.234, 4.567), 8.0, None, None),
    ]
    assert [r.id for r in records] == ["clip1#0", "clip2#0", "def#0", "cat-1", "clip2#1", "def#1"]
    assert records[0].video == str(videos / "clip1.mp4") and records[0].source == "train_swift"


def round_trip_records(videos):
    return [
        GroundingRecord("a#0", str(videos / "clip1.mp4"), "a person opens the door.", (1.234567, 4.5), 8.0, "charades"),
        GroundingRecord(
            "q7",
            str(videos / "def.mp4"),
            "a dog jumps",
            (0.0, 2.0),
            8.0,
            "qvhighlights",
            windows=((0.0, 2.0), (4.0, 6.5)),
        ),
        GroundingRecord(
            "own",
            str(videos / "clip2.mkv"),
            "the cat",
            (3.0, 5.0),
            8.0,
            "mine",
            prompt="When does the cat sit? Answer in seconds.",
            system="Be brief.",
        ),
    ]


@pytest.mark.parametrize("style", ["paper", "timelens", "time-r1"])
def test_ours_to_swift_to_ours_keeps_every_record(videos, style):
    records = round_trip_records(videos)
    write_swift_records(records, videos / "out.jsonl", style=style)
    rows = [json.loads(line) for line in (videos / "out.jsonl").read_text().splitlines()]
    assert rows[0]["videos"] == [str(videos / "clip1.mp4")] and rows[0]["messages"][-2]["content"].startswith("<video>")
    assert (rows[0]["messages"][0]["role"] == "system") == (style != "timelens")  # TimeLens has none
    assert rows[2]["messages"][0] == {"role": "system", "content": "Be brief."}
    again, summary = load_annotations(videos / "out.jsonl", multi_span="any")
    assert summary.format == "swift" and summary.issues == []
    assert again == records


def test_swift_to_ours_to_swift_keeps_every_record(swift_file, videos):
    records, _ = load_annotations(swift_file)
    write_jsonl_records(records, videos / "ours.jsonl")
    ours, _ = load_annotations(videos / "ours.jsonl")
    assert ours == records
    write_swift_records(ours, videos / "back.jsonl")
    back, summary = load_annotations(videos / "back.jsonl")
    assert back == records and summary.issues == []


def test_write_swift_records_rejects_an_unknown_style(videos):
    with pytest.raises(ValueError, match="style must be one of"):
        write_swift_records(round_trip_records(videos), videos / "x.jsonl", style="chatml")
