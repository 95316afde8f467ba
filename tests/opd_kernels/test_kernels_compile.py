"""Every shipped Triton configuration compiles ahead of time for sm_80 and sm_90, without spills.

Runs `python -m opd_kernels.report --json` in a clean process: under TRITON_INTERPRET
triton.jit builds no compilable kernels.
"""

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def report():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "opd_kernels.report", "--json"], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.stdout, f"report printed nothing; stderr:\n{proc.stderr[-3000:]}"
    data = json.loads(proc.stdout)
    data["returncode"] = proc.returncode
    return data


def test_every_configuration_compiles_for_ampere_and_hopper(report):
    results = report["results"]
    assert {r["target"] for r in results} == {"sm_80", "sm_90"}
    failed = [f"{r['name']} {r['target']}: {r['error']}" for r in results if not r["ok"]]
    assert not failed, "\n".join(failed)


def test_no_spills_and_tensor_cores_on_16_bit_dots(report):
    assert report["problems"] == [], "\n".join(report["problems"])
    assert report["returncode"] == 0
    for r in report["results"]:
        if r["expects_tensor_cores"]:
            assert r["tensor_core_instructions"] > 0, f"{r['name']} {r['target']}: no tensor cores"
        if r["expects_tensor_cores"] and "fused" in r["name"]:
            # the GEMM-shaped kernels must use Hopper's warpgroup MMA, not the Ampere path
            want = "HGMMA" if r["target"] == "sm_90" else "HMMA"
            assert r["tensor_core_kind"] == want, f"{r['name']} {r['target']}: {r['tensor_core_kind']!r}"
    assert any(r["expects_tensor_cores"] for r in report["results"])
