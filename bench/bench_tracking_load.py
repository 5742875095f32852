"""Tracking under load: a sweep of many short trials on local Ray, logged to a fresh sqlite store.

Runs ``plasticity sweep smoke --samples N`` (meta-train smoke trials, a few seconds each) with
``--cpus-per-trial 1`` on a local Ray of ``--cpus`` CPUs (that many trials at once), every trial
an MLflow child run logged by the driver's Tune callback (plasticity.commands.sweep.TrialLogger). The
callback's methods are wrapped with a timer, so the tracking cost is measured, not guessed.
Then it checks through MlflowClient that every trial is a FINISHED child run holding every
metric step its ``events.jsonl`` holds, exactly once, and that the sqlite file passes
``PRAGMA integrity_check`` and takes a write lock (not left locked).

Reported: wall time, trials/s, logged metric points/s, time in the logging callback as a
fraction of the summed trial time (a trial's time: from the driver's start hook to the end of
its completion hook, as the driver sees it) and of the sweep's wall time, and the load average
(``uptime``) before and after: the machine may be shared.

    .venv/bin/python bench/bench_tracking_load.py --trials 64 --repeats 3 \\
        --out bench/results_tracking_load.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import platform as _platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray's token authentication on (docs/security.md)
os.environ.setdefault("OMP_NUM_THREADS", "1")

HOOKS = ("on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error")


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _instrument(timings: dict, spans: dict):
    """Wrap TrialLogger's hooks: seconds spent per hook, and each trial's start/end times."""
    from plasticity.commands.sweep import TrialLogger

    originals = {name: getattr(TrialLogger, name) for name in HOOKS}

    def wrap(name, fn):
        @functools.wraps(fn)
        def timed(self, iteration, trials, trial, *args, **kw):
            t0 = time.perf_counter()
            if name == "on_trial_start":
                spans[trial.trial_id] = [t0, None]
            try:
                return fn(self, iteration, trials, trial, *args, **kw)
            finally:
                t1 = time.perf_counter()
                timings[name][0] += t1 - t0
                timings[name][1] += 1
                if name in ("on_trial_complete", "on_trial_error"):  # its logging included
                    spans.setdefault(trial.trial_id, [t0, None])[1] = t1

        return timed

    for name, fn in originals.items():
        setattr(TrialLogger, name, wrap(name, fn))
    return originals


def check_store(db: Path, result: dict, out: Path) -> dict:
    """Every trial a FINISHED child run with every metric step of its events.jsonl, once."""
    from plasticity.tracking import child_runs, open_store

    store = open_store(f"sqlite:///{db}")
    children = child_runs(store, result["parent_run_id"])
    by_trial = {c.data.tags["trial_id"]: c for c in children}
    problems, points = [], 0
    trial_dirs = sorted(p for p in (out / "trials").iterdir() if p.is_dir())
    if len(children) != len(result["trials"]) or len(by_trial) != len(children):
        problems.append(f"{len(children)} child runs for {len(result['trials'])} trials")
    for d in trial_dirs:
        run = by_trial.get(d.name)
        if run is None:
            problems.append(f"trial {d.name}: no child run")
            continue
        if run.info.status != "FINISHED":
            problems.append(f"trial {d.name}: run {run.info.status}")
        expected = defaultdict(list)
        for line in (d / "events.jsonl").read_text().splitlines():
            e = json.loads(line)
            if e["event"] == "metrics" and e["step"] is not None:
                for k in e["metrics"]:
                    expected[k].append(e["step"])
        for key, steps in expected.items():
            got = [m.step for m in store.client.get_metric_history(run.info.run_id, key)]
            points += len(got)
            if sorted(got) != sorted(steps):
                problems.append(f"trial {d.name} {key}: steps {sorted(got)} != {sorted(steps)}")
    all_points = 0
    for c in children:
        for key in c.data.metrics:
            all_points += len(store.client.get_metric_history(c.info.run_id, key))
    con = sqlite3.connect(db, timeout=5)
    integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
    try:
        con.execute("BEGIN IMMEDIATE")  # takes the write lock: nothing left holding it
        con.execute("ROLLBACK")
        locked = False
    except sqlite3.OperationalError:
        locked = True
    con.close()
    return {"child_runs": len(children), "finished": sum(c.info.status == "FINISHED" for c in children),
            "checked_metric_points": points, "metric_points": all_points,
            "integrity_check": integrity, "locked": locked, "problems": problems[:20],
            "ok": not problems and integrity == "ok" and not locked}


def run(trials: int, cpus: int, workdir: Path) -> dict:
    import ray
    from plasticity.cli import run as cli_run

    timings = defaultdict(lambda: [0.0, 0])
    spans: dict = {}
    _instrument(timings, spans)
    db, out = workdir / "mlflow.db", workdir / "sweep"
    load_before = _uptime()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the sweep's JSON: read from result.json
            code = cli_run(["sweep", "smoke", "--samples", str(trials), "--seed", "0",
                            "--cpus-per-trial", "1", "--out", str(out), "--tracking-uri",
                            f"sqlite:///{db}", "--json"])
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    load_after = _uptime()
    result = json.loads((out / "result.json").read_text())
    checks = check_store(db, result, out)
    trial_s = sum(end - start for start, end in spans.values() if end is not None)
    logging_s = sum(v[0] for v in timings.values())
    return {
        "trials": trials, "concurrent_trials": cpus, "exit_code": code, "errors": result["errors"],
        "wall_s": round(wall, 2), "trials_per_s": round(trials / wall, 3),
        "metric_points_per_s": round(checks["metric_points"] / wall, 1),
        "trial_s_summed": round(trial_s, 2), "trial_s_mean": round(trial_s / max(1, len(spans)), 2),
        "logging_s": round(logging_s, 2),
        "logging_fraction_of_trial_time": round(logging_s / trial_s, 4) if trial_s else None,
        "logging_fraction_of_wall": round(logging_s / wall, 4),
        "logging_by_hook": {k: {"seconds": round(v[0], 3), "calls": v[1]} for k, v in timings.items()},
        "store": checks, "sqlite_mb": round(db.stat().st_size / 2**20, 2),
        "load_before": load_before, "load_after": load_after,
        "machine": f"{_platform.machine()}, {os.cpu_count()} cores, python {sys.version.split()[0]}",
        "command": f"bench/bench_tracking_load.py --trials {trials} --cpus {cpus}",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=64)
    p.add_argument("--cpus", type=int, default=2, help="local Ray CPUs = concurrent trials")
    p.add_argument("--repeats", type=int, default=1, help="run the whole sweep this many times")
    p.add_argument("--out", type=Path, help="write the results JSON here")
    args = p.parse_args()
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(run(args.trials, args.cpus, Path(tmp)))
    keys = ("wall_s", "trials_per_s", "metric_points_per_s", "logging_fraction_of_trial_time",
            "logging_fraction_of_wall")
    summary = {k: {"min": min(r[k] for r in runs), "max": max(r[k] for r in runs),
                   "median": statistics.median(r[k] for r in runs)} for k in keys}
    ok = all(r["store"]["ok"] and r["errors"] == 0 for r in runs)
    text = json.dumps({"summary": summary, "all_ok": ok, "runs": runs}, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
