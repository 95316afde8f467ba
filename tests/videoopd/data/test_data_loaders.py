import json
import logging
import shutil
from pathlib import Path

import pytest

from videoopd.data.annotations import (
    AnnotationError,
    GroundingRecord,
    detect_format,
    load_annotations,
    read_durations_csv,
    write_jsonl_records,
)


@pytest.fixture()
def videos(tmp_path, synthetic_dir):
    """A folder with real (8 s, 4 fps) videos under several names the formats use."""
    folder = tmp_path / "videos"
    folder.mkdir()
    source = synthetic_dir / "videos" / "synth_00000.mp4"
    for name in ("AO8RW.mp4", "B1XYZ.mp4", "v_abc.mp4", "def.mp4", "clip1.mp4", "clip2.mkv"):
        shutil.copy(source, folder / name)
    return folder


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def issue_kinds(summary):
    return [(issue.location, issue.kind, issue.action) for issue in summary.issues]


# ----------------------------------------------------------------------------- loaders


def test_charades_with_durations_csv(tmp_path, videos):
    annotations = write(
        tmp_path / "charades_sta_test.txt",
        "AO8RW 0.0 6.9##a person is putting a book on a shelf.\n"
        "AO8RW 2.5 7.0##person  opens the door\n"
        "B1XYZ 1.0 3.0##someone laughs\n",
    )
    csv_path = write(tmp_path / "Charades_v1_test.csv", "id,subject,length\nAO8RW,x,30.5\nB1XYZ,y,12.0\n")
    records, summary = load_annotations(annotations, "charades", video_root=videos, durations=csv_path)
    assert records == [
        GroundingRecord(
            "AO8RW#0",
            str(videos / "AO8RW.mp4"),
            "a person is putting a book on a shelf.",
            (0.0, 6.9),
            30.5,
            "charades_sta",
        ),
        GroundingRecord(
            "AO8RW#1", str(videos / "AO8RW.mp4"), "person opens the door", (2.5, 7.0), 30.5, "charades_sta"
        ),
        GroundingRecord("B1XYZ#0", str(videos / "B1XYZ.mp4"), "someone laughs", (1.0, 3.0), 12.0, "charades_sta"),
    ]
    assert (summary.read, summary.kept, summary.issues) == (3, 3, [])


def test_charades_durations_probed_from_the_video(tmp_path, videos):
    annotations = write(tmp_path / "c.txt", "AO8RW 0.0 6.9##a person sits\n")
    records, summary = load_annotations(annotations, "charades", video_root=videos)
    assert records[0].duration == pytest.approx(8.0)  # the synthetic video: 32 frames at 4 fps
    assert summary.issues == []


def test_activitynet_captions(tmp_path, videos):
    annotations = write(
        tmp_path / "val_1.json",
        json.dumps(
            {
                "v_abc": {
                    "duration": 8.0,
                    "timestamps": [[0.5, 3.0], [2.0, 7.5]],
                    "sentences": [" A man walks. ", "He sits."],
                },
            }
        ),
    )
    records, summary = load_annotations(annotations, video_root=videos)
    assert summary.format == "activitynet"
    assert [(r.id, r.query, r.span, r.duration, r.source) for r in records] == [
        ("v_abc#0", "A man walks.", (0.5, 3.0), 8.0, "activitynet"),
        ("v_abc#1", "He sits.", (2.0, 7.5), 8.0, "activitynet"),
    ]
    assert records[0].video == str(videos / "v_abc.mp4")


def test_activitynet_video_without_the_v_prefix(tmp_path, videos):
    annotations = write(
        tmp_path / "a.json", json.dumps({"v_def": {"duration": 8.0, "timestamps": [[1, 2]], "sentences": ["x"]}})
    )
    records, _ = load_annotations(annotations, "activitynet", video_root=videos)
    assert records[0].video == str(videos / "def.mp4")


def test_timelens_bench(tmp_path, videos):
    annotations = write(
        tmp_path / "charades-timelens.json",
        json.dumps({"clip1": {"duration": 8.0, "spans": [[1.0, 2.5], [[3.0, 6.0]]], "queries": ["a cat", "a dog"]}}),
    )
    records, summary = load_annotations(annotations, video_root=videos)
    assert summary.format == "timelens_bench"
    assert [(r.id, r.query, r.span, r.source) for r in records] == [
        ("clip1#0", "a cat", (1.0, 2.5), "charades-timelens"),
        ("clip1#1", "a dog", (3.0, 6.0), "charades-timelens"),
    ]


def test_timelens_100k(tmp_path, videos):
    annotations = write(
        tmp_path / "timelens-100k.jsonl",
        json.dumps(
            {
                "source": "cosmo_cap",
                "video_path": "clip1.mp4",
                "duration": 8.0,
                "events": [{"query": "a red ball", "span": [[0.0, 2.0]]}, {"query": "a blue ball", "span": [4, 6]}],
            }
        )
        + "\n"
        + json.dumps(
            {
                "source": "hirest",
                "video_path": "clip2.mkv",
                "duration": 8.0,
                "events": [{"query": "waves", "span": [[1.0, 3.0]]}],
            }
        )
        + "\n",
    )
    records, summary = load_annotations(annotations, video_root=videos)
    assert summary.format == "timelens_100k"
    assert [(r.id, r.query, r.span, r.source) for r in records] == [
        ("clip1#0", "a red ball", (0.0, 2.0), "cosmo_cap"),
        ("clip1#1", "a blue ball", (4.0, 6.0), "cosmo_cap"),
        ("clip2#0", "waves", (1.0, 3.0), "hirest"),
    ]
    assert records[2].video == str(videos / "clip2.mkv")


def test_plain_jsonl_relative_to_the_annotation_folder(synthetic_dir):
    records, summary = load_annotations(synthetic_dir / "annotations.jsonl")
    assert summary.format == "jsonl"
    assert len(records) == 6 and summary.issues == []
    assert records[0].id == "synth_00000#0"
    assert records[0].video == str(synthetic_dir / "videos" / "synth_00000.mp4")
    assert records[0].source == "synthetic"


def test_plain_jsonl_generates_ids_and_takes_the_file_stem_as_source(tmp_path, videos):
    rows = [
        {"video": "clip1.mp4", "query": "q1", "start": 1, "end": 2, "duration": 8},
        {"video": "clip1.mp4", "query": "q2", "start": 3, "end": 4, "duration": 8},
    ]
    annotations = write(tmp_path / "mine.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    records, _ = load_annotations(annotations, video_root=videos)
    assert [(r.id, r.source) for r in records] == [("clip1#0", "mine"), ("clip1#1", "mine")]


def test_write_jsonl_records_round_trips(tmp_path, synthetic_dir):
    records, _ = load_annotations(synthetic_dir / "annotations.jsonl")
    write_jsonl_records(records, tmp_path / "copy.jsonl")
    again, summary = load_annotations(tmp_path / "copy.jsonl")
    assert again == records and summary.issues == []


def test_teacher_field_is_read_written_and_checked(tmp_path, videos):
    """A record's ``teacher`` (which of several teachers scores it) is read, written back, and a
    value that is no string is reported with its line and skipped."""
    rows = [
        {"video": "clip1.mp4", "query": "a", "start": 1, "end": 2, "teacher": "large"},
        {"video": "clip1.mp4", "query": "b", "start": 1, "end": 2},
        {"video": "clip1.mp4", "query": "c", "start": 1, "end": 2, "teacher": 7},
    ]
    path = write(tmp_path / "t.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    records, summary = load_annotations(path, video_root=videos)
    assert [r.teacher for r in records] == ["large", None]
    assert [(i.location, i.kind) for i in summary.issues] == [("line 3", "malformed")]
    assert "'teacher' must be a string" in summary.issues[0].message
    write_jsonl_records(records, videos / "copy.jsonl")
    again, _ = load_annotations(videos / "copy.jsonl")
    assert again == records


def test_written_records_load_from_any_folder(tmp_path, synthetic_dir, monkeypatch):
    """Records loaded through a relative path hold working-folder-relative videos; written into
    another folder they still name the same files wherever the file is read from (the demo's
    held-out split under a relative --output-dir)."""
    shutil.copytree(synthetic_dir, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    records, _ = load_annotations("data/annotations.jsonl")
    assert not Path(records[0].video).is_absolute()
    (tmp_path / "runs" / "split").mkdir(parents=True)
    write_jsonl_records(records, "runs/split/heldout.jsonl")
    monkeypatch.chdir(tmp_path / "runs")
    again, summary = load_annotations("split/heldout.jsonl")
    assert summary.issues == []
    assert [Path(r.video).resolve() for r in again] == [(tmp_path / r.video).resolve() for r in records]


def test_source_override(synthetic_dir):
    records, _ = load_annotations(synthetic_dir / "annotations.jsonl", source="heldout")
    assert {r.source for r in records} == {"heldout"}


# ----------------------------------------------------------------------- format detection


def test_detect_format_for_every_format(tmp_path):
    cases = {
        "charades": "AO8RW 0.0 6.9##a person sits\n",
        "activitynet": json.dumps({"v_a": {"duration": 1, "timestamps": [], "sentences": []}}, indent=2),
        "timelens_bench": json.dumps({"a": {"duration": 1, "spans": [], "queries": []}}),
        "timelens_100k": json.dumps({"source": "s", "video_path": "a.mp4", "duration": 1, "events": []}) + "\n",
        "jsonl": json.dumps({"video": "a.mp4", "query": "q", "start": 0, "end": 1, "duration": 2}) + "\n",
    }
    for expected, text in cases.items():
        assert detect_format(write(tmp_path / f"{expected}.data", text)) == expected


def test_detect_format_names_the_file_it_cannot_read(tmp_path):
    path = write(tmp_path / "mystery.txt", "hello world\n")
    with pytest.raises(ValueError, match="mystery.txt"):
        detect_format(path)
    with pytest.raises(ValueError, match="empty"):
        detect_format(write(tmp_path / "empty.txt", "\n\n"))


def test_load_annotations_validates_arguments(tmp_path, synthetic_dir):
    path = synthetic_dir / "annotations.jsonl"
    with pytest.raises(ValueError, match="format"):
        load_annotations(path, "csv")
    with pytest.raises(ValueError, match="span_policy"):
        load_annotations(path, span_policy="fix")
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        load_annotations(tmp_path / "nothing.jsonl")
    with pytest.raises(FileNotFoundError, match="video_root"):
        load_annotations(path, video_root=tmp_path / "no_such_dir")
    with pytest.raises(TypeError, match="durations"):
        load_annotations(path, durations=3)


def test_durations_csv_needs_its_columns(tmp_path):
    with pytest.raises(ValueError, match="'id' column"):
        read_durations_csv(write(tmp_path / "d.csv", "name,length\na,1\n"))
    with pytest.raises(ValueError, match="line 3"):
        read_durations_csv(write(tmp_path / "e.csv", "id,duration\na,1\nb,long\n"))
    assert read_durations_csv(write(tmp_path / "f.csv", "id,duration\na,1.5\n")) == {"a": 1.5}


# ------------------------------------------------------------------------- validation rules


def jsonl_line(**fields):
    row = {"video": "clip1.mp4", "query": "a dog", "start": 1.0, "end": 2.0, "duration": 8.0}
    row.update(fields)
    return json.dumps(row) + "\n"


@pytest.fixture()
def bad_jsonl(tmp_path, videos):
    lines = [
        jsonl_line(query="fine"),  # line 1: kept
        jsonl_line(start=5.0, end=3.0),  # line 2: start > end
        jsonl_line(start=4.0, end=4.0),  # line 3: start == end
        jsonl_line(start=-1.0, end=2.0),  # line 4: clipped to (0, 2)
        jsonl_line(start=6.0, end=9.5),  # line 5: clipped to (6, 8)
        jsonl_line(start=8.5, end=9.0),  # line 6: entirely after the end
        jsonl_line(video="missing.mp4"),  # line 7
        jsonl_line(query="   "),  # line 8
        jsonl_line(query=None),  # line 9
        "{not json\n",  # line 10
        jsonl_line(start="soon"),  # line 11
        json.dumps({"video": "clip1.mp4", "query": "q"}) + "\n",  # line 12: no start/end
        jsonl_line(duration=-3),  # line 13: bad duration, probed from the video (8 s)
        jsonl_line(id="dup"),  # line 14
        jsonl_line(id="dup"),  # line 15: duplicate id
    ]
    return write(tmp_path / "bad.jsonl", "".join(lines))


def test_every_rule_is_reported_with_file_and_line(bad_jsonl, videos):
    records, summary = load_annotations(bad_jsonl, video_root=videos)
    assert issue_kinds(summary) == [
        ("line 2", "inverted_span", "skipped"),
        ("line 3", "zero_length_span", "skipped"),
        ("line 4", "span_out_of_range", "clipped"),
        ("line 5", "span_out_of_range", "clipped"),
        ("line 6", "span_out_of_range", "skipped"),
        ("line 7", "missing_video", "skipped"),
        ("line 8", "empty_query", "skipped"),
        ("line 9", "empty_query", "skipped"),
        ("line 10", "malformed", "skipped"),
        ("line 11", "malformed", "skipped"),
        ("line 12", "malformed", "skipped"),
        ("line 13", "bad_duration", "probed"),
        ("line 15", "duplicate_id", "skipped"),
    ]
    assert all(issue.file == str(bad_jsonl) for issue in summary.issues)
    assert str(summary.issues[0]).startswith(f"{bad_jsonl}: line 2: inverted_span (skipped)")
    assert "missing.mp4" in summary.issues[5].message
    assert [r.span for r in records] == [(1.0, 2.0), (0.0, 2.0), (6.0, 8.0), (1.0, 2.0), (1.0, 2.0)]
    assert records[3].duration == pytest.approx(8.0)
    # Nothing disappears: every query read is either kept or counted as skipped.
    assert summary.read == 15
    assert summary.kept == 5
    assert summary.kept + summary.skipped == summary.read
    assert summary.clipped == 2
    assert summary.counts == {
        "inverted_span": 1,
        "zero_length_span": 1,
        "span_out_of_range": 3,
        "missing_video": 1,
        "empty_query": 2,
        "malformed": 3,
        "bad_duration": 1,
        "duplicate_id": 1,
    }
    report = summary.report()
    assert "read 15, kept 5, skipped 10, clipped 2" in report and "line 7: missing_video" in report


def test_issues_are_logged(bad_jsonl, videos, caplog):
    with caplog.at_level(logging.WARNING, logger="videoopd.data"):
        load_annotations(bad_jsonl, video_root=videos)
    assert "line 2: inverted_span" in caplog.text
    assert "5 of 15 queries kept; 13 issues" in caplog.text


def test_span_policy_skip_drops_out_of_range_spans_with_a_report(bad_jsonl, videos):
    records, summary = load_annotations(bad_jsonl, video_root=videos, span_policy="skip")
    out_of_range = [i for i in summary.issues if i.kind == "span_out_of_range"]
    assert [i.action for i in out_of_range] == ["skipped"] * 3
    assert len(records) == 3


def test_strict_mode_raises_on_the_first_problem(bad_jsonl, videos):
    with pytest.raises(AnnotationError, match="line 2: inverted_span") as info:
        load_annotations(bad_jsonl, video_root=videos, strict=True)
    assert info.value.issue.file == str(bad_jsonl)


def test_check_videos_off_keeps_queries_without_videos(tmp_path):
    annotations = write(tmp_path / "a.jsonl", jsonl_line(video="elsewhere.mp4"))
    records, summary = load_annotations(annotations, check_videos=False)
    assert len(records) == 1 and summary.issues == []


def test_missing_duration_without_video_is_skipped_with_a_report(tmp_path):
    annotations = write(tmp_path / "c.txt", "NOVID 0.0 1.0##someone\n")
    records, summary = load_annotations(annotations, "charades", check_videos=False)
    assert records == []
    assert issue_kinds(summary) == [("line 1", "bad_duration", "skipped")]


def test_charades_malformed_line_and_rules(tmp_path, videos):
    annotations = write(
        tmp_path / "c.txt",
        "AO8RW 0.0 6.9##ok\n"
        "AO8RW 3.0##no end time\n"
        "AO8RW 5.0 4.0##inverted\n"
        "AO8RW 1.0 2.0##   \n"
        "\n"
        "AO8RW 7.0 9.0##too long\n",
    )
    records, summary = load_annotations(annotations, "charades", video_root=videos, durations={"AO8RW": 8.0})
    assert issue_kinds(summary) == [
        ("line 2", "malformed", "skipped"),
        ("line 3", "inverted_span", "skipped"),
        ("line 4", "empty_query", "skipped"),
        ("line 6", "span_out_of_range", "clipped"),
    ]
    assert [r.span for r in records] == [(0.0, 6.9), (7.0, 8.0)]


def test_keyed_json_problems_are_reported_by_key(tmp_path, videos):
    annotations = write(
        tmp_path / "anet.json",
        json.dumps(
            {
                "v_abc": {"duration": 8.0, "timestamps": [[1, 2], [3, 2]], "sentences": ["ok", "inverted"]},
                "v_def": {"duration": 8.0, "timestamps": [[1, 2]], "sentences": ["a", "b"]},
                "v_zzz": {"duration": 8.0, "timestamps": [[1, 2]], "sentences": ["no video"]},
                "v_bad": "not an object",
            }
        ),
    )
    records, summary = load_annotations(annotations, "activitynet", video_root=videos)
    assert issue_kinds(summary) == [
        ("key 'v_abc' sentences[1]", "inverted_span", "skipped"),
        ("key 'v_def'", "malformed", "skipped"),
        ("key 'v_zzz' sentences[0]", "missing_video", "skipped"),
        ("key 'v_bad'", "malformed", "skipped"),
    ]
    assert [r.id for r in records] == ["v_abc#0"]
    assert (summary.read, summary.kept, summary.skipped) == (5, 1, 4)


def test_multi_span_queries_are_skipped_with_a_report(tmp_path, videos):
    annotations = write(
        tmp_path / "t.jsonl",
        json.dumps(
            {
                "source": "s",
                "video_path": "clip1.mp4",
                "duration": 8.0,
                "events": [{"query": "twice", "span": [[0, 1], [3, 4]]}, {"query": "once", "span": [[5, 6]]}],
            }
        )
        + "\n",
    )
    records, summary = load_annotations(annotations, "timelens_100k", video_root=videos)
    assert issue_kinds(summary) == [("line 1 events[0]", "multi_span", "skipped")]
    assert [r.query for r in records] == ["once"]


def test_invalid_json_document_is_reported(tmp_path):
    annotations = write(tmp_path / "broken.json", '{"v_a": {"duration": 1,\n "timestamps": [}')
    records, summary = load_annotations(annotations, "activitynet")
    assert records == [] and issue_kinds(summary) == [("line 2", "malformed", "skipped")]


# --------------------------------------------------------------------------- text encodings


BOM = b"\xef\xbb\xbf"


def write_bytes(path, data):
    path.write_bytes(data)
    return path


def test_a_utf8_bom_is_accepted_in_every_format(tmp_path, videos):
    cases = {
        "charades": ("c.txt", b"AO8RW 0.0 6.9##a person sits\n"),
        "activitynet": (
            "a.json",
            json.dumps({"v_abc": {"duration": 8.0, "timestamps": [[1, 2]], "sentences": ["x"]}}).encode(),
        ),
        "timelens_bench": (
            "t.json",
            json.dumps({"clip1": {"duration": 8.0, "spans": [[1, 2]], "queries": ["x"]}}).encode(),
        ),
        "timelens_100k": (
            "t.jsonl",
            json.dumps(
                {"video_path": "clip1.mp4", "duration": 8.0, "events": [{"query": "x", "span": [1, 2]}]}
            ).encode()
            + b"\n",
        ),
        "jsonl": ("j.jsonl", jsonl_line().encode()),
    }
    for expected, (name, data) in cases.items():
        path = write_bytes(tmp_path / name, BOM + data)
        assert detect_format(path) == expected
        records, summary = load_annotations(path, video_root=videos)
        assert (len(records), summary.issues) == (1, []), expected
    csv_path = write_bytes(tmp_path / "d.csv", BOM + b"id,length\nAO8RW,8.0\n")
    assert read_durations_csv(csv_path) == {"AO8RW": 8.0}


def test_a_line_that_is_not_utf8_is_reported_and_the_rest_kept(tmp_path, videos):
    latin1 = jsonl_line(query="café").replace("é", "\\u00e9").encode().replace(b"\\u00e9", b"\xe9")
    path = write_bytes(
        tmp_path / "j.jsonl", jsonl_line(query="one").encode() + latin1 + jsonl_line(query="three").encode()
    )
    records, summary = load_annotations(path, video_root=videos)
    assert [r.query for r in records] == ["one", "three"]
    assert issue_kinds(summary) == [("line 2", "bad_encoding", "skipped")]
    assert "0xe9" in summary.issues[0].message and str(path) in str(summary.issues[0])
    assert (summary.read, summary.kept, summary.skipped) == (3, 2, 1)
    charades = write_bytes(
        tmp_path / "c.txt",
        b"AO8RW 0.0 6.9##a person sits\nAO8RW 1.0 2.0##caf\xe9\r\nAO8RW 2.0 3.0##a person stands\r\n",
    )
    records, summary = load_annotations(charades, video_root=videos)
    assert [r.query for r in records] == ["a person sits", "a person stands"]
    assert issue_kinds(summary) == [("line 2", "bad_encoding", "skipped")]
    timelens = write_bytes(tmp_path / "t.jsonl", latin1.replace(b'"video"', b'"video_path"') + b"\n")
    with pytest.raises(AnnotationError, match="t.jsonl.*line 1: bad_encoding"):
        load_annotations(timelens, "timelens_100k", video_root=videos, strict=True)


def test_a_json_document_that_is_not_utf8_names_the_file_and_position(tmp_path, videos):
    text = json.dumps({"v_abc": {"duration": 8.0, "timestamps": [[1, 2]], "sentences": ["caf?"]}}, indent=1)
    path = write_bytes(tmp_path / "anet.json", text.encode().replace(b"caf?", b"caf\xe9"))
    line = next(n for n, row in enumerate(text.splitlines(), start=1) if "caf?" in row)
    column = text.splitlines()[line - 1].index("?") + 1
    for format in ("auto", "activitynet"):
        with pytest.raises(ValueError, match=rf"anet.json: no valid records: line {line}: .*0xe9 at column {column}"):
            load_annotations(path, format, video_root=videos)
    broken = write(tmp_path / "broken.json", '{"v_a": {"duration": 1,\n "timestamps": [}')
    _, summary = load_annotations(broken, "activitynet")
    assert "column 17" in summary.issues[0].message and summary.read == 1 and summary.skipped == 1


def test_binary_garbage_is_one_clear_error_naming_the_file(tmp_path, videos):
    import random

    rng = random.Random(0)
    garbage = bytes(rng.randrange(128, 256) for _ in range(4000))
    garbage = b"\n".join(garbage[i : i + 80] for i in range(0, len(garbage), 80))
    path = write_bytes(tmp_path / "video.mp4.jsonl", garbage)
    for format in ("jsonl", "charades", "timelens_100k", "activitynet", "timelens_bench", "auto"):
        with pytest.raises(ValueError, match="video.mp4.jsonl") as info:
            load_annotations(path, format, video_root=videos)
        assert "UTF-8" in str(info.value) and "codec" not in str(info.value), format
        if format != "auto":
            assert "no valid records" in str(info.value)
    with pytest.raises(ValueError, match=r"d.csv: line 3.*UTF-8"):
        read_durations_csv(write_bytes(tmp_path / "d.csv", b"id,length\nA,1\nB\xff,2\n"))


def test_detect_format_names_the_file_and_line_it_cannot_read(tmp_path):
    good = jsonl_line()
    cases = {
        "line 1": "{not json\n" + good,
        "line 3": "\n  \n" + json.dumps({"video": "a.mp4", "start": 1, "end": 2}) + "\n" + good,
        "line 2": "\n" + "AO8RW 3.0##no end time\n" + "AO8RW 0.0 3.0##fine\n",
    }
    for line, text in cases.items():
        path = write(tmp_path / "first_line_bad.jsonl", text)
        with pytest.raises(ValueError, match=rf"first_line_bad.jsonl: {line} ") as info:
            detect_format(path)
        assert "format=" in str(info.value)
    with pytest.raises(ValueError, match="line 3 ") as info:
        detect_format(write(tmp_path / "t.jsonl", "\n  \n" + json.dumps({"video": "a.mp4", "start": 1}) + "\n"))
    assert "'start'" in str(info.value)  # what the line has instead
    pretty = write(tmp_path / "pretty.json", '{\n "v_a": {\n  "duration": 1,\n  "timestamps": [}\n}\n')
    with pytest.raises(ValueError, match=r"pretty.json: .*line 4 column 18"):
        detect_format(pretty)


# ------------------------------------------------------- annotations that disagree with the video


@pytest.fixture()
def disagreeing_jsonl(tmp_path, videos):
    """Annotations for the 8 s clip1.mp4 (line numbers in the comments)."""
    lines = [
        jsonl_line(query="fine"),  # 1
        jsonl_line(query="beyond", start=10.0, end=15.0, duration=20.0),  # 2: the video ends at 8 s
        jsonl_line(query="longer", duration=9.5),  # 3: 1.5 s off: beyond max(1 s, 5%)
        jsonl_line(query="close", start=7.0, end=8.6, duration=8.6),  # 4: within both tolerances
    ]
    return write(tmp_path / "disagree.jsonl", "".join(lines))


def test_a_span_beyond_the_video_or_a_wrong_duration_is_reported_counted_and_kept(disagreeing_jsonl, videos, caplog):
    from videoopd.data.datasets import GroundingVideoDataset
    from videoopd.data.video import DecodeConfig

    records, summary = load_annotations(disagreeing_jsonl, video_root=videos)
    assert len(records) == 4 and summary.issues == []  # the loader does not open videos it need not probe
    dataset = GroundingVideoDataset(records, DecodeConfig(min_pixels=56 * 56, max_pixels=64 * 96))
    with caplog.at_level(logging.WARNING, logger="videoopd.data"):
        items = [dataset[i] for i in range(len(records))] + [dataset[1]]
    issues = [item["data_issue"] for item in items]
    assert issues[0] is None and issues[3] is None
    assert (issues[1].file, issues[1].location, issues[1].kind, issues[1].action) == (
        str(disagreeing_jsonl),
        "line 2",
        "span_beyond_video",
        "kept",
    )
    assert "15" in issues[1].message and "8.0" in issues[1].message
    assert (issues[2].location, issues[2].kind) == ("line 3", "duration_mismatch")
    assert all(item["video"] is not None for item in items)  # kept: trained on and scored, but not silently
    assert dataset.data_issue_counts == {"span_beyond_video": 1, "duration_mismatch": 1}
    assert caplog.text.count("disagree.jsonl: line 2: span_beyond_video (kept)") == 1  # once per record
    assert "line 3: duration_mismatch" in caplog.text


# --------------------------------------------------- QVHighlights, TVGBench, small rules


def qvh_line(qid, windows, vid="clip1", **fields):
    row = {
        "qid": qid,
        "query": f"query {qid}.",
        "duration": 8,
        "vid": vid,
        "relevant_clip_ids": [1, 2],
        "saliency_scores": [[1, 2, 3], [2, 3, 4]],
        "relevant_windows": windows,
    }
    row.update(fields)
    return json.dumps(row) + "\n"


@pytest.fixture()
def qvh_file(tmp_path):
    no_windows = json.loads(qvh_line(5, []))
    del no_windows["relevant_windows"]  # the test split's shape
    lines = [
        qvh_line(1, [[2, 6]]),  # line 1: one window
        qvh_line(2, [[0, 2], [4, 8]]),  # line 2: two windows
        qvh_line(3, [[4, 4]]),  # line 3: zero length
        "{broken\n",  # line 4
        json.dumps(no_windows) + "\n",  # line 5
        qvh_line(6, [["a", 2]]),  # line 6: not numbers
        qvh_line(7, [[0, 1], [3, 7.5], [5, 6]]),  # line 7: three windows, the second longest
    ]
    return write(tmp_path / "highlight_val_release.jsonl", "".join(lines))


def test_qvhighlights_is_detected_and_read_with_every_problem_reported(qvh_file, videos):
    assert detect_format(qvh_file) == "qvhighlights"
    records, summary = load_annotations(qvh_file, video_root=videos, multi_span="skip")
    assert summary.format == "qvhighlights"
    assert issue_kinds(summary) == [
        ("line 2", "multi_span", "skipped"),
        ("line 3", "zero_length_span", "skipped"),
        ("line 4", "malformed", "skipped"),
        ("line 5", "malformed", "skipped"),
        ("line 6", "malformed", "skipped"),
        ("line 7", "multi_span", "skipped"),
    ]
    assert "relevant_windows" in summary.issues[3].message
    assert [(r.id, r.span, r.windows, r.source) for r in records] == [("1", (2.0, 6.0), None, "qvhighlights")]
    assert records[0].video == str(videos / "clip1.mp4") and records[0].query == "query 1."
    assert summary.multi_window == 2 and summary.read == 7 and summary.kept + summary.skipped == summary.read
    assert "multi-window 2 (multi_span=skip)" in summary.report()


def test_qvhighlights_keeps_every_window_by_default(qvh_file, videos):
    """multi_span="auto" is the benchmark's own rule: QVHighlights scores every window."""
    records, summary = load_annotations(qvh_file, video_root=videos)
    assert summary.multi_span == "any" and "multi_span" not in summary.counts
    assert [r.windows for r in records] == [None, ((0.0, 2.0), (4.0, 8.0)), ((0.0, 1.0), (3.0, 7.5), (5.0, 6.0))]
    # Elsewhere a second window is still a problem to report.
    write_jsonl_records(records, videos / "copy.jsonl")
    again, plain = load_annotations(videos / "copy.jsonl")
    assert plain.multi_span == "skip" and plain.counts == {"multi_span": 2} and again == records[:1]


MOMENT_DETR_VAL = [  # highlight_val_release.jsonl's layout: moment_detr's data/README.md, key order as published
    {
        "qid": 2579,
        "query": "A girl and her mother cooked while talking with each other on facetime.",
        "duration": 150,
        "vid": "NUh2mO5G3gE_60.0_210.0",
        "relevant_clip_ids": [32, 33, 34, 35, 48, 49, 50, 51],
        "saliency_scores": [[4, 3, 2]] * 8,
        "relevant_windows": [[64, 72], [96, 104]],
    },
    {
        "qid": 8737,
        "query": "A family is playing basketball together on a green court outside.",
        "duration": 126,
        "vid": "bP5KfdFJzC4_660.0_810.0",
        "relevant_clip_ids": [0, 1, 2, 3, 4, 5, 6, 7],
        "saliency_scores": [[4, 1, 1], [4, 1, 1], [4, 2, 1], [4, 3, 2], [4, 3, 2], [4, 3, 3], [4, 3, 3], [4, 3, 2]],
        "relevant_windows": [[0, 16]],
    },
    {
        "qid": 5774,
        "query": "Man in baseball cap eats before doing his interview.",
        "duration": 150,
        "vid": "j7rJstUseKg_360.0_510.0",
        "relevant_clip_ids": [48, 49, 50, 51, 64, 65, 66, 70, 71, 72],
        "saliency_scores": [[1, 2, 2]] * 10,
        "relevant_windows": [[96, 104], [128, 134], [140, 146]],
    },
]


def test_qvhighlights_val_in_the_published_layout_loads_every_query(tmp_path, videos):
    """QVHighlights val as moment_detr publishes it: every query loads by default, those with
    several windows too (530 of the 1,550 val queries have several)."""
    for row in MOMENT_DETR_VAL:
        shutil.copy(videos / "clip1.mp4", videos / f"{row['vid']}.mp4")
    path = write(tmp_path / "highlight_val_release.jsonl", "".join(json.dumps(row) + "\n" for row in MOMENT_DETR_VAL))
    records, summary = load_annotations(path, video_root=videos)
    assert summary.format == "qvhighlights" and summary.issues == []
    assert summary.read == summary.kept == 3 and summary.multi_window == 2
    assert [r.id for r in records] == ["2579", "8737", "5774"]
    assert [r.gt for r in records] == [
        [[64.0, 72.0], [96.0, 104.0]],
        [0.0, 16.0],
        [[96.0, 104.0], [128.0, 134.0], [140.0, 146.0]],
    ]
    assert [r.duration for r in records] == [150.0, 126.0, 150.0]


@pytest.mark.parametrize(
    "policy, spans, windows",
    [
        ("first", [(2.0, 6.0), (0.0, 2.0), (0.0, 1.0)], [None, None, None]),
        ("longest", [(2.0, 6.0), (4.0, 8.0), (3.0, 7.5)], [None, None, None]),
        (
            "any",
            [(2.0, 6.0), (0.0, 2.0), (0.0, 1.0)],
            [None, ((0.0, 2.0), (4.0, 8.0)), ((0.0, 1.0), (3.0, 7.5), (5.0, 6.0))],
        ),
    ],
)
def test_multi_span_policies(qvh_file, videos, policy, spans, windows):
    records, summary = load_annotations(qvh_file, video_root=videos, multi_span=policy)
    assert [r.span for r in records] == spans and [r.windows for r in records] == windows
    assert summary.multi_window == 2 and "multi_span" not in summary.counts
    assert f"multi-window 2 (multi_span={policy})" in summary.report()
    if policy == "any":
        assert records[1].gt == [[0.0, 2.0], [4.0, 8.0]] and records[0].gt == [2.0, 6.0]
        # Written as plain JSONL and read back, every window is still there.
        write_jsonl_records(records, videos / "copy.jsonl")
        again, _ = load_annotations(videos / "copy.jsonl", multi_span="any")
        assert again == records


def test_zero_length_spans_are_kept_when_asked(qvh_file, videos):
    records, summary = load_annotations(qvh_file, video_root=videos, zero_length="keep", multi_span="skip")
    assert ("line 3", "zero_length_span", "kept") in issue_kinds(summary)
    assert [r.span for r in records] == [(2.0, 6.0), (4.0, 4.0)]


def tvgbench_text():
    items = [
        {
            "path": "clip1.mp4",
            "question": "a dog runs",
            "answer": "1.5-4.0",
            "duration": 8.0,
            "dataset_name": "charades",
            "start": 0,
            "end": 8,
        },
        {
            "path": "clip2.mkv",
            "question": "I put the cup down",
            "answer": "3.2-3.2",
            "duration": 8.0,
            "dataset_name": "ego4d_nlq",
        },
        {"path": "clip1.mp4", "question": "later", "answer": "soon", "duration": 8.0, "dataset_name": "charades"},
        "not an object",
        {"path": "missing.mp4", "question": "gone", "answer": "1-2", "duration": 8.0, "dataset_name": "didemo"},
        {"path": "clip1.mp4", "question": "to the end", "answer": "2-8.0000000001", "duration": 8.0},
    ]
    return json.dumps(items, indent=2)


def test_tvgbench_is_detected_and_read_with_lines(tmp_path, videos):
    text = tvgbench_text()
    path = write(tmp_path / "tvgbench.json", text)
    assert detect_format(path) == "tvgbench"
    records, summary = load_annotations(path, video_root=videos)
    lines = text.splitlines()
    starts = [number for number, line in enumerate(lines, start=1) if line in ("  {", '  "not an object",')]
    assert len(starts) == 6
    assert issue_kinds(summary) == [
        (f"line {starts[1]} item[1]", "zero_length_span", "skipped"),
        (f"line {starts[2]} item[2]", "malformed", "skipped"),
        (f"line {starts[3]} item[3]", "malformed", "skipped"),
        (f"line {starts[4]} item[4]", "missing_video", "skipped"),
    ]
    assert "'soon'" in summary.issues[1].message
    # The last span ends past the duration by float noise only: inside the video, not reported.
    assert [(r.span, r.source, r.query) for r in records] == [
        ((1.5, 4.0), "charades", "a dog runs"),
        ((2.0, 8.0), "tvgbench", "to the end"),
    ]
    assert records[0].video == str(videos / "clip1.mp4")
    kept, summary = load_annotations(path, video_root=videos, zero_length="keep")
    assert [r.source for r in kept] == ["charades", "ego4d_nlq", "tvgbench"] and kept[1].span == (3.2, 3.2)


def test_tvgbench_on_one_line_and_broken(tmp_path, videos):
    one_line = write(tmp_path / "one.json", json.dumps(json.loads(tvgbench_text())))
    assert detect_format(one_line) == "tvgbench"
    records, summary = load_annotations(one_line, video_root=videos)
    assert len(records) == 2 and all(issue.location.startswith("line 1 item[") for issue in summary.issues)
    broken = write(tmp_path / "broken.json", tvgbench_text()[:-40])
    _, summary = load_annotations(broken, "tvgbench", video_root=videos)
    assert summary.issues[0].kind == "malformed" and summary.issues[0].location.startswith("line ")
    _, summary = load_annotations(write(tmp_path / "obj.json", "{}"), "tvgbench", video_root=videos)
    assert issue_kinds(summary) == [("top level", "malformed", "skipped")]


def test_activitynet_float_noise_is_not_a_span_outside_the_video(tmp_path, videos):
    document = {
        "v_abc": {
            "duration": 95.03999999999999,
            "timestamps": [[90.0, 95.04], [94.0, 96.0]],
            "sentences": ["to the end", "past it"],
        }
    }
    path = write(tmp_path / "anet.json", json.dumps(document))
    records, summary = load_annotations(path, "activitynet", video_root=videos)
    assert records[0].span == (90.0, 95.03999999999999)
    assert issue_kinds(summary) == [("key 'v_abc' sentences[1]", "span_out_of_range", "clipped")]


def test_charades_id_missing_from_the_durations_csv_says_so(tmp_path):
    csv_path = write(tmp_path / "Charades_v1_test.csv", "id,length\nAO8RW,8.0\n")
    annotations = write(tmp_path / "sta.txt", "AO8RW 0.0 1.0##fine\nZZZZZ 0.0 1.0##no such id\n")
    records, summary = load_annotations(annotations, "charades", durations=csv_path, check_videos=False)
    assert len(records) == 1
    assert issue_kinds(summary) == [("line 2", "bad_duration", "skipped")]
    assert f"video id 'ZZZZZ' is not in the durations CSV {csv_path}" in summary.issues[0].message


def test_new_policies_are_validated(qvh_file):
    with pytest.raises(ValueError, match="multi_span"):
        load_annotations(qvh_file, multi_span="all")
    with pytest.raises(ValueError, match="zero_length"):
        load_annotations(qvh_file, zero_length="maybe")
