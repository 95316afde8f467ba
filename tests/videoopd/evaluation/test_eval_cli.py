import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch

from videoopd.data.annotations import load_annotations
from videoopd.data.video import DecodeConfig, VideoDecodeError
from videoopd.eval import main
from videoopd.evaluation.evaluate import evaluate, format_metrics_table, read_predictions
from videoopd.grounding.metrics import parse_span, temporal_iou

SMALL = {"min_pixels": 56 * 56, "max_pixels": 64 * 96}
ROW_KEYS = {"id", "source", "video", "query", "gt", "duration", "answer", "pred", "iou", "error", "data_issue"}


class ScriptedModel(torch.nn.Module):
    """Stands in for a VLM: 'generates' the scripted answers, in record order."""

    def __init__(self, tokenizer, answers):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device
        self.tokenizer = tokenizer
        self.answers = list(answers)
        self.calls = []
        self.config = SimpleNamespace()  # no vision token ids to suppress
        self.generation_config = SimpleNamespace(eos_token_id=tokenizer.eos_token_id)

    def generate(self, input_ids, max_new_tokens, do_sample, pad_token_id, **inputs):
        assert do_sample is False and "pixel_values_videos" in inputs and "video_grid_thw" in inputs
        batch = [self.answers.pop(0) for _ in range(input_ids.shape[0])]
        self.calls.append(batch)
        encoded = [self.tokenizer(answer)["input_ids"][:max_new_tokens] for answer in batch]
        width = max(len(ids) for ids in encoded)
        new = torch.full((len(batch), width), pad_token_id, dtype=input_ids.dtype)
        for row, ids in enumerate(encoded):
            new[row, : len(ids)] = torch.tensor(ids)
        return torch.cat([input_ids, new], dim=1)


@pytest.fixture()
def records(synthetic_dir):
    records, _ = load_annotations(synthetic_dir / "annotations.jsonl")
    return records


def _config(processor):
    return DecodeConfig.for_processor(processor, **SMALL)


def test_evaluate_scores_scripted_answers(records, tiny_qwen25):
    _, processor = tiny_qwen25
    chosen = records[:4]
    start, end = chosen[0].span
    answers = [
        f"{start:.2f} to {end:.2f}",  # exact: IoU 1
        "A\ufffd\x7f garbage",  # unparsed: IoU 0, counted
        f"{chosen[2].span[1]:.2f} to {chosen[2].span[0]:.2f}",  # inverted: parsed, IoU 0
        "<think>hmm</think>The event happens in 0.00 - 8.00 seconds.",
    ]
    model = ScriptedModel(processor.tokenizer, answers)
    result = evaluate(model, processor, chosen, decode_config=_config(processor), batch_size=3, progress=False)
    assert [len(call) for call in model.calls] == [3, 1]
    assert [row["answer"] for row in result.predictions] == answers
    rows = result.predictions
    assert rows[0]["pred"] == [start, end] and rows[0]["iou"] == 1.0
    assert rows[1]["pred"] is None and rows[1]["iou"] == 0.0
    assert rows[2]["pred"] == [chosen[2].span[1], chosen[2].span[0]] and rows[2]["iou"] == 0.0
    whole = (chosen[3].span[1] - chosen[3].span[0]) / 8.0
    assert rows[3]["iou"] == pytest.approx(whole)
    assert result.metrics["total"] == 4 and result.metrics["parsed"] == 3
    assert result.metrics["mIoU"] == pytest.approx(100 * (1.0 + whole) / 4)
    assert result.metrics["R1@0.7"] == pytest.approx(25.0 + (25.0 if whole >= 0.7 else 0.0))
    assert list(result.per_source) == ["synthetic"]


def test_metrics_per_source(records, tiny_qwen25):
    _, processor = tiny_qwen25
    chosen = [records[0], dataclasses.replace(records[1], source="other")]
    answers = [f"{chosen[0].span[0]} to {chosen[0].span[1]}", "no idea"]
    result = evaluate(
        ScriptedModel(processor.tokenizer, answers), processor, chosen, decode_config=_config(processor), progress=False
    )
    assert result.per_source["synthetic"]["mIoU"] == 100.0
    assert result.per_source["other"] == {
        "R1@0.3": 0.0,
        "R1@0.5": 0.0,
        "R1@0.7": 0.0,
        "mIoU": 0.0,
        "parsed": 0,
        "total": 1,
    }
    table = format_metrics_table(result.metrics, result.per_source)
    lines = table.splitlines()
    assert lines[0].split() == ["source", "total", "parsed", "R1@0.3", "R1@0.5", "R1@0.7", "mIoU"]
    assert lines[2].split() == ["all", "2", "1", "50.00", "50.00", "50.00", "50.00"]
    assert [line.split()[0] for line in lines[3:]] == ["other", "synthetic"]


def test_resume_skips_done_ids_and_recovers_from_a_cut_off_row(tmp_path, records, tiny_qwen25):
    _, processor = tiny_qwen25
    output = tmp_path / "predictions.jsonl"
    first = ScriptedModel(processor.tokenizer, ["1 to 2"] * 3)
    evaluate(first, processor, records[:3], decode_config=_config(processor), predictions_path=output, progress=False)
    assert list(read_predictions(output)) == [r.id for r in records[:3]]
    with output.open("a") as handle:  # a crash while writing the 4th row
        handle.write(json.dumps({"id": records[3].id, "answer": "1 to 2"})[:20])
    second = ScriptedModel(processor.tokenizer, ["3 to 4"] * 3)
    result = evaluate(
        second,
        processor,
        records[:6],
        decode_config=_config(processor),
        predictions_path=output,
        resume=True,
        batch_size=3,
        progress=False,
    )
    assert result.resumed == 3
    assert sum(len(call) for call in second.calls) == 3  # records 3, 4, 5 only
    assert [row["id"] for row in result.predictions] == [r.id for r in records[:6]]
    assert [row["answer"] for row in result.predictions] == ["1 to 2"] * 3 + ["3 to 4"] * 3
    assert list(read_predictions(output)) == [r.id for r in records[:6]]
    # Without resume the file starts over.
    third = ScriptedModel(processor.tokenizer, ["5 to 6"])
    evaluate(third, processor, records[:1], decode_config=_config(processor), predictions_path=output, progress=False)
    assert len(output.read_text().splitlines()) == 1


def test_undecodable_video_is_a_counted_failure_or_an_error(tmp_path, records, tiny_qwen25):
    _, processor = tiny_qwen25
    broken_video = tmp_path / "broken.mp4"
    broken_video.write_bytes(b"\x00" * 2048)
    broken = dataclasses.replace(records[0], id="broken#0", video=str(broken_video))
    chosen = [broken, records[1]]
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        evaluate(
            ScriptedModel(processor.tokenizer, ["1 to 2"]),
            processor,
            chosen,
            decode_config=_config(processor),
            progress=False,
        )
    result = evaluate(
        ScriptedModel(processor.tokenizer, ["1 to 2"]),
        processor,
        chosen,
        decode_config=_config(processor),
        on_video_error="report",
        progress=False,
    )
    failed_row = result.predictions[0]
    assert failed_row["id"] == "broken#0" and failed_row["answer"] is None and failed_row["iou"] == 0.0
    assert "broken.mp4" in failed_row["error"]
    assert [i for i, _ in result.failed_videos] == ["broken#0"]
    assert result.metrics["total"] == 2 and result.metrics["parsed"] == 1


def test_evaluate_validates_arguments(records, tiny_qwen25):
    model, processor = tiny_qwen25
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(model, processor, records, batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, processor, [])
    with pytest.raises(ValueError, match="unique"):
        evaluate(model, processor, [records[0], records[0]])
    with pytest.raises(ValueError, match="predictions_path"):
        evaluate(model, processor, records, resume=True)
    with pytest.raises(ValueError, match="prompt_style"):
        evaluate(model, processor, records, prompt_style="cot")


def test_command_line_end_to_end_on_the_tiny_model(tmp_path, synthetic_dir, tiny_qwen25_checkpoint, capsys):
    output = tmp_path / "out" / "preds.jsonl"
    common = [
        "--model",
        str(tiny_qwen25_checkpoint),
        "--data",
        str(synthetic_dir / "annotations.jsonl"),
        "--format",
        "auto",
        "--video-root",
        str(synthetic_dir),
        "--output",
        str(output),
        "--per-device-eval-batch-size",
        "2",
        "--max-new-tokens",
        "6",
        "--dataloader-num-workers",
        "0",
        "--min-pixels",
        str(56 * 56),
        "--max-pixels",
        str(64 * 96),
        "--no-progress",
    ]
    assert main(common + ["--limit", "4"]) == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert set(row) == ROW_KEYS
        assert isinstance(row["answer"], str) and row["error"] is None
        parsed = parse_span(row["answer"])
        assert row["pred"] == (list(parsed) if parsed else None)
        assert row["iou"] == temporal_iou(parsed, row["gt"])
    metrics = json.loads((tmp_path / "out" / "preds.metrics.json").read_text())
    overall = metrics["overall"]
    # A random tiny model answers garbage; whatever it says is counted, parsed or not.
    assert overall["total"] == 4
    assert overall["parsed"] == sum(row["pred"] is not None for row in rows)
    assert overall["mIoU"] == pytest.approx(100 * sum(row["iou"] for row in rows) / 4)
    assert metrics["per_source"]["synthetic"]["total"] == 4
    assert "read 6, kept 6" in printed
    table_rows = [line.split() for line in printed.splitlines() if line.split()[:1] in (["all"], ["synthetic"])]
    assert [r[:2] for r in table_rows] == [["all", "4"], ["synthetic", "4"]]

    assert main(common + ["--resume"]) == 0
    printed = capsys.readouterr().out
    assert "resumed 4 predictions" in printed
    assert len(output.read_text().splitlines()) == 6


def test_command_line_rejects_bad_arguments(tmp_path, synthetic_dir, capsys):
    assert (
        main(
            [
                "--model",
                str(tmp_path),
                "--data",
                str(synthetic_dir / "annotations.jsonl"),
                "--per-device-eval-batch-size",
                "0",
            ]
        )
        == 2
    )
    assert "--per-device-eval-batch-size must be > 0, got 0" in capsys.readouterr().err
    assert main(["--model", str(tmp_path), "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"video": "v.mp4", "query": "q", "start": 2, "end": 1, "duration": 3}) + "\n")
    assert main(["--model", str(tmp_path), "--data", str(bad), "--strict"]) == 2
    assert "bad.jsonl: line 1: inverted_span" in capsys.readouterr().err


def _one_line_exit_2(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_output_that_is_the_data_file_or_a_folder_is_refused_before_any_work(tmp_path, synthetic_dir, capsys):
    data = tmp_path / "annotations.jsonl"
    original = (synthetic_dir / "annotations.jsonl").read_text()
    data.write_text(original)
    model = str(tmp_path / "no_model_needed")  # refused before the model is looked at
    err = _one_line_exit_2(capsys, ["--model", model, "--data", str(data), "--output", str(data)])
    assert "--output" in err and "--data" in err and str(data) in err
    link = tmp_path / "link.jsonl"
    link.symlink_to(data)
    err = _one_line_exit_2(capsys, ["--model", model, "--data", str(data), "--output", str(link)])
    assert "--output" in err and "--data" in err and str(data) in err
    relative = tmp_path / "sub" / ".." / "annotations.jsonl"
    (tmp_path / "sub").mkdir()
    _one_line_exit_2(capsys, ["--model", model, "--data", str(data), "--output", str(relative)])
    # The metrics file written next to the predictions would replace the data as well.
    anet = tmp_path / "preds.metrics.json"
    anet.write_text("{}")
    err = _one_line_exit_2(capsys, ["--model", model, "--data", str(anet), "--output", str(tmp_path / "preds.jsonl")])
    assert "--data" in err and str(anet) in err
    sidecar = tmp_path / "p.jsonl.meta.json"
    sidecar.write_text("{}")
    _one_line_exit_2(capsys, ["--model", model, "--data", str(sidecar), "--output", str(tmp_path / "p.jsonl")])
    err = _one_line_exit_2(capsys, ["--model", model, "--data", str(data), "--output", str(tmp_path)])
    assert "--output" in err and "folder" in err
    assert data.read_text() == original and anet.read_text() == "{}"


def test_predictions_record_what_they_belong_to_and_resume_refuses_other_inputs(tmp_path, records, tiny_qwen25):
    _, processor = tiny_qwen25
    output = tmp_path / "predictions.jsonl"
    evaluate(
        ScriptedModel(processor.tokenizer, ["1 to 2"] * 2),
        processor,
        records[:2],
        decode_config=_config(processor),
        predictions_path=output,
        identity={"data_sha256": "aaa", "model": "/m"},
        progress=False,
    )
    meta = json.loads((tmp_path / "predictions.jsonl.meta.json").read_text())
    assert meta["identity"]["data_sha256"] == "aaa" and meta["identity"]["prompt_style"] == "paper"
    assert meta["identity"]["max_new_tokens"] == 64 and meta["identity"]["decoding"] == "greedy"
    assert [json.loads(line)["id"] for line in output.read_text().splitlines()] == [r.id for r in records[:2]]

    def resume(**changes):
        arguments = {"decode_config": _config(processor), "identity": {"data_sha256": "aaa", "model": "/m"}}
        arguments.update(changes)
        model = ScriptedModel(processor.tokenizer, ["3 to 4"] * 3)
        result = evaluate(
            model, processor, records[:3], predictions_path=output, resume=True, progress=False, **arguments
        )
        return result, model

    with pytest.raises(ValueError, match=r"data_sha256.*'aaa'.*'bbb'") as info:
        resume(identity={"data_sha256": "bbb", "model": "/m"})
    assert "model" not in str(info.value).split("differ:")[1]
    with pytest.raises(ValueError, match="max_new_tokens") as info:
        resume(max_new_tokens=8, prompt_style="timelens")
    assert "prompt_style" in str(info.value)
    with pytest.raises(ValueError, match="fps"):
        resume(decode_config=dataclasses.replace(_config(processor), fps=1.0))
    assert len(output.read_text().splitlines()) == 2  # a refused resume keeps the file as it was
    result, model = resume()
    assert result.resumed == 2 and sum(len(call) for call in model.calls) == 1
    # A file from before identities were recorded cannot be checked: refused, not guessed at.
    (tmp_path / "predictions.jsonl.meta.json").unlink()
    with pytest.raises(ValueError, match="no recorded identity"):
        resume()


def test_command_line_resume_on_other_data_with_overlapping_ids_is_refused(
    tmp_path, synthetic_dir, tiny_qwen25_checkpoint, capsys
):
    first = tmp_path / "first.jsonl"
    first.write_text((synthetic_dir / "annotations.jsonl").read_text())
    second = tmp_path / "second.jsonl"  # same ids, other spans
    rows = [json.loads(line) for line in first.read_text().splitlines()]
    second.write_text("".join(json.dumps({**row, "start": 0.0, "end": 1.0}) + "\n" for row in rows))
    output = tmp_path / "preds.jsonl"
    common = [
        "--model",
        str(tiny_qwen25_checkpoint),
        "--video-root",
        str(synthetic_dir),
        "--output",
        str(output),
        "--max-new-tokens",
        "2",
        "--dataloader-num-workers",
        "0",
        "--min-pixels",
        str(56 * 56),
        "--max-pixels",
        str(64 * 96),
        "--no-progress",
        "--limit",
        "1",
    ]
    assert main(common + ["--data", str(first)]) == 0
    capsys.readouterr()
    written = output.read_text()
    err = _one_line_exit_2(capsys, common + ["--data", str(second), "--resume"])
    assert "--resume" in err and "data_sha256" in err and str(output) in err
    err = _one_line_exit_2(capsys, common + ["--data", str(first), "--resume", "--fps", "1"])
    assert "fps" in err and "data_sha256" not in err
    assert output.read_text() == written
    # The dtype recorded is the one the weights got: auto is float32 on this CPU run.
    assert json.loads((tmp_path / "preds.jsonl.meta.json").read_text())["identity"]["dtype"] == "float32"
    assert main(common + ["--data", str(first), "--resume", "--dtype", "float32", "--device", "cpu"]) == 0
    assert "resumed 1 predictions" in capsys.readouterr().out
    (tmp_path / "preds.jsonl.meta.json").unlink()
    err = _one_line_exit_2(capsys, common + ["--data", str(first), "--resume"])
    assert "no recorded identity" in err


def test_rows_whose_video_disagrees_with_the_annotation_are_flagged_and_counted(
    tmp_path, synthetic_dir, tiny_qwen25, tiny_qwen25_checkpoint, capsys
):
    rows = [json.loads(line) for line in (synthetic_dir / "annotations.jsonl").read_text().splitlines()[:3]]
    rows[1].update(start=10.0, end=15.0, duration=20.0)  # the video is 8 s long
    rows[2].update(duration=12.0)
    data = tmp_path / "disagree.jsonl"
    data.write_text("".join(json.dumps({**row, "video": str(synthetic_dir / row["video"])}) + "\n" for row in rows))
    records, _ = load_annotations(data)
    _, processor = tiny_qwen25
    result = evaluate(
        ScriptedModel(processor.tokenizer, ["1 to 2"] * 3),
        processor,
        records,
        decode_config=_config(processor),
        progress=False,
    )
    flags = [row["data_issue"] for row in result.predictions]
    assert flags[0] is None
    assert (flags[1]["file"], flags[1]["location"], flags[1]["kind"], flags[1]["action"]) == (
        str(data),
        "line 2",
        "span_beyond_video",
        "kept",
    )
    assert (flags[2]["location"], flags[2]["kind"]) == ("line 3", "duration_mismatch")
    assert [(i, issue.kind) for i, issue in result.data_issues] == [
        (records[1].id, "span_beyond_video"),
        (records[2].id, "duration_mismatch"),
    ]
    assert result.metrics["total"] == 3  # scored, not dropped

    output = tmp_path / "preds.jsonl"
    argv = [
        "--model",
        str(tiny_qwen25_checkpoint),
        "--data",
        str(data),
        "--output",
        str(output),
        "--max-new-tokens",
        "2",
        "--dataloader-num-workers",
        "0",
        "--min-pixels",
        str(56 * 56),
        "--max-pixels",
        str(64 * 96),
        "--no-progress",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "2 queries disagree with their videos" in captured.err and "line 2: span_beyond_video" in captured.err
    metrics = json.loads((tmp_path / "preds.metrics.json").read_text())
    assert metrics["data_issues"] == {"span_beyond_video": 1, "duration_mismatch": 1}
    assert [json.loads(line)["data_issue"] is not None for line in output.read_text().splitlines()] == [
        False,
        True,
        True,
    ]
    # an existing predictions file is never replaced without being asked to
    before = output.read_text()
    assert main(argv) == 2
    assert "already holds predictions" in capsys.readouterr().err and output.read_text() == before
    assert main([*argv, "--overwrite"]) == 0 and output.read_text() == before  # the same model and data
    capsys.readouterr()
    assert main([*argv, "--overwrite", "--limit", "1"]) == 0 and len(output.read_text().splitlines()) == 1


def test_help_describes_every_option_and_states_each_default_once(capsys):
    import re

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    options = text.split("options:", 1)[1]
    entries: list[list[str]] = []
    for line in options.splitlines():
        if re.match(r"^  -", line):
            entries.append([line])
        elif line.strip() and entries:
            entries[-1].append(line)
    assert len(entries) >= 23
    for entry in entries:
        invocation, _, first_help = entry[0].strip().partition("  ")
        help_text = " ".join([first_help.strip()] + [line.strip() for line in entry[1:]]).strip()
        assert help_text, f"{invocation} has no help text"
        assert help_text.lower().count("default") <= 1, f"{invocation}: {help_text}"
    for flag, default in (
        ("--per_device_eval_batch_size", "1"),
        ("--max_new_tokens", "64"),
        ("--fps", "the model's recorded setting, else 2"),
        ("--prompt_style", "paper"),
    ):
        entry = " ".join(next(e for e in entries if e[0].strip().startswith(flag)))
        assert f"default: {default}" in " ".join(entry.split()), entry


def test_no_usable_record_is_a_one_line_error(tmp_path, capsys, tiny_qwen25_checkpoint):
    data = tmp_path / "all_missing.jsonl"
    data.write_text(json.dumps({"video": "nowhere.mp4", "query": "q", "start": 0, "end": 1, "duration": 3}) + "\n")
    assert (
        main(
            [
                "--model",
                str(tiny_qwen25_checkpoint),
                "--data",
                str(data),
                "--output",
                str(tmp_path / "p.jsonl"),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("python -m videoopd.eval: error: --data ") and "no records" in err


class PromptRecordingModel(ScriptedModel):
    """A ScriptedModel that also keeps the prompts it was given, as text."""

    def generate(self, input_ids, **kwargs):
        self.prompts = getattr(self, "prompts", []) + self.tokenizer.batch_decode(input_ids, skip_special_tokens=False)
        return super().generate(input_ids, **kwargs)


def test_evaluate_under_a_protocol_prompts_parses_and_scores_by_its_rules(records, tiny_qwen25):
    from videoopd.grounding.metrics import grounding_metrics, sample_iou

    _, processor = tiny_qwen25
    chosen = [dataclasses.replace(record, query="a shape appears.") for record in records[:3]]
    answers = ["from 1.5s to 4.5s", "The event happens in 0.00 - 8.00 seconds.", "<think>1 to 2</think> 2.5 to 3.5"]
    model = PromptRecordingModel(processor.tokenizer, answers)
    result = evaluate(
        model,
        processor,
        chosen,
        decode_config=_config(processor),
        prompt_style="timelens",
        protocol="timelens",
        batch_size=3,
        progress=False,
    )
    assert all("sentence 'a shape appears'," in prompt for prompt in model.prompts)  # its periods stripped
    assert [row["query"] for row in result.predictions] == ["a shape appears."] * 3  # the record's own
    for row, answer in zip(result.predictions, answers):
        pred = parse_span(answer, "timelens")
        assert row["pred"] == (list(pred) if pred else None) and row["iou"] == sample_iou(pred, row["gt"])
    assert result.predictions[0]["pred"] == [1.0, 4.0]  # TimeLens reads "1.5s" as 1
    gts = [row["gt"] for row in result.predictions]
    assert result.metrics == result.protocols["timelens"]["overall"]
    for name in ("paper", "timelens", "time-r1"):
        assert result.protocols[name]["overall"] == grounding_metrics([parse_span(a, name) for a in answers], gts, name)
    assert result.protocols["time-r1"]["overall"]["parsed"] == 1  # only "2.5 to 3.5" has its shape


def test_command_line_protocol_sets_prompt_and_budget_and_reports_every_protocol(
    tmp_path, synthetic_dir, tiny_qwen25_checkpoint, capsys
):
    output = tmp_path / "preds.jsonl"
    argv = [
        "--model",
        str(tiny_qwen25_checkpoint),
        "--data",
        str(synthetic_dir / "annotations.jsonl"),
        "--video-root",
        str(synthetic_dir),
        "--output",
        str(output),
        "--per-device-eval-batch-size",
        "2",
        "--max-new-tokens",
        "4",
        "--max-pixels",
        str(112 * 140),
        "--no-progress",
        "--limit",
        "2",
        "--protocol",
        "time-r1",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    identity = json.loads((tmp_path / "preds.jsonl.meta.json").read_text())["identity"]
    assert identity["protocol"] == "time-r1" and identity["prompt_style"] == "time-r1"
    assert identity["system_prompt"] == "You are a helpful assistant."
    assert (identity["min_pixels"], identity["total_pixels"], identity["fps"]) == (16 * 28**2, 3584 * 28**2, 2.0)
    metrics = json.loads((tmp_path / "preds.metrics.json").read_text())
    assert metrics["protocol"] == "time-r1" and list(metrics["protocols"]) == ["paper", "timelens", "time-r1"]
    assert metrics["overall"] == metrics["protocols"]["time-r1"]["overall"]
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    for name, block in metrics["protocols"].items():
        assert block["overall"]["parsed"] == sum(parse_span(row["answer"], name) is not None for row in rows)
        assert block["per_source"]["synthetic"]["total"] == 2
    assert "protocol time-r1; the same answers under paper R1@0.5" in printed
    err = _one_line_exit_2(capsys, argv[:-2] + ["--protocol", "timelens", "--prompt-style", "time-r1", "--overwrite"])
    assert "--prompt-style time-r1 contradicts it" in err


def test_qvhighlights_windows_are_scored_by_the_best_window_with_moment_retrieval_metrics(
    tmp_path, synthetic_dir, tiny_qwen25
):
    _, processor = tiny_qwen25
    lines = [
        {"qid": 7, "query": "a shape", "duration": 8, "vid": "synth_00000", "relevant_windows": [[0, 2], [4, 8]]},
        {"qid": 8, "query": "another", "duration": 8, "vid": "synth_00001", "relevant_windows": [[1, 3]]},
    ]
    path = tmp_path / "highlight_val_release.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    records, summary = load_annotations(path, video_root=synthetic_dir / "videos", multi_span="any")
    assert summary.format == "qvhighlights" and summary.multi_window == 1
    result = evaluate(
        ScriptedModel(processor.tokenizer, ["4 to 8", "0 to 2"]),
        processor,
        records,
        decode_config=_config(processor),
        moment_retrieval=True,
        progress=False,
    )
    rows = result.predictions
    assert rows[0]["gt"] == [[0.0, 2.0], [4.0, 8.0]] and rows[0]["iou"] == 1.0
    assert rows[1]["iou"] == pytest.approx(1 / 3)
    assert result.metrics["MR-mAP@0.5"] == pytest.approx(100 * (1 / 2) / 2)
    assert result.metrics["MR-R1@0.5"] == 50.0 and result.protocols["time-r1"]["overall"]["MR-R1@0.7"] == 50.0


def test_time_r1_prompt_is_its_own_with_its_system_prompt_and_empty_thinking(records, tiny_qwen25):
    _, processor = tiny_qwen25
    model = PromptRecordingModel(processor.tokenizer, ["<think>x</think><answer>1.00 to 2.00</answer>"] * 2)
    result = evaluate(
        model,
        processor,
        records[:2],
        decode_config=_config(processor),
        prompt_style="time-r1",
        protocol="time-r1",
        batch_size=2,
        progress=False,
    )
    for prompt, record in zip(model.prompts, records[:2]):
        assert prompt.endswith("<|im_start|>assistant\n<think>\n</think>\n")
        assert "You are a helpful assistant." in prompt and f'pinpoint the event "{record.query}"' in prompt
    assert [row["pred"] for row in result.predictions] == [[1.0, 2.0]] * 2
