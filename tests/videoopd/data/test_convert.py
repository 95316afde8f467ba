"""python -m videoopd.data convert: any readable format into ours or the ms-swift one, with the report."""

import json
import shutil
import subprocess
import sys

import pytest

from videoopd.data.__main__ import main
from videoopd.data.annotations import load_annotations


@pytest.fixture()
def charades(tmp_path, synthetic_dir):
    for name in ("AO8RW", "B1XYZ"):
        shutil.copy(synthetic_dir / "videos" / "synth_00000.mp4", tmp_path / f"{name}.mp4")
    path = tmp_path / "charades_sta_test.txt"
    path.write_text(
        "AO8RW 0.0 6.9##a person puts a book away.\n"
        "B1XYZ 1.2 3.4##someone opens a door.\n"
        "B1XYZ 5 4##inverted.\n"  # line 3: reported, left out
        "MISSING 1 2##no video.\n",
        encoding="utf-8",
    )  # line 4: reported, left out
    return path


def test_charades_to_swift_and_back_to_ours(charades, tmp_path, capsys):
    swift = tmp_path / "out" / "charades_swift.jsonl"
    assert main(["convert", str(charades), str(swift), "--to", "swift"]) == 0
    out = capsys.readouterr().out
    assert "read 4, kept 2, skipped 2" in out and "line 3: inverted_span" in out and "line 4: missing_video" in out
    assert f"wrote 2 records to {swift} (swift)" in out
    rows = [json.loads(line) for line in swift.read_text().splitlines()]
    assert rows[0]["videos"] == [str(tmp_path / "AO8RW.mp4")]  # an absolute path stays absolute
    assert rows[0]["messages"][0] == {"role": "system", "content": "You are a video analysis expert."}
    assert rows[0]["messages"][2] == {"role": "assistant", "content": "0.00 to 6.90"}
    original, _ = load_annotations(charades)
    converted, summary = load_annotations(swift)
    assert summary.format == "swift" and summary.issues == [] and converted == original
    ours = tmp_path / "ours.jsonl"
    assert main(["convert", str(swift), str(ours), "--to", "jsonl"]) == 0
    assert load_annotations(ours).records == original


def test_a_timelens_style_and_the_refusals(charades, tmp_path, capsys):
    swift = tmp_path / "tl.jsonl"
    assert main(["convert", str(charades), str(swift), "--to", "swift", "--style", "timelens"]) == 0
    first = json.loads(swift.read_text().splitlines()[0])
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]  # TimeLens has no system message
    assert first["messages"][1]["content"] == "The event happens in 0.0 - 6.9 seconds."
    capsys.readouterr()
    assert main(["convert", str(charades), str(charades), "--to", "swift"]) == 2
    assert "is the input file" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("MISSING 1 2##no video.\n", encoding="utf-8")
    assert main(["convert", str(empty), str(tmp_path / "x.jsonl")]) == 2
    assert "no records to write" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "nope.txt"), str(tmp_path / "x.jsonl")]) == 2
    assert "annotation file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(charades), str(tmp_path / "x.jsonl"), "--to", "parquet"])
    assert exit_info.value.code == 2


def test_the_module_runs_as_a_command(charades, tmp_path):
    target = tmp_path / "cmd.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "videoopd.data", "convert", str(charades), str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "read 4, kept 2" in result.stdout and len(target.read_text().splitlines()) == 2
