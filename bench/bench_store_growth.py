"""Does logging a trial cost more once the store holds many runs? No Ray, no sweep: one process
logs ``--runs`` child runs one after the other with the calls the sweep's driver makes per trial
(plasticity.commands.sweep.TrialLogger through plasticity.tracking: create the run with its
tags, its params, 7 steps of 2 metrics, a rule's JSON + heatmap, three result files, FINISHED),
every MLflow client call timed. So the cost against the number of runs already stored is
measured without the sweep's own load (Ray workers, Tune's driver) around it.

Reported by decile of the runs: the median time per run and per client call, and with a server
its CPU time per run (the server's process tree, from /proc): a cost that grows with the store
grows in the server's CPU; one that grows with the machine's load grows only in wall time.

    .venv/bin/python bench/bench_store_growth.py --runs 2000 --server sqlite \\
        --out bench/results_store_growth.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_tracking_load as load  # noqa: E402  (its server, PostgreSQL and /proc helpers)

CALLS = ("create_run", "log_batch", "log_artifact", "log_artifacts", "set_terminated")


def _timed_client(times: dict, current: list):
    """Wrap MlflowClient's calls: seconds per call, labelled with the run being logged."""
    from mlflow.tracking import MlflowClient

    originals = {name: getattr(MlflowClient, name) for name in CALLS}

    def wrap(name, fn):
        @functools.wraps(fn)
        def timed(self, *args, **kw):
            t0 = time.perf_counter()
            try:
                return fn(self, *args, **kw)
            finally:
                times[name].append((current[0], time.perf_counter() - t0))

        return timed

    for name, fn in originals.items():
        setattr(MlflowClient, name, wrap(name, fn))
    return originals


def run(runs: int, server: str, workdir: Path) -> dict:
    from mlflow.tracking import MlflowClient
    from plasticity.report import rule_heatmap
    from plasticity.rules.classic import classic_rule
    from plasticity.rules.io import save_rule
    from plasticity.tracking import open_store

    src = workdir / "trial"  # one trial folder's files, logged by every run
    src.mkdir()
    rule = classic_rule("hebb+perceptron", T=3)
    save_rule(rule, src / "rule.json")
    rule_heatmap(rule, src / "heatmap.png")
    (src / "result.json").write_text(json.dumps({"command": "meta-train", "test_accuracy": 0.5}))
    (src / "events.jsonl").write_text("".join(
        json.dumps({"event": "metrics", "step": s, "metrics": {"meta/loss": 1 / s}}) + "\n"
        for s in range(1, 8)))
    times: dict = defaultdict(list)
    current = [-1]  # the run being logged; -1: the parent's calls (not counted)
    originals = _timed_client(times, current)
    try:
        with contextlib.ExitStack() as stack:
            db: Path | None = workdir / "mlflow.db"
            store_uri = f"sqlite:///{db}"
            if server == "postgresql":
                store_uri, db = stack.enter_context(load.postgresql(workdir)), None
            uri = store_uri if server == "none" else stack.enter_context(
                load.tracking_server(store_uri, workdir))
            tree = load._tree(load.SERVER_PID[0]) if load.SERVER_PID else []
            store = open_store(uri)
            parent = store.sink("store growth", experiment="plasticity")
            parent_id = parent.start()
            per_run, server_cpu = [], [load._cpu_s(tree)]
            t_start = time.perf_counter()
            for i in range(runs):
                current[0] = i
                t0 = time.perf_counter()
                sink = store.sink(f"trial {i}", experiment="plasticity", parent_run_id=parent_id,
                                  tags={"trial_id": f"growth_{i:05d}", "plasticity.command": "meta-train"},
                                  register=False)
                sink.params({"seed": i, "lr": 0.01, "preset": "smoke", "neurons": 100})
                sink.start()
                for step in range(1, 8):
                    sink.metrics({"meta/loss": 1 / step, "meta/accuracy": step / 10}, step=step)
                sink.rule("meta-train", rule, src / "rule.json", heatmap=src / "heatmap.png")
                sink.out = src
                sink.close("FINISHED")
                per_run.append(time.perf_counter() - t0)
                server_cpu.append(load._cpu_s(tree))
            wall = time.perf_counter() - t_start
            current[0] = -1
            parent.close("FINISHED")
            stored = len(MlflowClient(uri).search_runs(
                [store.experiment_id("plasticity")], f"tags.mlflow.parentRunId = '{parent_id}'",
                max_results=runs + 1))
    finally:
        for name, fn in originals.items():
            setattr(MlflowClient, name, fn)
    tenth = max(1, runs // 10)
    cuts = list(range(0, runs, tenth))

    def deciles(xs):
        return [round(1000 * statistics.median(xs[c:c + tenth]), 2) for c in cuts]

    by_call = {}
    for name, xs in times.items():
        rows = defaultdict(list)
        for i, s in xs:
            if i >= 0:
                rows[min(len(cuts) - 1, i // tenth)].append(s)
        by_call[name] = {"calls": sum(len(v) for v in rows.values()), "median_ms_by_decile":
                         [round(1000 * statistics.median(rows[d]), 2) for d in sorted(rows)]}
    ms = deciles(per_run)
    # the trend: least-squares slope of a run's time on its index, as % of the first decile's
    # median per 1,000 runs already stored (0: no growth with the store)
    xs = range(runs)
    mx, my = statistics.mean(xs), statistics.mean(per_run)
    slope = (sum((x - mx) * (y - my) for x, y in zip(xs, per_run))
             / sum((x - mx) ** 2 for x in xs))
    out = {"server": server, "runs": runs, "stored_child_runs": stored, "wall_s": round(wall, 1),
           "per_run_median_ms_by_decile": ms, "last_over_first_decile": round(ms[-1] / ms[0], 3),
           "slope_pct_per_1000_runs": round(100 * 1000 * slope / (ms[0] / 1000), 1),
           "by_call": by_call, "load_at_end": os.getloadavg()[0],
           "store_mb": round(db.stat().st_size / 2**20, 1) if db else None,
           "command": f"bench/bench_store_growth.py --runs {runs} --server {server}"}
    if tree:
        out["server_cpu_ms_per_run_by_decile"] = [
            round(1000 * (server_cpu[min(c + tenth, runs)] - server_cpu[c]) / min(tenth, runs - c), 1)
            for c in cuts]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--server", nargs="+", default=["sqlite"], choices=("none", "sqlite", "postgresql"),
                   help="log straight to sqlite (none) or through a plasticity server over a "
                        "sqlite or PostgreSQL store; several: each in turn")
    p.add_argument("--out", type=Path, help="write the results JSON here")
    args = p.parse_args()
    if args.runs < 10:
        raise SystemExit("bench: --runs must be >= 10 (deciles)")
    results = []
    for server in args.server:
        with tempfile.TemporaryDirectory() as tmp:
            results.append(run(args.runs, server, Path(tmp)))
    load.finish({"all_ok": all(r["stored_child_runs"] == r["runs"] for r in results),
                 "runs": results}, args.out)


if __name__ == "__main__":
    main()
