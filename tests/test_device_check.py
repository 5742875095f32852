"""bench/device_check.sh's CPU dry run (the GPU check's steps at smoke size) passes and writes one
JSON; marked slow (about half a minute: it runs the cuda-marked tests, the cost constants and the
smoke bench in subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_device_check_dry_run_passes_and_writes_one_json(tmp_path):
    out = tmp_path / "device_check.json"
    proc = subprocess.run(["bash", str(ROOT / "bench" / "device_check.sh"), "--cpu", "--out",
                           str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PY": sys.executable})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert res["mode"] == "cpu" and res["ok"]
    assert set(res["steps"]) == {"tests", "costs", "bench"}
    counts = res["steps"]["tests"]["counts"]
    assert counts["tests"] > 0 and counts["failures"] == counts["errors"] == counts["skipped"] == 0
    assert "suggested_chunk_costs" in res["steps"]["costs"]["result"]
    assert res["steps"]["bench"]["result"]["results"]


def test_device_check_without_cuda_is_refused_in_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    proc = subprocess.run(["bash", str(ROOT / "bench" / "device_check.sh")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PY": sys.executable})
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "CUDA" in proc.stderr
