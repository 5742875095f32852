"""The tracking benchmarks' own measuring: per-decile costs, CPU from /proc, the store-growth run."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import bench_tracking_load as load  # noqa: E402


def test_the_server_tree_and_its_cpu_time_are_read_from_proc():
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\n"
                             "while time.time() < t + 30: pass"])
    try:
        tree = load._tree(load.os.getpid())
        assert busy.pid in tree and load.os.getpid() in tree
        first = load._cpu_s([busy.pid])
        time.sleep(0.6)
        assert load._cpu_s([busy.pid]) > first  # it spins: its CPU seconds grow
        assert load._cpu_s([busy.pid, 2**22 + 7]) >= first  # a gone process counts 0
    finally:
        busy.kill()
        busy.wait()


def test_first_last_reports_deciles_and_the_cpu_used_per_trial():
    ids = [f"t{i:02d}" for i in range(20)]
    spans = {t: [float(i), float(i) + 0.5] for i, t in enumerate(ids)}
    per_trial = {t: (0.1 if i < 10 else 0.3, 0.05) for i, t in enumerate(ids)}  # wall, cpu (s)
    samples = {t: (1.0 + i, 0.2 * i, 0.01 * i) for i, t in enumerate(ids)}  # load, driver, server
    got = load._first_last(per_trial, spans, samples, n=5)
    assert got["median_ms_by_decile"] == [100.0] * 5 + [300.0] * 5
    assert got["median_cpu_ms_by_decile"] == [50.0] * 10
    assert got["last_over_first_median"] == 3.0
    assert got["load_by_decile"] == [1.5 + 2 * d for d in range(10)]
    assert got["driver_cpu_ms_per_trial_by_decile"] == [200.0] * 10
    assert got["server_cpu_ms_per_trial_by_decile"] == [10.0] * 10


def test_store_growth_bench_logs_every_run_and_times_every_call(tmp_path):
    out = tmp_path / "growth.json"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_store_growth.py"), "--runs", "10",
                           "--server", "none", "--out", str(out)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (r,) = json.loads(out.read_text())["runs"]
    assert r["stored_child_runs"] == 10 and len(r["per_run_median_ms_by_decile"]) == 10
    assert r["by_call"]["create_run"]["calls"] == 10
    assert r["by_call"]["set_terminated"]["calls"] == 10  # the parent's not counted
    assert all(v > 0 for v in r["per_run_median_ms_by_decile"])


def test_store_growth_bench_refuses_too_few_runs():
    proc = subprocess.run([sys.executable, str(BENCH / "bench_store_growth.py"), "--runs", "3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--runs must be >= 10" in proc.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
