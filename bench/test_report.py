"""The result writers: Liger's CSV columns, a JSON round trip, Markdown rows for skipped and failed cases.

The rows here are made up to exercise the writers; no figure from them is reported anywhere.
"""

import csv
import json

from bench import report
from bench.report import CSV_COLUMNS, Row


def _row(provider, family, tokens, status="ok", **figures):
    return Row(
        kind="speed",
        kernel="fused_reverse_kl",
        mode="full",
        provider=provider,
        family=family,
        tokens=tokens,
        vocab=1000,
        student_dim=8,
        teacher_dim=16,
        hidden_dim=None,
        topk=None,
        dtype="bfloat16",
        temperature=1.0,
        status=status,
        timestamp="2026-01-01 00:00:00",
        **figures,
    )


def _meta():
    return {
        "date": "2026-01-01",
        "timestamp": "2026-01-01 00:00:00",
        "device_name": "Test Device",
        "device_slug": "test-device",
        "peak_tflops": 100.0,
        "grid": "smoke",
        "dtype": "bfloat16",
        "temperature": 1.0,
        "topk": 20,
        "accuracy_shape": {"tokens": 4, "vocab": 1000, "student_dim": 8, "teacher_dim": 16},
        "timing_mode": "test",
        "memory_method": "test",
        "command": "pytest bench/",
        "version": "0.0.0",
        "packages": {"torch": "x"},
        "runs": [],
    }


def test_writers_round_trip_and_keep_failure_rows(tmp_path):
    measured = dict(
        median_ms=2.0,
        p20_ms=1.5,
        p80_ms=3.0,
        rounds=5,
        flops=4 * 10**12,
        tflops=2.0,
        peak_fraction=0.02,
        peak_extra_mb=12.5,
    )
    rows = [
        _row("ours-torch", "ours", 64, **measured),
        _row("naive", "naive", 64, status="OOM (OutOfMemoryError)"),
        _row("ours-triton-chunked", "ours", 64, status="skipped: no CUDA (reason)"),
        Row(
            kind="accuracy",
            kernel="fused_reverse_kl",
            mode="full",
            provider="ours-torch",
            family="ours",
            tokens=4,
            vocab=1000,
            student_dim=8,
            teacher_dim=16,
            hidden_dim=None,
            topk=None,
            dtype="bfloat16",
            temperature=1.0,
            max_abs_error=3e-7,
            grad_max_rel_error=2e-3,
            timestamp="2026-01-01 00:00:00",
        ),
    ]
    written, problems = report.write_all(tmp_path, "test-device-2026-01-01", rows, _meta())
    assert {p.suffix for p in written} >= {".json", ".csv", ".md"}

    back, meta = report.read_json(tmp_path / "test-device-2026-01-01.json")
    assert back == rows and meta["device_name"] == "Test Device"

    with open(tmp_path / "test-device-2026-01-01.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == CSV_COLUMNS
    speed = {(r["kernel_provider"], r["metric_name"]): r for r in table}
    assert float(speed[("ours-torch", "speed")]["y_value_50"]) == 2.0
    assert float(speed[("ours-torch", "throughput")]["y_value_20"]) == 4 * 10**12 / (1.5e9)
    assert float(speed[("ours-torch", "peak_fraction")]["y_value_50"]) == 0.02
    assert speed[("naive", "speed")]["y_value_50"] == ""
    assert json.loads(speed[("naive", "speed")]["extra_benchmark_config_str"])["status"].startswith("OOM")
    assert float(speed[("ours-torch", "grad_max_rel_error")]["y_value_50"]) == 2e-3

    md = (tmp_path / "test-device-2026-01-01.md").read_text()
    assert "| `naive` | OOM |" in md
    assert "| `ours-triton-chunked` | skipped: no CUDA |" in md
    assert "- skipped: no CUDA (reason)" in md
    assert "2 ms [1.5–3]<br>2 TFLOP/s (2%)<br>12.5 MB" in md


def test_a_partial_rerun_replaces_only_the_rows_it_measured():
    first = [_row("ours-torch", "ours", 64, median_ms=2.0), _row("naive", "naive", 64, median_ms=3.0)]
    old_meta = {**_meta(), "runs": [{"command": "pytest bench/"}]}
    rerun = [_row("naive", "naive", 64, median_ms=1.0), _row("naive", "naive", 128, median_ms=5.0)]
    new_meta = {**_meta(), "runs": [{"command": "pytest bench/ --bench-providers naive"}]}
    rows, meta = report.merge_runs(first, old_meta, rerun, new_meta)
    assert [(r.provider, r.tokens, r.median_ms) for r in rows] == [
        ("ours-torch", 64, 2.0),
        ("naive", 64, 1.0),
        ("naive", 128, 5.0),
    ]
    assert [run["command"] for run in meta["runs"]] == ["pytest bench/", "pytest bench/ --bench-providers naive"]

    other_dtype = {**new_meta, "dtype": "float32"}
    rows, meta = report.merge_runs(first, old_meta, rerun, other_dtype)
    assert rows == rerun and meta is other_dtype
