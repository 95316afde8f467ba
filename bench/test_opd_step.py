"""``python -m bench.opd_step``: its grid, its reports, and one tiny run of every provider (CPU)."""

import json
from dataclasses import asdict

import pytest

from bench import opd_step
from bench.opd_step import PRESETS, ModelShape, StepRow, merge_reports, parse_args, run_grid, step_flops


def test_presets_and_flags():
    grid, _ = parse_args(["--preset", "cpu"])
    assert (grid.student.width, grid.student.layers, grid.teacher.width, grid.vocab) == (256, 2, 512, 151_936)
    assert grid.video_tokens == (1024, 4096, 8192) and grid.dtype == "fp32" and grid.answer_tokens == 16
    gpu = PRESETS["gpu"]
    assert (gpu.student.width, gpu.student.layers, gpu.student.tied) == (2048, 28, True)  # Qwen3-VL-2B
    assert (gpu.teacher.width, gpu.teacher.layers, gpu.teacher.tied) == (4096, 36, False)  # Qwen3-VL-8B
    grid, _ = parse_args(
        [
            "--preset",
            "cpu-smoke",
            "--width",
            "128",
            "--video-tokens",
            "32,64",
            "--providers",
            "ours,ours-vision-reencoded,trl-chunked",
            "--objectives",
            "full",
        ]
    )
    assert grid.student.width == 128 and grid.video_tokens == (32, 64)
    assert grid.rows() == [("ours", "full"), ("ours-vision-reencoded", "full"), ("trl-chunked", "full")]
    assert "ours-vision-reencoded" not in PRESETS["cpu"].providers
    for bad in (["--providers", "liger"], ["--video-tokens", "0"], ["--steps", "0"], ["--width", "100"]):
        with pytest.raises((SystemExit, ValueError)):
            parse_args(["--preset", "cpu-smoke", *bad])


def test_mrope_sections_fill_the_rotary_pairs():
    for width in (64, 256, 2048):
        shape = ModelShape.of_width(width, 1, 64, 1)
        assert sum(shape.mrope_section) == shape.head_dim // 2
    assert ModelShape.of_width(2048, 1, 64, 1).mrope_section == (24, 20, 20)  # Qwen3-VL's own


def test_step_flops_count_what_each_provider_computes():
    grid = PRESETS["gpu"]
    ours = step_flops(grid, 16_000, 16, 15_600, "ours")
    full_logits = step_flops(grid, 16_000, 16, 15_600, "trl-full-logits")
    # the full-logits recipe adds both heads over every position: 2 * V * (D_t + 3 D_s) FLOPs a token
    extra = 2 * grid.vocab * (grid.teacher.width + 3 * grid.student.width) * (16_016 - 16)
    vision = 2 * grid.student.vision_params() * 4 * 15_600  # the re-encoded video
    assert full_logits - ours == pytest.approx(extra + vision, rel=1e-9)
    assert step_flops(grid, 32_000, 16, 31_600, "ours") > 2 * ours  # attention grows faster than the tokens


def _row(provider, n, step_s, status="ok"):
    return StepRow(provider, "full", "impl", n, status=status, video_tokens=n, step_s=step_s)


def test_merge_replaces_the_rows_of_the_same_provider_and_length():
    meta = {k: 1 for k in ("student", "teacher", "vocab", "dtype", "batch", "answer_tokens", "steps")}
    old = {
        "meta": {**meta, "command": "a", "commit": "c1", "date": "d"},
        "rows": [asdict(_row("ours", 64, 1.0)), asdict(_row("trl-chunked", 64, 2.0))],
    }
    rows, merged = merge_reports(
        old, [_row("ours", 64, 0.5), _row("ours", 128, 0.7)], {**meta, "command": "b", "commit": "c2", "date": "d"}
    )
    assert [(r.provider, r.video_tokens, r.step_s) for r in rows] == [
        ("ours", 64, 0.5),
        ("trl-chunked", 64, 2.0),
        ("ours", 128, 0.7),
    ]
    assert merged["commit"] == "c1, c2" and merged["command"] == "a ; b"
    with pytest.raises(SystemExit, match="vocab"):
        merge_reports(old, [], {**meta, "vocab": 2, "command": "b", "commit": "c2", "date": "d"})


@pytest.mark.slow
def test_every_provider_runs_a_tiny_step(tmp_path):
    grid, _ = parse_args(["--preset", "cpu-smoke", "--video-tokens", "64", "--steps", "2"])
    rows = run_grid(grid, "cpu", budget_s=None, log=lambda line: None)
    assert [(r.provider, r.objective) for r in rows] == grid.rows()
    by = {(r.provider, r.objective): r for r in rows}
    for row in rows:
        assert row.status == "ok", row
        assert row.video_tokens == 64 and row.answer_tokens >= 1 and row.steps_measured == 1
        assert row.step_s == pytest.approx(row.rollout_s + row.teacher_s + row.student_s + row.optimizer_s)
        assert row.peak_growth_mib > 0 and row.loss is not None
    assert "trl" in by["trl-full-logits", "full"].loss_impl
    # the [B, L, V] logits of both models: the full-logits recipe's step grows memory the most
    assert by["trl-full-logits", "full"].peak_growth_mib > 2 * by["ours", "full"].peak_growth_mib
    paths = opd_step.write_reports(
        rows,
        {
            "device": "CPU",
            "date": "today",
            "command": "c",
            "commit": "x",
            "torch": "t",
            "transformers": "t",
            "trl": None,
            "student": "s",
            "teacher": "t",
            "vocab": 1,
            "dtype": "fp32",
            "batch": 1,
            "answer_tokens": 8,
            "steps": 2,
        },
        tmp_path,
        "grid",
    )
    assert {p.suffix for p in paths} >= {".json", ".csv", ".md"}
    assert len(json.loads((tmp_path / "grid.json").read_text())["rows"]) == len(rows)
    assert "| trl-full-logits | full | 64 |" in (tmp_path / "grid.md").read_text()
