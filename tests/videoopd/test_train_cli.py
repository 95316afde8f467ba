"""videoopd.train: config (YAML, preset, overrides, saved), bad inputs, incompatible pairs, demo smoke."""

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from videoopd import train as T
from videoopd.qwen.models import check_pair
from videoopd.qwen.tiny import build_tiny_model, build_tiny_tokenizer, save_tiny_checkpoint
from videoopd.training.config import PRESET_DIR, RENAMED, ConfigError, save_config

ROOT = Path(__file__).resolve().parents[2]


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        T.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(T.TrainConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name
    assert "--preset" in text and "--config" in text and "--teacher-device" in text


def test_yaml_then_override_then_saved(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(
        yaml.safe_dump(
            {"learning_rate": 3e-5, "max-new-tokens": 32, "objective": "full", "gradient_accumulation_steps": 4}
        )
    )
    cfg = T.resolve_config(["--config", str(cfg_file), "--learning-rate", "2e-5", "--top-p", "0.95"])
    assert cfg.learning_rate == 2e-5 and cfg.max_new_tokens == 32 and cfg.objective == "full"
    assert cfg.gradient_accumulation_steps == 4 and cfg.top_p == 0.95 and cfg.temperature == 1.0
    saved = yaml.safe_load(save_config(cfg, tmp_path / "out").read_text())
    assert saved["learning_rate"] == 2e-5 and saved["objective"] == "full" and saved["max_new_tokens"] == 32
    assert T.TrainConfig(**{k: v for k, v in saved.items() if k != "preset"}) == cfg
    replayed = T.resolve_config(["--config", str(tmp_path / "out" / "config.yaml")])  # the saved file replays it
    assert replayed == cfg and replayed.preset == cfg.preset == "demo"


@pytest.mark.parametrize("models", [[], ["--student", "s", "--teacher", "t"]], ids=["demo", "model-paths"])
def test_precedence_defaults_preset_yaml_flags(tmp_path, models):
    """One rule everywhere: field defaults < preset < YAML < flags, in demo mode (the demo preset,
    which no --student resolves to) as with model paths (--preset video-opd)."""
    preset = "demo" if not models else "video-opd"
    cfg_file = tmp_path / "y.yaml"
    cfg_file.write_text("learning_rate: 1.0e-4\nper_device_train_batch_size: 2\nseed: 5\n")
    preset_flag = [] if not models else ["--preset", preset]
    cfg = T.resolve_config([*models, *preset_flag, "--config", str(cfg_file), "--seed", "7"])
    assert cfg.preset == preset
    assert cfg.learning_rate == 1e-4 and cfg.per_device_train_batch_size == 2  # YAML over the preset
    assert cfg.seed == 7  # the flag over YAML
    untouched = {"demo": ("eval_steps", 50), "video-opd": ("gradient_accumulation_steps", 32)}[preset]
    assert getattr(cfg, untouched[0]) == untouched[1]  # the preset over the field default
    preset_file = yaml.safe_load((PRESET_DIR / f"{preset}.yaml").read_text())
    assert T.resolve_config([*models, *preset_flag]).learning_rate == preset_file["learning_rate"]
    assert T.TrainConfig().learning_rate == 1e-6 and T.TrainConfig().per_device_train_batch_size == 1  # field defaults


def test_demo_config_saved_is_what_ran(tmp_path):
    """The bug this guards against: in demo mode, values from --config YAML were replaced by the
    demo's after parsing; the saved config.yaml then disagreed with the YAML."""
    cfg_file = tmp_path / "y.yaml"
    cfg_file.write_text("learning_rate: 1.0e-4\nper_device_train_batch_size: 2\n")
    out = tmp_path / "runs" / "y"
    assert (
        T.main(
            [
                "--config",
                str(cfg_file),
                "--max-steps",
                "1",
                "--demo-videos",
                "4",
                "--eval-steps",
                "0",
                "--eval-teacher",
                "false",
                "--eval-on-start",
                "false",
                "--no-progress",
                "--output-dir",
                str(out),
                "--report-to",
                "tensorboard",
            ]
        )
        == 0
    )
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["learning_rate"] == 1e-4 and saved["per_device_train_batch_size"] == 2 and saved["preset"] == "demo"
    assert saved["reduction"] == "sequence_sum" and saved["num_generations"] == 1  # auto resolved when parsed
    # --report-to: the rows reach accelerate's TensorBoard tracker too
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert {"loss", "reverse_kl", "eval/mIoU"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [1]


def test_report_to_names_only_trackers_that_are_there(tmp_path, capsys, monkeypatch):
    with pytest.raises(ConfigError, match="--report-to must be none, all or names from"):
        T.resolve_config(["--report-to", "tensorbored"])
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    assert T.main(["--report-to", "wandb", "--output-dir", str(tmp_path / "run")]) == 2
    assert "wandb is not installed here" in capsys.readouterr().err


def test_preset_video_opd(tmp_path):
    cfg = T.resolve_config(["--preset", "video-opd", "--student", "s", "--teacher", "t", "--learning-rate", "2e-6"])
    assert (
        cfg.temperature,
        cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps,
        cfg.fps,
        cfg.max_frames,
    ) == (0.9, 32, 2.0, 768)
    assert cfg.learning_rate == 2e-6 and cfg.objective == "sampled" and cfg.reduction == "sequence_sum"
    assert not cfg.train_vision
    # TimeLens's budget: 14,336 visual tokens a video, 64 a frame at least (Qwen3-VL's 32 x 32 tokens)
    assert (cfg.total_pixels // 32**2, cfg.min_pixels // 32**2) == (14336, 64)
    with pytest.raises(ConfigError, match="needs --student and --teacher"):
        T.resolve_config(["--preset", "video-opd"])


def test_bad_yaml_key(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("learning_rat: 1.0\n")
    with pytest.raises(ConfigError, match="unknown option 'learning_rat'"):
        T.resolve_config(["--config", str(cfg_file)])


@pytest.mark.parametrize("old, new", [(old, new[0]) for old, new in RENAMED.items()])
def test_old_names_are_refused_with_the_new_one(tmp_path, old, new):
    """An option renamed to its HF Trainer / TRL name: the old flag or YAML key names the new one
    (one line, exit 2) instead of being taken for another option or silently dropped."""
    flag, renamed = "--" + old.replace("_", "-"), "--" + new.replace("_", "-")
    with pytest.raises(ConfigError, match=f"^{flag} was renamed {renamed} "):
        T.resolve_config([flag, "1"])
    with pytest.raises(ConfigError, match=f"^{flag} was renamed {renamed} "):
        T.resolve_config([f"--{old}=1"])
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(f"{old}: 1\n")
    with pytest.raises(ConfigError, match=f"run.yaml: {flag} was renamed {renamed} "):
        T.resolve_config(["--config", str(cfg_file)])


def test_old_batch_size_of_eval_names_its_own_new_flag(capsys):
    from videoopd import eval as E

    assert E.main(["--model", "m", "--data", "d", "--batch-size", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch-size was renamed --per-device-eval-batch-size" in err


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return save_tiny_checkpoint(root / "s", seed=1), save_tiny_checkpoint(root / "t", seed=2, hidden_size=64)


def _run(capsys, argv):
    code = T.main(argv)
    return code, capsys.readouterr().err


def test_missing_model_path(capsys, tmp_path, checkpoints):
    code, err = _run(
        capsys, ["--student", str(tmp_path / "nope"), "--teacher", str(checkpoints[1]), "--train-data", "x"]
    )
    assert code == 2 and "--student: model folder not found" in err
    code, err = _run(capsys, ["--student", str(checkpoints[0])])
    assert code == 2 and "give both --student and --teacher" in err


def test_missing_videos_and_empty_pool(capsys, tmp_path, checkpoints):
    s, t = (str(c) for c in checkpoints)
    ann = tmp_path / "a.jsonl"
    ann.write_text(json.dumps({"video": "gone.mp4", "query": "q", "start": 1, "end": 2, "duration": 5}) + "\n")
    code, err = _run(capsys, ["--student", s, "--teacher", t, "--train-data", str(ann)])
    assert code == 2 and "missing videos" in err and "gone.mp4" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, err = _run(capsys, ["--student", s, "--teacher", t, "--train-data", str(empty)])
    assert code == 2 and "the file is empty" in err
    code, err = _run(capsys, ["--student", s, "--teacher", t, "--train-data", str(empty), "--format", "jsonl"])
    assert code == 2 and "empty pool" in err
    code, err = _run(capsys, ["--student", s, "--teacher", t, "--train-data", str(tmp_path / "none.jsonl")])
    assert code == 2 and "annotation file not found" in err
    code, err = _run(capsys, ["--student", s, "--teacher", t])
    assert code == 2 and "--train-data is required" in err


def test_incompatible_pairs():
    tok = build_tiny_tokenizer()
    student = build_tiny_model(tokenizer=tok, hidden_size=32)
    other = build_tiny_tokenizer()
    other.add_tokens(["<extra>"])
    with pytest.raises(ValueError, match="tokenizers differ"):
        check_pair(student, build_tiny_model(tokenizer=tok), tok, other)
    small = build_tiny_model(tokenizer=tok)
    small.resize_token_embeddings(len(tok) - 10, mean_resizing=False)
    with pytest.raises(ValueError, match="teacher LM head has .* smaller than the student vocabulary"):
        check_pair(student, small, tok, tok)
    padded = build_tiny_model(tokenizer=tok)
    padded.resize_token_embeddings(len(tok) + 64, mean_resizing=False)
    check_pair(student, padded, tok, tok)  # a larger, padded head is fine


def test_train_with_model_paths(capsys, tmp_path, checkpoints, synthetic_dir, monkeypatch):
    from videoopd.training import distributed

    left = []  # the command leaves the launch's process group once it has finished
    monkeypatch.setattr(distributed, "leave_process_group", lambda: left.append(True))
    s, t = (str(c) for c in checkpoints)
    ann = str(synthetic_dir / "annotations.jsonl")
    out = tmp_path / "run"
    code = T.main(
        [
            "--student",
            s,
            "--teacher",
            t,
            "--train-data",
            ann,
            "--eval-data",
            ann,
            "--eval-limit",
            "1",
            "--max-steps",
            "2",
            "--gradient-accumulation-steps",
            "2",
            "--learning-rate",
            "1e-3",
            "--max-new-tokens",
            "8",
            "--min-pixels",
            str(56 * 56),
            "--max-pixels",
            str(64 * 96),
            "--objective",
            "full",
            "--eval-teacher",
            "true",
            "--output-dir",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert left == [True]
    assert (out / "eval_teacher.json").is_file() and (out / "eval_step0.json").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and [r["step"] for r in rows if "eval/mIoU" in r] == [0, 2]
    for row in steps:  # where a step goes, and each process's peak memory
        phases = [row[f"time/{phase}_s"] for phase in ("rollout", "teacher", "student", "optimizer")]
        assert all(t > 0 for t in phases) and sum(phases) <= row["step_time_s"]
        assert row["processes"] == 1 and len(row["peak_mem_mb_per_rank"]) == 1 and row["peak_mem_mb"] > 10
    assert all(r["loss"] == r["loss"] and r["reverse_kl"] >= -1e-4 for r in steps)  # exact KL >= 0
    assert yaml.safe_load((out / "config.yaml").read_text())["objective"] == "full"
    assert (out / "final" / "config.json").is_file()


def file_bytes(folder) -> dict:
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_demo_smoke(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --output-dir, as the default one is
    out = tmp_path / "runs" / "demo"
    code = T.main(
        ["--output-dir", "runs/demo", "--max-steps", "2", "--demo-videos", "4", "--eval-steps", "1", "--no-progress"]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "held-out mIoU: teacher" in text and "student before" in text and "-> after" in text
    assert "reverse KL(student || teacher) per answer token" in text and "steps    1-1" in text
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert [r["step"] for r in rows if "eval/mIoU" in r] == [0, 1, 2]
    summary = json.loads((out / "demo_summary.json").read_text())
    assert len(summary["reverse_kl"]) == 2 and summary["student_after"] == summary["student_evals"]["2"]
    assert yaml.safe_load((out / "config.yaml").read_text())["max_pixels"] == 32 * 64
    # the held-out split is a file, and the printed command scores the final student on it as the demo did
    assert len((out / "demo_data" / "heldout.jsonl").read_text().splitlines()) == summary["student_after"]["total"]
    command = text.split("evaluate the final student on the held-out split:\n", 1)[1].splitlines()[0].split()
    assert command[:3] == ["python", "-m", "videoopd.eval"]
    import subprocess
    import sys

    # pasted as printed, in the folder the demo ran in
    run = subprocess.run(
        [sys.executable, *command[1:], "--no-progress", "--dataloader-num-workers", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    # the run's report: summary.json (every step row, the evaluations) and its curves
    report = json.loads((out / "summary.json").read_text())
    assert [r["step"] for r in report["steps"]] == [1, 2] and set(report["evals"]) == {"0", "1", "2"}
    assert report["teacher_eval"]["mIoU"] == summary["teacher"]["mIoU"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same command again does not replace the finished run
    kept = file_bytes(out)
    assert T.main(["--output-dir", "runs/demo", "--max-steps", "2", "--demo-videos", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds a finished run that saved no checkpoint" in err and file_bytes(out) == kept
    assert "--resume-from-checkpoint auto" not in err and "--overwrite" in err
    # nor does --resume auto, which has no checkpoint to resume (it used to start again from step 0)
    assert (
        T.main(
            [
                "--output-dir",
                "runs/demo",
                "--max-steps",
                "2",
                "--demo-videos",
                "4",
                "--no-progress",
                "--resume-from-checkpoint",
                "auto",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        "--resume-from-checkpoint auto: --output-dir runs/demo holds a finished run that saved no checkpoint"
    ) in err, err
    assert file_bytes(out) == kept
    again = json.loads((out / "final_heldout.predictions.metrics.json").read_text())["overall"]
    assert again["mIoU"] == summary["student_after"]["mIoU"] and again["parsed"] == summary["student_after"]["parsed"]


def test_sharded_teacher_needs_an_fsdp2_launch(capsys, tmp_path, checkpoints, synthetic_dir):
    s, t = (str(c) for c in checkpoints)
    code = T.main(
        [
            "--student",
            s,
            "--teacher",
            t,
            "--train-data",
            str(synthetic_dir / "annotations.jsonl"),
            "--teacher-placement",
            "shard",
            "--max-steps",
            "1",
            "--output-dir",
            str(tmp_path / "run"),
        ]
    )
    assert code == 2
    assert "a sharded teacher needs an FSDP2 launch" in capsys.readouterr().err


def test_unsupported_engines_are_named():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from videoopd.training.distributed import unsupported_engine

    deepspeed = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, is_fsdp2=False)
    fsdp1 = SimpleNamespace(distributed_type=DistributedType.FSDP, is_fsdp2=False)
    assert "DeepSpeed is not supported" in unsupported_engine(deepspeed)
    assert "fsdp_version: 2" in unsupported_engine(fsdp1)
    assert unsupported_engine(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU, is_fsdp2=False)) is None


def test_attention_choice_on_cpu():
    from videoopd.qwen.models import attn_implementation_for

    assert attn_implementation_for("cpu") == "sdpa"


@pytest.mark.parametrize(
    "text, message",
    [
        ('train_vision: "false"\n', None),
        ("train_vision: maybe\n", "--train-vision must be true or false, got 'maybe'"),
        ("per_device_train_batch_size: 2.5\n", "run.yaml: --per-device-train-batch-size must be an integer, got 2.5"),
        ("per_device_train_batch_size: true\n", "--per-device-train-batch-size must be an integer, got True"),
        ("learning_rate: [1]\n", "--learning-rate must be a number"),
        ("learning_rate: inf\n", "--learning-rate must be > 0 and finite, got inf"),
        ("learning_rate: 1e-5\nmax_steps: 3\n  bad: indentation\n", "run.yaml:3: YAML syntax error"),
    ],
)
def test_yaml_values_are_typed_like_flags(tmp_path, text, message):
    """YAML's own typing is not trusted: a quoted boolean is parsed, not truthy; a float for an
    integer is an error, not a truncation; a syntax error names the file and line."""
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(text)
    if message is None:
        assert T.resolve_config(["--config", str(cfg_file)]).train_vision is False
    else:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            T.resolve_config(["--config", str(cfg_file)])


def test_boolean_flag_alone_means_true():
    cfg = T.resolve_config(["--eval-teacher", "--overwrite", "--save-best", "false"])
    assert cfg.eval_teacher is True and cfg.overwrite is True and cfg.save_best is False


def test_corrupt_videos_are_reported_and_a_pool_of_none_stops(capsys, tmp_path, checkpoints, synthetic_dir):
    """A video that does not decode is left out of its batch, named once and counted in the step
    rows; when no video of the pool decodes, the run stops with one line instead of looping."""
    import shutil

    s, t = (str(c) for c in checkpoints)
    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    videos = sorted((data / "videos").glob("*.mp4"))
    videos[0].write_bytes(b"not a video at all")
    base = [
        "--student",
        s,
        "--teacher",
        t,
        "--train-data",
        str(data / "annotations.jsonl"),
        "--max-steps",
        "3",
        "--per-device-train-batch-size",
        "2",
        "--max-new-tokens",
        "4",
        "--min-pixels",
        str(56 * 56),
        "--max-pixels",
        str(64 * 96),
        "--no-progress",
    ]
    assert T.main([*base, "--output-dir", str(tmp_path / "some")]) == 0
    captured = capsys.readouterr()
    assert videos[0].name in captured.out + captured.err
    rows = [json.loads(line) for line in (tmp_path / "some" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3] and rows[-1]["skipped_videos"] >= 1
    for video in videos:
        video.write_bytes(b"garbage")
    assert T.main([*base, "--output-dir", str(tmp_path / "none")]) == 2
    assert "no decodable video in a whole epoch" in capsys.readouterr().err


def test_max_steps_given_is_never_replaced_by_the_curriculum(capsys):
    """The issue's repro: ``--config configs/train.yaml --max-steps 2`` ran the curriculum's 237
    steps. A --max-steps given (flag or YAML) that differs from rounds x steps per round is now
    refused with both named; one from the preset or the default is the curriculum's to set."""
    from videoopd.training.curriculum import check_max_steps

    train_yaml = str(ROOT / "configs" / "train.yaml")
    cfg = T.resolve_config(["--config", train_yaml, "--max-steps", "2"])
    assert cfg.rounds == 3 and "max_steps" in cfg.given and "rounds" not in cfg.given
    with pytest.raises(ConfigError, match=r"--max-steps 2 contradicts the TVDF curriculum's 3 rounds x 79 steps = 237"):
        check_max_steps(cfg, 79)  # what the run checks once it knows its process count
    check_max_steps(T.resolve_config(["--config", train_yaml]), 79)  # not given: the curriculum sets it
    check_max_steps(T.resolve_config(["--config", train_yaml, "--max-steps", "237"]), 79)  # given and equal
    # known when parsed (--steps-per-round given): refused before any work, one line, exit 2
    assert T.main(["--config", train_yaml, "--max-steps", "2", "--steps-per-round", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-steps 2 contradicts the TVDF curriculum's 3 rounds x 5 steps = 15" in err


def test_presets_are_the_yaml_files():
    """One source per preset: videoopd/presets/NAME.yaml is what --preset NAME applies, and
    configs/train.yaml names its preset instead of repeating it."""
    from videoopd.demo.teacher import DEMO_PIXELS
    from videoopd.training.config import load_preset, preset_names

    assert set(preset_names()) == {"demo", "video-opd"}
    for name in preset_names():
        cfg = T.resolve_config(["--preset", name] + (["--student", "s", "--teacher", "t"] if name != "demo" else []))
        for key, value in load_preset(name, T.TrainConfig).items():
            assert getattr(cfg, key) == value, (name, key)
    demo = load_preset("demo", T.TrainConfig)
    assert demo["min_pixels"] == demo["max_pixels"] == DEMO_PIXELS  # the frames the demo models learnt on
    with pytest.raises(ConfigError, match=r"unknown preset 'paper'; choose from \['demo', 'video-opd'\]"):
        T.resolve_config(["--preset", "paper"])
    assert T.resolve_config(["--config", str(ROOT / "configs" / "train.yaml")]).preset == "video-opd"


def test_presets_are_installed_with_the_package():
    """The demo (no --student) and --preset read them: a wheel has no repository beside it, so they
    live in the package and its package data names them."""
    import videoopd

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    package = Path(videoopd.__file__).resolve().parent
    assert PRESET_DIR.parent == package and sorted(PRESET_DIR.glob("*.yaml"))
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["videoopd"]
    assert all(any(f.relative_to(package).match(pattern) for pattern in data) for f in PRESET_DIR.glob("*.yaml"))


def test_help_is_grouped_and_shows_the_resolved_defaults(capsys):
    with pytest.raises(SystemExit):
        T.main(["--preset", "video-opd", "--help"])
    text = capsys.readouterr().out
    sections = [line for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert {"data:", "optimisation:", "LoRA (peft):", "TVDF curriculum:", "GRPO:"} <= set(sections)
    assert "--learning_rate LEARNING_RATE, --learning-rate LEARNING_RATE" in text
    entry = text.split("--gradient-accumulation-steps GRADIENT_ACCUMULATION_STEPS", 1)[1].split("\n  --", 1)[0]
    assert "(default: 32)" in " ".join(entry.split())  # the preset's value, not the field's 1


def test_teacher_lists_are_parsed_and_bad_ones_refused(tmp_path):
    def cfg(*flags):
        return T.resolve_config(["--student", "s", "--output-dir", str(tmp_path / "r"), *flags])

    assert cfg("--teacher", "ckpt/t").teachers() == {"teacher": "ckpt/t"}
    assert cfg("--teacher", "/runs/lr=1e-5/final").teachers() == {"teacher": "/runs/lr=1e-5/final"}
    two = cfg("--teacher", "small=ckpt/a, large=ckpt/b", "--teacher-by-source", "web=large")
    assert two.teachers() == {"small": "ckpt/a", "large": "ckpt/b"}
    assert two.teachers_by_source() == {"web": "large"}
    repeated = cfg("--teacher", "small=ckpt/a", "--teacher-device", "cpu", "--teacher=large=ckpt/b")
    assert repeated.teachers() == {"small": "ckpt/a", "large": "ckpt/b"} and repeated.teacher_device == "cpu"
    for flags, message in [
        (("--teacher", "a=x,b"), "--teacher: expected NAME=VALUE"),
        (("--teacher", "a=x,a=y"), "'a' is given twice"),
        (("--teacher", "a=x,b=y", "--teacher-by-source", "web=c"), "does not give"),
        (("--teacher", "a=x,b=y", "--eval-teacher", "true"), "take one --teacher"),
    ]:
        with pytest.raises(ConfigError, match=message):
            cfg(*flags)


def _two_teachers(tmp_path, checkpoints, synthetic_dir):
    """(flags of a 2-step run with two teachers, hidden 64 and 96, its data rows, their file):
    row 1 goes to "large" by its source, row 2 by its field, the others to the first, "small"."""
    s, small = (str(c) for c in checkpoints)
    large = str(save_tiny_checkpoint(tmp_path / "large", seed=3, hidden_size=96))
    lines = (synthetic_dir / "annotations.jsonl").read_text().splitlines()
    rows = []
    for i, line in enumerate(lines[:4]):
        row = json.loads(line)
        row["video"] = str(synthetic_dir / row["video"])
        row["source"] = "long" if i == 1 else "short"
        if i == 2:
            row["teacher"] = "large"
        rows.append(row)
    ann = tmp_path / "train.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
    flags = [
        "--student",
        s,
        "--teacher",
        f"small={small},large={large}",
        "--teacher-by-source",
        "long=large",
        "--train-data",
        str(ann),
        "--max-steps",
        "2",
        "--per-device-train-batch-size",
        "2",
        "--max-new-tokens",
        "6",
        "--min-pixels",
        str(56 * 56),
        "--max-pixels",
        str(64 * 96),
        "--objective",
        "full",
        "--eval-steps",
        "0",
        "--no-progress",
        "--save-final",
        "false",
    ]
    return flags, rows, ann


def _step_rows(out):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_two_teachers_of_different_sizes(capsys, tmp_path, checkpoints, synthetic_dir):
    """A run with two teachers (hidden 64 and 96): the records go to the teacher their data names
    (field, else source, else the first), the step rows have each teacher's metrics, and a record
    naming no teacher of the run stops it with its file and line."""
    base, rows, ann = _two_teachers(tmp_path, checkpoints, synthetic_dir)
    out = tmp_path / "run"
    code = T.main([*base, "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err
    steps = _step_rows(out)
    assert [r["step"] for r in steps] == [1, 2]
    tokens = sum(r["teacher/small/answer_tokens"] + r["teacher/large/answer_tokens"] for r in steps)
    assert tokens == sum(r["answer_tokens"] for r in steps) > 0
    for name in ("small", "large"):  # both teachers scored some rows
        assert sum(r[f"teacher/{name}/answer_tokens"] for r in steps) > 0
    assert all(r[f"teacher/{n}/reverse_kl"] >= -1e-4 for r in steps for n in ("small", "large"))
    rows[3]["teacher"] = "huge"
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, err = _run(capsys, [*base, "--output-dir", str(tmp_path / "bad")])
    assert code == 2 and f"{ann}, line 4: record" in err and "'huge'" in err


@pytest.mark.slow
def test_two_teachers_as_services_step_like_colocated_ones(capsys, tmp_path, checkpoints, synthetic_dir):
    """The same two-teacher run with a service per teacher (a local Ray cluster of 2 CPUs):
    the same losses and per-teacher metrics as with the teachers in this process."""
    ray = pytest.importorskip("ray")
    base, _, _ = _two_teachers(tmp_path, checkpoints, synthetic_dir)
    assert T.main([*base, "--output-dir", str(tmp_path / "colocated")]) == 0, capsys.readouterr().err
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        code = T.main(
            [
                *base,
                "--output-dir",
                str(tmp_path / "service"),
                "--teacher-placement",
                "service",
                "--teacher-replica-cpus",
                "1",
                "--teacher-service-name",
                "two-teachers",
            ]
        )
        assert code == 0, capsys.readouterr().err
    finally:
        ray.shutdown()
    colocated, service = _step_rows(tmp_path / "colocated"), _step_rows(tmp_path / "service")
    for key in ("loss", "reverse_kl", "teacher/small/reverse_kl", "teacher/large/reverse_kl"):
        assert [r[key] for r in service] == pytest.approx([r[key] for r in colocated], rel=1e-5), key
    assert [r["teacher/large/answer_tokens"] for r in service] == [r["teacher/large/answer_tokens"] for r in colocated]
    assert all(r["teacher_bytes"] > 0 for r in service)  # the scores came from the services
