"""Tracking under load: a sweep of many short trials on local Ray, logged to a fresh store.

Runs ``plasticity sweep smoke --samples N`` (meta-train smoke trials, a few seconds each) with
``--cpus-per-trial 1`` on a local Ray of ``--cpus`` CPUs (that many trials at once), every trial
an MLflow child run logged by the driver's Tune callback (plasticity.commands.sweep.TrialLogger). The
callback's methods are wrapped with a timer, so the tracking cost is measured, not guessed, in
total and per trial (in the order the trials started, so a cost that grows with the trials
already logged shows as ``per_trial_logging_ms`` of the last trials above the first).

Where the sweep logs (``--server``):
- ``none``: straight into a fresh sqlite file (the default store of one user);
- ``sqlite``: a ``plasticity server`` (MLflow's server with basic auth, on loopback) over a fresh
  sqlite file, the sweep logging over HTTP with the credentials the bench makes;
- ``postgresql``: the same server over a PostgreSQL database the bench creates and stops itself
  (``initdb`` + ``pg_ctl`` from Debian's package, run as the ``postgres`` user when the bench is
  root; trust authentication on 127.0.0.1 only; needs ``pip install 'psycopg[binary]'``).
Then it checks through MlflowClient that every trial is a FINISHED child run holding every
metric step its ``events.jsonl`` holds, exactly once, and (sqlite) that the file passes
``PRAGMA integrity_check`` and takes a write lock (not left locked).

Reported: wall time, trials/s, logged metric points/s, time in the logging callback as a
fraction of the summed trial time (a trial's time: from the driver's start hook to the end of
its completion hook, as the driver sees it) and of the sweep's wall time, the per-trial logging
cost of the first and last 100 trials, and the load average (``uptime``) before and after: the
machine may be shared.

    .venv/bin/python bench/bench_tracking_load.py --trials 64 --repeats 3 \\
        --out bench/results_tracking_load.json
    .venv/bin/python bench/bench_tracking_load.py --trials 1000 --server sqlite postgresql \\
        --out bench/results_tracking_load_1000.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import platform as _platform
import secrets
import shutil
import signal
import socket
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


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) of the live processes ``pids`` (from /proc; 0 without it)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _tree(root: int) -> list[int]:
    """``root`` and every process below it (the tracking server's tree: MLflow starts uvicorn and
    its job consumers in sessions of their own)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, grew = {root}, True
    while grew:
        new = {pid for pid, ppid in parent.items() if ppid in tree} - tree
        tree |= new
        grew = bool(new)
    return sorted(tree)


SERVER_PID: list[int] = []  # set by tracking_server: whose CPU time the bench samples


def _instrument(timings: dict, spans: dict, per_trial: dict, samples: dict):
    """Wrap TrialLogger's hooks: seconds (wall, and CPU of the driver's thread) spent per hook and
    per trial, each trial's start/end times, and at each trial's start the load average and the
    CPU seconds used so far by the driver process and by the tracking server: the context that
    tells a logging cost that grows with the store from one that grows with the machine's load."""
    from plasticity.commands.sweep import TrialLogger

    originals = {name: getattr(TrialLogger, name) for name in HOOKS}
    server: list[int] = []

    def wrap(name, fn):
        @functools.wraps(fn)
        def timed(self, iteration, trials, trial, *args, **kw):
            t0, c0 = time.perf_counter(), time.thread_time()
            if name == "on_trial_start":
                spans[trial.trial_id] = [t0, None]
                if SERVER_PID and not server:
                    server.extend(_tree(SERVER_PID[0]))
                samples[trial.trial_id] = (os.getloadavg()[0], time.process_time(), _cpu_s(server))
            try:
                return fn(self, iteration, trials, trial, *args, **kw)
            finally:
                t1 = time.perf_counter()
                timings[name][0] += t1 - t0
                timings[name][1] += 1
                wall, cpu = per_trial.get(trial.trial_id, (0.0, 0.0))
                per_trial[trial.trial_id] = (wall + t1 - t0, cpu + time.thread_time() - c0)
                if name in ("on_trial_complete", "on_trial_error"):  # its logging included
                    spans.setdefault(trial.trial_id, [t0, None])[1] = t1

        return timed

    for name, fn in originals.items():
        setattr(TrialLogger, name, wrap(name, fn))
    return originals


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, proc: subprocess.Popen | None = None, timeout: float = 120) -> float:
    t0 = time.time()
    while True:
        try:
            if check():
                return time.time() - t0
        except OSError:
            pass
        if (proc is not None and proc.poll() is not None) or time.time() > t0 + timeout:
            raise SystemExit(f"bench: {what} did not start")
        time.sleep(0.2)


@contextlib.contextmanager
def postgresql(workdir: Path):
    """A throw-away PostgreSQL cluster on 127.0.0.1 (trust auth: loopback only), its URI."""
    bindir = Path("/usr/lib/postgresql")
    versions = sorted(bindir.glob("*/bin/initdb"))
    initdb = str(versions[-1]) if versions else shutil.which("initdb")
    if not initdb:
        raise SystemExit("bench: no initdb: install Debian's postgresql package")
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    data = Path(tempfile.mkdtemp(prefix="plasticity-pg-"))  # not under workdir: postgres must reach it
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(data, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run(as_user + [initdb, "-D", str(data), "-A", "trust", "-U", "postgres",
                              "--no-sync", "-E", "UTF8"], check=True, **quiet)
    subprocess.run(as_user + [pg_ctl, "-D", str(data), "-l", str(data / "log"), "-w", "-o",
                              f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"],
                   check=True, **quiet)
    try:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres",
                             autocommit=True) as con:
            con.execute("CREATE DATABASE mlflow")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(as_user + [pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], **quiet)
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def tracking_server(store_uri: str, workdir: Path):
    """``plasticity server`` (basic auth) on a free loopback port over ``store_uri``; yields its
    address with the driver's credentials set in the environment."""
    import urllib.request

    creds = {"MLFLOW_TRACKING_USERNAME": "bench", "MLFLOW_TRACKING_PASSWORD": secrets.token_hex(12)}
    os.environ.update(creds)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "plasticity", "server", "--tracking-uri", store_uri, "--port",
         str(port), "--auth-dir", str(workdir / "auth")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        cwd=workdir)  # a non-sqlite store's artifacts go to ./mlartifacts: the bench's folder
    address = f"http://127.0.0.1:{port}"
    SERVER_PID[:] = [proc.pid]
    try:
        _wait(lambda: urllib.request.urlopen(address + "/health", timeout=2).status == 200,
              "plasticity server", proc)
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)  # plasticity server stops its MLflow process group
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        for k in creds:
            os.environ.pop(k, None)
        SERVER_PID.clear()


def check_store(uri: str, db: Path | None, result: dict, out: Path) -> dict:
    """Every trial a FINISHED child run with every metric step of its events.jsonl, once; a
    sqlite file (``db``) intact and not left locked."""
    from plasticity.tracking import child_runs, open_store

    store = open_store(uri)
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
    integrity, locked = "ok", False
    if db is not None:
        con = sqlite3.connect(db, timeout=5)
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        try:
            con.execute("BEGIN IMMEDIATE")  # takes the write lock: nothing left holding it
            con.execute("ROLLBACK")
        except sqlite3.OperationalError:
            locked = True
        con.close()
    return {"child_runs": len(children), "finished": sum(c.info.status == "FINISHED" for c in children),
            "checked_metric_points": points, "metric_points": all_points,
            "integrity_check": integrity, "locked": locked, "problems": problems[:20],
            "ok": not problems and integrity == "ok" and not locked}


def _first_last(per_trial: dict, spans: dict, samples: dict, n: int = 100) -> dict:
    """Per-trial logging cost (ms) of the first and the last ``n`` trials to start, and by decile:
    the median wall and driver-thread CPU cost, the median load average, and the CPU the driver
    process and the tracking server used per trial started in the decile."""
    order = [t for t, _ in sorted(spans.items(), key=lambda kv: kv[1][0]) if t in per_trial]
    costs = [1000 * per_trial[t][0] for t in order]
    n = min(n, len(costs) // 2) or 1

    def stats(xs):
        return {"trials": len(xs), "mean_ms": round(statistics.mean(xs), 2),
                "median_ms": round(statistics.median(xs), 2), "max_ms": round(max(xs), 2)}

    first, last = stats(costs[:n]), stats(costs[-n:])
    tenth = max(1, len(costs) // 10)  # the trend across the sweep, against noise from the load
    cuts = list(range(0, len(costs), tenth))

    def by_decile(xs):
        return [round(statistics.median(xs[i:i + tenth]), 1) for i in cuts]

    def per_trial_of(column):  # CPU ms per trial started between consecutive decile starts
        got = [samples[t][column] for t in order if t in samples]
        if len(got) != len(order):
            return None
        ends = cuts[1:] + [len(got) - 1]
        return [round(1000 * (got[e] - got[c]) / max(1, e - c), 1) for c, e in zip(cuts, ends)]

    out = {"first": first, "last": last, "median_ms_by_decile": by_decile(costs),
           "median_cpu_ms_by_decile": by_decile([1000 * per_trial[t][1] for t in order]),
           "last_over_first_median": round(last["median_ms"] / first["median_ms"], 3)}
    if samples:
        out["load_by_decile"] = by_decile([samples[t][0] for t in order if t in samples])
        out["driver_cpu_ms_per_trial_by_decile"] = per_trial_of(1)
        if any(samples[t][2] for t in samples):
            out["server_cpu_ms_per_trial_by_decile"] = per_trial_of(2)
    return out


def run(trials: int, cpus: int, workdir: Path, server: str = "none") -> dict:
    with contextlib.ExitStack() as stack:
        db: Path | None = workdir / "mlflow.db"
        store_uri = f"sqlite:///{db}"
        if server == "postgresql":
            store_uri, db = stack.enter_context(postgresql(workdir)), None
        uri = store_uri if server == "none" else stack.enter_context(tracking_server(store_uri, workdir))
        result = _run(trials, cpus, workdir, uri, db)
        result["server"] = server
        result["backend"] = store_uri.split(":", 1)[0].split("+", 1)[0]
        result["command"] += f" --server {server}"
        return result


def _run(trials: int, cpus: int, workdir: Path, uri: str, db: Path | None) -> dict:
    import ray
    from plasticity.cli import run as cli_run

    timings = defaultdict(lambda: [0.0, 0])
    spans: dict = {}
    per_trial: dict = {}
    samples: dict = {}
    originals = _instrument(timings, spans, per_trial, samples)
    out = workdir / "sweep"
    load_before = _uptime()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the sweep's JSON: read from result.json
            code = cli_run(["sweep", "smoke", "--samples", str(trials), "--seed", "0",
                            "--cpus-per-trial", "1", "--out", str(out), "--tracking-uri",
                            uri, "--json"])
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
        from plasticity.commands.sweep import TrialLogger

        for name, fn in originals.items():  # the next repeat wraps the originals afresh
            setattr(TrialLogger, name, fn)
    load_after = _uptime()
    result = json.loads((out / "result.json").read_text())
    checks = check_store(uri, db, result, out)
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
        "per_trial_logging_ms": _first_last(per_trial, spans, samples),
        "store": checks, "sqlite_mb": round(db.stat().st_size / 2**20, 2) if db else None,
        "load_before": load_before, "load_after": load_after,
        "machine": f"{_platform.machine()}, {os.cpu_count()} cores, python {sys.version.split()[0]}",
        "command": f"bench/bench_tracking_load.py --trials {trials} --cpus {cpus}",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=64)
    p.add_argument("--cpus", type=int, default=2, help="local Ray CPUs = concurrent trials")
    p.add_argument("--repeats", type=int, default=1, help="run the whole sweep this many times")
    p.add_argument("--server", nargs="+", default=["none"], choices=("none", "sqlite", "postgresql"),
                   help="log straight to sqlite (none) or through a plasticity server over a "
                        "sqlite or PostgreSQL store; several: each in turn")
    p.add_argument("--out", type=Path, help="write the results JSON here")
    args = p.parse_args()
    runs = []
    for server in args.server:
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(run(args.trials, args.cpus, Path(tmp), server))
    keys = ("wall_s", "trials_per_s", "metric_points_per_s", "logging_fraction_of_trial_time",
            "logging_fraction_of_wall")
    summary = {}
    for server in args.server:
        rs = [r for r in runs if r["server"] == server]
        summary[server] = {k: {"min": min(r[k] for r in rs), "max": max(r[k] for r in rs),
                               "median": statistics.median(r[k] for r in rs)} for k in keys}
    ok = all(r["store"]["ok"] and r["errors"] == 0 for r in runs)
    finish({"summary": summary, "all_ok": ok, "runs": runs}, args.out)


def finish(doc: dict, out: Path | None) -> None:
    """Print the results JSON, write it to ``out``, exit 1 unless every check passed."""
    text = json.dumps(doc, indent=1)
    print(text)
    if out:
        out.write_text(text + "\n")
    sys.exit(0 if doc["all_ok"] else 1)


if __name__ == "__main__":
    main()
