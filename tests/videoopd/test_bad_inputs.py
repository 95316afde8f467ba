"""Bad inputs of the commands (train, sft, eval) are one-line errors naming the flag or file and
what is wrong, exit 2, before any work."""

import json
import shutil

import pytest
import torch

from videoopd import eval as E
from videoopd import sft as S
from videoopd import train as T
from videoopd.qwen.models import CheckpointError, check_checkpoint


def _broken_copy(checkpoint, out, breakage):
    """A copy of ``checkpoint`` in ``out`` with one thing wrong."""
    shutil.copytree(checkpoint, out)
    weights = out / "model.safetensors"
    if breakage == "no config.json":
        for f in out.iterdir():
            f.unlink()
    elif breakage == "only config.json":
        for f in out.iterdir():
            if f.name != "config.json":
                f.unlink()
    elif breakage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif breakage == "garbage weights":
        weights.write_bytes(b"\x93garbage" * 100)
    elif breakage == "no model_type":
        config = json.loads((out / "config.json").read_text())
        del config["model_type"]
        (out / "config.json").write_text(json.dumps(config))
    elif breakage == "config.json not JSON":
        (out / "config.json").write_text("{not json")
    elif breakage == "missing shard":
        weights.rename(out / "model-00001-of-00002.safetensors")
        (out / "model.safetensors.index.json").write_text(
            json.dumps(
                {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
            )
        )
    elif breakage == "no tokenizer":
        (out / "tokenizer.json").unlink()
        (out / "tokenizer_config.json").unlink()
    elif breakage == "no chat template":
        (out / "chat_template.jinja").unlink()
    elif breakage == "lora adapter":
        for f in out.iterdir():
            f.unlink()
        (out / "adapter_config.json").write_text("{}")
    return out


BREAKAGES = {
    "no config.json": "has no config.json",
    "only config.json": "has no weights",
    "truncated weights": "is not a readable safetensors file",
    "garbage weights": "is not a readable safetensors file",
    "no model_type": "has no model_type",
    "config.json not JSON": "is not valid JSON",
    "missing shard": "weights file missing",
    "no tokenizer": "has no tokenizer",
    "no chat template": "has no chat template",
    "lora adapter": "names no base_model_name_or_path",
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_check_checkpoint_names_what_is_wrong(tmp_path, tiny_qwen25_checkpoint, breakage):
    broken = _broken_copy(tiny_qwen25_checkpoint, tmp_path / "model", breakage)
    with pytest.raises(CheckpointError, match=BREAKAGES[breakage]):
        check_checkpoint(broken)
    assert check_checkpoint(tiny_qwen25_checkpoint) == tiny_qwen25_checkpoint


def _one_line_error(capsys, code, flag, message):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and flag in err and message in err, err


@pytest.mark.parametrize(
    "breakage", ["no config.json", "only config.json", "truncated weights", "no tokenizer", "no chat template"]
)
def test_commands_refuse_a_broken_model_folder_before_any_work(
    tmp_path, capsys, synthetic_dir, tiny_qwen25_checkpoint, breakage
):
    broken = str(_broken_copy(tiny_qwen25_checkpoint, tmp_path / "model", breakage))
    good, ann, out = str(tiny_qwen25_checkpoint), str(synthetic_dir / "annotations.jsonl"), tmp_path / "out"
    message = BREAKAGES[breakage]
    code = E.main(["--model", broken, "--data", ann, "--output", str(out / "p.jsonl")])
    _one_line_error(capsys, code, "--model", message)
    code = S.main(["--model", broken, "--train-data", ann, "--output-dir", str(out)])
    _one_line_error(capsys, code, "--model", message)
    code = T.main(["--student", broken, "--teacher", good, "--train-data", ann, "--output-dir", str(out)])
    _one_line_error(capsys, code, "--student", message)
    code = T.main(["--student", good, "--teacher", broken, "--train-data", ann, "--output-dir", str(out)])
    _one_line_error(capsys, code, "--teacher", message)
    assert not out.exists()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("gpu", "is not a device name"),
        ("cuda:x", "is not a device name"),
        ("mps", "this machine has no mps device"),
    ],
)
def test_available_device_names_what_is_wrong(spec, message):
    from videoopd.qwen.models import available_device

    with pytest.raises(ValueError, match=message):
        available_device(spec)
    assert str(available_device("cpu")) == "cpu"


def test_cuda_index_past_the_devices_there_are(monkeypatch):
    from videoopd.qwen.models import available_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match="has 2 cuda device"):
        available_device("cuda:3")
    assert str(available_device("cuda:1")) == "cuda:1"


@pytest.mark.parametrize("spec", ["nonsense", f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 3}"])
def test_commands_refuse_a_device_this_machine_lacks(tmp_path, capsys, synthetic_dir, tiny_qwen25_checkpoint, spec):
    good, ann, out = str(tiny_qwen25_checkpoint), str(synthetic_dir / "annotations.jsonl"), tmp_path / "out"
    code = E.main(["--model", good, "--data", ann, "--device", spec, "--output", str(out / "p.jsonl")])
    _one_line_error(capsys, code, "--device", spec)
    code = S.main(["--model", good, "--train-data", ann, "--device", spec, "--output-dir", str(out)])
    _one_line_error(capsys, code, "--device", spec)
    code = T.main(
        ["--student", good, "--teacher", good, "--train-data", ann, "--device", spec, "--output-dir", str(out)]
    )
    _one_line_error(capsys, code, "--device", spec)
    code = T.main(
        ["--student", good, "--teacher", good, "--train-data", ann, "--teacher-device", spec, "--output-dir", str(out)]
    )
    _one_line_error(capsys, code, "--teacher-device", spec)
    code = T.main(["--device", spec, "--output-dir", str(out)])  # the demo
    _one_line_error(capsys, code, "--device", spec)
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--temperature", "inf"], "--temperature must be > 0 and finite, got inf"),
        (["--temperature", "nan"], "--temperature must be > 0 and finite, got nan"),
        (["--top-p", "nan"], "--top-p must be in (0, 1], got nan"),
        (["--demo-videos", "1"], "--demo-videos must be >= 2, got 1"),
    ],
)
def test_sampling_and_demo_values_are_checked(tmp_path, capsys, argv, message):
    code = T.main(argv + ["--output-dir", str(tmp_path / "run")])
    _one_line_error(capsys, code, message.split()[0], message)


def test_output_paths_that_are_files_are_refused_before_any_work(
    tmp_path, capsys, synthetic_dir, tiny_qwen25_checkpoint
):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    ann, good = str(synthetic_dir / "annotations.jsonl"), str(tiny_qwen25_checkpoint)
    for output_dir in (a_file, a_file / "run"):
        code = T.main(["--output-dir", str(output_dir), "--demo-videos", "2"])  # the demo
        _one_line_error(capsys, code, "--output-dir", "is a file, not a folder")
        code = T.main(["--student", good, "--teacher", good, "--train-data", ann, "--output-dir", str(output_dir)])
        _one_line_error(capsys, code, "--output-dir", "is a file, not a folder")
        code = S.main(["--init-tiny", "qwen3_vl", "--train-data", ann, "--output-dir", str(output_dir)])
        _one_line_error(capsys, code, "--output-dir", "is a file, not a folder")
    code = E.main(["--model", good, "--data", ann, "--output", str(a_file / "p.jsonl")])
    _one_line_error(capsys, code, "--output", "is a file, not a folder")
    assert a_file.read_text() == ""


@pytest.fixture
def set_with_a_corrupt_video(tmp_path):
    """A small synthetic set whose second video is garbage bytes; returns its annotation file."""
    from videoopd.data.synthetic import generate_dataset

    annotations = generate_dataset(tmp_path / "data", num_videos=3, seed=0, duration=4.0, fps=4, height=64, width=96)
    (tmp_path / "data" / "videos" / "synth_00001.mp4").write_bytes(b"\x1a\x45\xdf\xa3garbage" * 64)
    return annotations


@pytest.mark.parametrize("workers", ["0", "1"])
def test_eval_on_video_error_raise_is_one_line_naming_the_video(
    tmp_path, capsys, set_with_a_corrupt_video, tiny_qwen25_checkpoint, workers
):
    code = E.main(
        [
            "--model",
            str(tiny_qwen25_checkpoint),
            "--data",
            str(set_with_a_corrupt_video),
            "--output",
            str(tmp_path / "p.jsonl"),
            "--on-video-error",
            "raise",
            "--dataloader-num-workers",
            workers,
            "--min-pixels",
            str(56 * 56),
            "--max-pixels",
            str(64 * 96),
            "--max-new-tokens",
            "4",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err  # after the model loaded: transformers' own progress lines come first
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("python -m videoopd.eval: error: cannot decode video ")
    assert "synth_00001.mp4" in err.strip().splitlines()[-1]


def test_sft_collator_leaves_out_undecodable_videos_and_names_them(set_with_a_corrupt_video):
    from videoopd.data.annotations import load_annotations
    from videoopd.data.datasets import GroundingVideoDataset
    from videoopd.data.video import DecodeConfig
    from videoopd.qwen.collators import SFTCollator
    from videoopd.qwen.tiny import build_tiny_processor, build_tiny_tokenizer

    processor = build_tiny_processor("qwen3_vl", build_tiny_tokenizer("qwen3_vl"))
    records, _ = load_annotations(set_with_a_corrupt_video)
    dataset = GroundingVideoDataset(
        records, DecodeConfig.for_processor(processor, min_pixels=64 * 96, max_pixels=64 * 96), on_error="report"
    )
    items = [dataset[i] for i in range(len(records))]
    batch = SFTCollator(processor)(items)
    corrupt = [r.id for r in records if "synth_00001" in r.video]
    assert [record.id for record, _ in batch["failed"]] == corrupt
    assert all("synth_00001.mp4" in error for _, error in batch["failed"])
    assert [r.id for r in batch["records"]] == [r.id for r in records if r.id not in corrupt]
    assert batch["inputs"]["input_ids"].shape[0] == batch["answer_mask"].shape[0] == len(batch["records"])
    nothing = SFTCollator(processor)([item for item in items if item["record"].id in corrupt])
    assert nothing["inputs"] is None and nothing["answer_mask"] is None and len(nothing["failed"]) == len(corrupt)


def test_sft_trains_past_a_corrupt_video(tmp_path, capsys, set_with_a_corrupt_video):
    out = tmp_path / "run"
    code = S.main(
        [
            "--init-tiny",
            "qwen3_vl",
            "--train-data",
            str(set_with_a_corrupt_video),
            "--output-dir",
            str(out),
            "--tiny-hidden-size",
            "32",
            "--tiny-layers",
            "1",
            "--max-steps",
            "2",
            "--per-device-train-batch-size",
            "3",
            "--warmup-steps",
            "0",
            "--min-pixels",
            str(64 * 96),
            "--max-pixels",
            str(64 * 96),
            "--save-final",
            "false",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]


def test_pair_of_different_families_is_refused_naming_both():
    from videoopd.qwen.models import check_pair
    from videoopd.qwen.tiny import build_tiny_model, build_tiny_processor, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer("qwen3_vl")
    student = build_tiny_model("qwen3_vl", tokenizer, hidden_size=32, num_layers=1)
    teacher = build_tiny_model("qwen2_5_vl", tokenizer, hidden_size=32, num_layers=1)
    processor = build_tiny_processor("qwen3_vl", tokenizer)
    with pytest.raises(ValueError, match="student is a qwen3_vl model and the teacher a qwen2_5_vl model.*family"):
        check_pair(student, teacher, processor, processor)
    check_pair(student, build_tiny_model("qwen3_vl", tokenizer, hidden_size=64, num_layers=1), processor, processor)


@pytest.mark.parametrize("command", ["train", "sft", "train --preset demo"])
def test_help_states_each_default_once_and_the_preset_defaults(capsys, command):
    """Each option's help says its default once: the command's, or with --preset the preset's."""
    import re

    main = {"train": T.main, "sft": S.main}[command.split()[0]]
    with pytest.raises(SystemExit) as info:
        main(["--help", *command.split()[1:]])
    assert info.value.code == 0
    entries: dict[str, str] = {}
    flag = None
    for line in capsys.readouterr().out.split("options:", 1)[1].splitlines():
        if re.match(r"^  -", line):
            flag, _, rest = line.strip().partition(" ")
            entries[flag] = rest
        elif flag is not None:
            entries[flag] += " " + line.strip()
    for name, text in entries.items():
        assert text.lower().count("default") <= 1, f"{name}: {text}"
    expected = {
        "train": (("--objective", "sampled"), ("--learning_rate", "1e-06"), ("--max_steps", "100")),
        "sft": (("--learning_rate", "1e-05"), ("--max_steps", "1000"), ("--output_dir", "runs/sft")),
        "train --preset demo": (
            ("--objective", "full"),
            ("--learning_rate", "0.0003"),
            ("--per_device_train_batch_size", "8"),
            ("--output_dir", "runs/opd-demo"),
            ("--max_steps", "200"),
        ),
    }[command]
    for name, default in expected:
        assert f"(default: {default})" in " ".join(entries[name].split()), entries[name]


def test_a_run_ending_inside_the_warm_up_is_warned_about(tmp_path, capsys, tiny_qwen25_checkpoint):
    missing = str(tmp_path / "missing.jsonl")  # stops the command right after the warning
    assert (
        S.main(["--init-tiny", "qwen3_vl", "--train-data", missing, "--max-steps", "3", "--learning-rate", "1e-3"]) == 2
    )
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "python -m videoopd.sft: warning: --max-steps 3 ends inside --warmup-steps 50: the learning "
        "rate rises to 6e-05 and never reaches --learning-rate 0.001"
    )
    good = str(tiny_qwen25_checkpoint)
    assert (
        T.main(
            ["--student", good, "--teacher", good, "--train-data", missing, "--warmup-steps", "10", "--max-steps", "5"]
        )
        == 2
    )
    assert "python -m videoopd.train: warning: --max-steps 5 ends inside --warmup-steps 10" in capsys.readouterr().err
    assert S.main(["--init-tiny", "qwen3_vl", "--train-data", missing, "--max-steps", "50"]) == 2
    assert "warning" not in capsys.readouterr().err  # the peak is reached at the last step


def test_writing_commands_refuse_a_file_where_a_folder_goes(tmp_path, capsys):
    """No traceback: a file given as the output folder of synthetic / tiny is one line, exit 2."""
    from videoopd import synthetic, tiny

    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    for out in (a_file, a_file / "sub"):
        code = synthetic.main(["--out", str(out), "--videos", "1"])
        _one_line_error(capsys, code, "--out", "is a file, not a folder")
        _one_line_error(capsys, tiny.main(["--out", str(out)]), "--out", "is a file, not a folder")
    assert a_file.read_text() == "keep"


def test_synthetic_refuses_events_longer_than_the_video(tmp_path, capsys):
    from videoopd import synthetic

    code = synthetic.main(["--out", str(tmp_path / "o"), "--videos", "1", "--duration", "3", "--max-event", "4"])
    _one_line_error(capsys, code, "--max-event", "is longer than --duration 3")
    assert not (tmp_path / "o").exists()


def test_sft_tiny_sizes_that_do_not_build_are_one_line(tmp_path, capsys, synthetic_dir):
    code = S.main(
        [
            "--init-tiny",
            "qwen3_vl",
            "--tiny-hidden-size",
            "100",
            "--train-data",
            str(synthetic_dir / "annotations.jsonl"),
            "--output-dir",
            str(tmp_path / "run"),
        ]
    )
    _one_line_error(capsys, code, "--tiny-", "multiples of 16")
