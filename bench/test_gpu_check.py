"""bench/gpu_check.sh parses, and bench.gpu_summary reads what its parts leave in OUT (no GPU needed).

The whole flow at tiny sizes on a CPU: ``bash bench/gpu_check.sh --dry-run`` (a few minutes).
"""

import json
import subprocess
from pathlib import Path

from bench.gpu_summary import PART_PREFIX, summary
from bench.report import Row, write_json

BENCH = Path(__file__).resolve().parent


def test_script_parses():
    subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")], check=True)


def _row(kernel, mode, provider, family, ms, fraction=None, status="ok"):
    return Row(
        kind="speed",
        kernel=kernel,
        mode=mode,
        provider=provider,
        family=family,
        tokens=4096,
        vocab=151_936,
        student_dim=4096,
        teacher_dim=8192,
        hidden_dim=None,
        topk=None,
        dtype="bfloat16",
        temperature=1.0,
        status=status,
        median_ms=ms if status == "ok" else None,
        tflops=100.0 if status == "ok" else None,
        peak_fraction=fraction,
        peak_extra_mb=2048.0 if status == "ok" else None,
    )


def test_summary_checks_the_goals(tmp_path):
    (tmp_path / "gpu_check.log").write_text(
        f"noise\n{PART_PREFIX}tests\tok\t80\n{PART_PREFIX}opd-step\ttimed out after 120s (killed)\t130\n"
    )
    (tmp_path / "kernel_tests.log").write_text("....s.F\n==== 1 failed, 5 passed, 1 skipped in 80.0s ====\n")
    rows = [
        _row("fused_reverse_kl", "full", "ours-triton-chunked", "ours", 100.0, 0.62),
        _row("fused_reverse_kl", "full", "ours-triton-fused", "ours", 150.0, 0.41),
        _row("fused_reverse_kl", "full", "liger-fused-linear-jsd", "peer", 250.0),
        _row("fused_reverse_kl", "full", "naive", "naive", 0.0, status="OOM (OutOfMemoryError)"),
        _row("token_logprobs", "forward", "ours-triton", "ours", 10.0, 0.5),
        _row("fused_reverse_kl", "full", "matmul-floor", "floor", 85.0),
        _row("policy_gradient_loss", "full", "ours-torch", "ours", 80.0),
        _row("policy_gradient_loss", "full", "ours-unfused", "ours", 70.0),
        _row("policy_gradient_loss", "full", "naive", "naive", 120.0),
        _row("policy_gradient_loss", "full", "liger-fused-linear-grpo", "peer", 0.0, status="skipped: not installed"),
    ]
    write_json(
        tmp_path / "nvidia-h100-2026-11-26.json",
        rows,
        {"device_name": "NVIDIA H100", "grid": "gpu-check", "dtype": "bfloat16"},
    )
    (tmp_path / "opd_step.json").write_text(
        json.dumps(
            {
                "meta": {
                    "device": "NVIDIA H100",
                    "vocab": 151_936,
                    "student": "width 2048 x 28 layers",
                    "teacher": "width 4096 x 36 layers",
                    "dtype": "bf16",
                    "answer_tokens": 16,
                    "trl": None,
                },
                "rows": [
                    {
                        "provider": "ours",
                        "objective": "full",
                        "status": "ok",
                        "video_tokens_requested": 4096,
                        "video_tokens": 4096,
                        "step_s": 5.0,
                        "rollout_s": 1.0,
                        "teacher_s": 1.0,
                        "student_s": 2.5,
                        "optimizer_s": 0.5,
                        "peak_growth_mib": 40960.0,
                        "mfu": 0.41,
                    },
                    {
                        "provider": "trl-full-logits",
                        "objective": "full",
                        "video_tokens_requested": 16384,
                        "status": "out of memory (OutOfMemoryError: CUDA out of memory)",
                    },
                ],
            }
        )
    )
    text = summary(tmp_path)
    assert "| opd-step | timed out after 120s (killed) | 130 |" in text
    assert "1 failed, 5 passed, 1 skipped in 80.0s" in text
    assert "62% of peak (goal >= 60%): met; 2.50x `liger-fused-linear-jsd` (goal >= 3x): NOT met" in text
    assert "50% of peak (goal >= 65%): NOT met" in text
    assert "`naive` OOM" in text
    assert "ours (full), 4,096 video tokens: step 5.00 s" in text and "MFU 41.0%" in text
    assert "trl-full-logits, 16,384 video tokens: out of memory" in text
    assert "longest video run: ours (full) 4,096" in text
    # the relative goals name the row they judge, not our fastest one where a provider is named
    assert (
        "- fused_reverse_kl full N = 4,096, `ours-triton-chunked` against `matmul-floor`: 0.85x its speed "
        "(goal >= 0.9x): NOT met" in text
    )
    assert "`ours-torch` against `naive`: 1.50x its speed (goal >= 1.25x): met" in text
    assert "`ours-torch` against `liger-fused-linear-grpo`: skipped: not installed" in text


def test_summary_of_a_killed_test_run_counts_what_it_saw(tmp_path):
    (tmp_path / "kernel_tests.log").write_text("..F.s [ 10%]\n...\n")
    assert "so far: 6 passed, 1 failed, 1 skipped" in summary(tmp_path)
