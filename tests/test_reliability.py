"""Reliability at research scale (issue 15): several commands at once on a fresh default store, a
tracking failure that costs a command none of its output, and runs that resume as themselves
(one MLflow run, every metric step once, events.jsonl exactly-once across a SIGKILL)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from plasticity.commands import config_commands as all_commands
from plasticity.tracking import open_store
from procs import kill_when
from test_cli import in_process

SMOKE_STEPS = all_commands()["meta-train"].presets["smoke"]["steps"]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PLASTICITY_TRACKING_URI", "MLFLOW_TRACKING_URI")}  # the default store
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _runs(store, experiment="plasticity"):
    exp = store.client.get_experiment_by_name(experiment)
    return [] if exp is None else store.client.search_runs([exp.experiment_id], max_results=1000)


# --- 1. N commands at the same moment on a fresh default store ------------------------------

@pytest.mark.slow  # ~65 s on 2 shared cores: four processes, each importing torch and MLflow
def test_concurrent_meta_trains_on_a_fresh_default_store_all_finish(tmp_path):
    """Four `plasticity meta-train --preset smoke` started together in an empty folder (the
    default sqlite:///mlflow.db): before the store lock three of four died in MLflow's schema
    migration (`duplicate column name: step`) and left nothing."""
    n = 4
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-m", "plasticity", "meta-train", "--preset", "smoke",
                               "--no-progress", "--out", f"mt{i}", "--json"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for i in range(n)]
    outs = [p.communicate(timeout=600) for p in procs]
    seconds = time.time() - t0
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "Traceback" not in err and "warning: tracking" not in err, err
    print(f"{n} concurrent meta-train smoke runs on a fresh store: {seconds:.1f} s")
    store = open_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = _runs(store)
    assert len(runs) == n and all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        assert len(store.client.get_metric_history(r.info.run_id, "meta/loss")) == SMOKE_STEPS
        assert "meta-train/test_accuracy" in r.data.metrics
    assert sorted(r.data.tags["plasticity.out"] for r in runs) == sorted(
        str(tmp_path / f"mt{i}") for i in range(n))
    for i in range(n):
        assert (tmp_path / f"mt{i}" / "result.json").is_file()
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# --- 1b. a tracking failure during the run: the output is kept, logged later -----------------

def test_tracking_failure_keeps_the_output_and_plasticity_log_logs_it_later(tmp_path, capsys,
                                                                            monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "mt"

    def broken(self, *args, **kw):
        raise MlflowException("(sqlite3.OperationalError) disk I/O error")

    monkeypatch.setattr(MlflowClient, "create_run", broken)
    proc = in_process(capsys, "meta-train", "--preset", "smoke", "--no-progress", "--out", str(out),
                      "--tracking-uri", uri, "--json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"plasticity log {out}" in proc.stderr, proc.stderr  # how to log it later
    result = json.loads(proc.stdout)
    assert (out / "result.json").is_file() and (out / "rule.json").is_file()
    store = open_store(uri)
    assert _runs(store) == []
    monkeypatch.undo()

    proc = in_process(capsys, "log", str(out), "--tracking-uri", uri, "--json")
    assert proc.returncode == 0, proc.stderr
    logged = json.loads(proc.stdout)
    runs = _runs(store)
    assert len(runs) == 1 and runs[0].info.run_id == logged["run_id"]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["plasticity.command"] == "meta-train"
    assert run.data.params["lr"] == str(result["config"]["lr"])
    hist = store.client.get_metric_history(run.info.run_id, "meta/loss")
    assert sorted(h.step for h in hist) == list(range(1, SMOKE_STEPS + 1))
    assert run.data.metrics["meta-train/final_loss"] == result["final_loss"]
    arts = {a.path for a in store.client.list_artifacts(run.info.run_id)}
    assert {"result.json", "events.jsonl", "history.json", "rules"} <= arts


# --- 3. SIGKILL + --resume: one MLflow run, every metric step once, events.jsonl exactly-once --

def _checkpoint_generation(out) -> int:
    try:
        return json.loads((out / "checkpoint.json").read_text())["generation"]
    except (OSError, ValueError, KeyError):
        return 0


def _tracked_run_id(out) -> str | None:
    try:
        return json.loads((out / "tracking.json").read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        return None


def _step_events(out) -> dict[str, list[int]]:
    steps: dict[str, list[int]] = {}
    for line in (out / "events.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e["event"] == "metrics" and e["step"] is not None:
            for k in e["metrics"]:
                steps.setdefault(k, []).append(e["step"])
    return steps


def test_sigkilled_tracked_evolve_resumes_as_the_same_run_with_every_step_once(tmp_path, capsys):
    gens = 300
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "evolve"
    argv = ["evolve", "--preset", "smoke", "--set", f"generations={gens}", "--no-progress",
            "--seed", "5", "--tracking-uri", uri, "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "plasticity", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, env=_env())
    # the run is in the store (a first batch flushed) and the checkpoint is well past it
    kill_when(proc, lambda: _tracked_run_id(out) is not None and _checkpoint_generation(out) >= 80,
              timeout=240, what="evolve")
    cut = _checkpoint_generation(out)
    assert 80 <= cut < gens, cut
    store = open_store(uri)
    killed_id = _tracked_run_id(out)
    assert store.client.get_run(killed_id).info.status == "RUNNING"  # what the kill left
    t0 = time.time()
    resumed = in_process(capsys, *argv, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    print(f"killed at the checkpoint of generation {cut} of {gens}; resumed in "
          f"{time.time() - t0:.1f} s")
    runs = _runs(store)
    assert [r.info.run_id for r in runs] == [killed_id]  # one run: the killed one, continued
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["evolve/generations"] == gens
    steps = _step_events(out)
    assert sorted(steps["evolution/loss_best"]) == list(range(1, gens + 1))  # jsonl: once each
    for key, logged in steps.items():
        assert sorted(logged) == sorted(set(logged)), key
        hist = store.client.get_metric_history(killed_id, key)
        assert sorted(m.step for m in hist) == sorted(logged), key  # MLflow: the same, once each
    closes = [json.loads(x)["status"] for x in (out / "events.jsonl").read_text().splitlines()
              if json.loads(x)["event"] == "close"]
    assert closes == ["FINISHED"]


def test_rewind_skips_steps_the_store_holds_and_logs_the_ones_it_lacks(tmp_path):
    """The killed run had flushed steps 1-3 and 6-7 (6-7 past its checkpoint at 5; 4-5 were
    still buffered at the kill): after rewind(5) with the checkpoint's history and a resumed
    run logging 6-10, the store holds 1-10 once each."""
    store = open_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    killed = store.sink("killed", experiment="unit")
    for s in (1, 2, 3, 6, 7):
        killed.metrics({"m/a": s}, step=s)
    killed._flush_metrics()
    resumed = store.sink("killed", experiment="unit", run_id=killed.run_id)
    resumed.reopen_on_start = True
    resumed.rewind(5, [({"m/a": s}, s) for s in range(1, 6)])
    for s in range(6, 11):
        resumed.metrics({"m/a": s}, step=s)
    resumed.close()
    hist = store.client.get_metric_history(killed.run_id, "m/a")
    assert sorted((m.step, m.value) for m in hist) == [(s, float(s)) for s in range(1, 11)]
    assert store.client.get_run(killed.run_id).info.status == "FINISHED"
    assert len(_runs(store, "unit")) == 1


def test_create_run_retried_after_a_lost_reply_makes_one_run(tmp_path, monkeypatch):
    import requests

    store = open_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    real = store.client.raw.create_run
    calls = []

    def lost_reply(*args, **kw):
        calls.append(1)
        real(*args, **kw)  # the store made the run ...
        if len(calls) == 1:
            raise requests.ConnectionError("Connection reset by peer")  # ... its reply was lost
        raise AssertionError("a second create_run")

    monkeypatch.setattr(store.client.raw, "create_run", lost_reply)
    sink = store.sink("lost", experiment="unit")
    run_id = sink.start()
    sink.close()
    runs = _runs(store, "unit")
    assert calls == [1] and [r.info.run_id for r in runs] == [run_id]
    assert runs[0].info.status == "FINISHED"


def test_sigkilled_tracked_compare_resumes_as_the_same_run_with_every_step_once(tmp_path, capsys):
    """Killed during the second seed's evolution (the first seed's evolution and GD logged):
    the resume continues seed 6 from its checkpoint, runs seed 5's GD again without logging it
    twice, and ends as the killed run, FINISHED, with the result of an uninterrupted run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "compare"
    argv = ["compare", "--preset", "smoke", "--set", "seeds=2", "--set", "generations=60",
            "--no-progress", "--seed", "5", "--tracking-uri", uri, "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "plasticity", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, env=_env())
    kill_when(proc, lambda: (_tracked_run_id(out) is not None
                             and _checkpoint_generation(out / "seed6") >= 10),
              timeout=300, what="compare (second seed)")
    killed_id = _tracked_run_id(out)
    resumed = in_process(capsys, *argv, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    whole = in_process(capsys, *[a if a != str(out) else str(tmp_path / "whole") for a in argv],
                       "--tracking-uri", "none", "--json")
    assert whole.returncode == 0, whole.stderr
    a, b = json.loads(whole.stdout), json.loads(resumed.stdout)
    for name in ("evolution", "gd"):
        assert [r[name]["output_table"] for r in a["runs"]] == [r[name]["output_table"]
                                                               for r in b["runs"]]
        assert [r[name]["test_accuracy"] for r in a["runs"]] == [r[name]["test_accuracy"]
                                                                for r in b["runs"]]
    store = open_store(uri)
    every = _runs(store)
    runs = [r for r in every if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_id for r in runs] == [killed_id] and runs[0].info.status == "FINISHED"
    # its per-method child runs (one per seed and method) were made once, by the run that ended
    children = [r for r in every if r.data.tags.get("mlflow.parentRunId") == killed_id]
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    steps = _step_events(out)
    for seed in (5, 6):
        assert sorted(steps[f"compare/seed{seed}/evolution/loss_best"]) == list(range(1, 61))
    for key, logged in steps.items():
        assert sorted(logged) == sorted(set(logged)), key
        hist = store.client.get_metric_history(killed_id, key)
        assert sorted(m.step for m in hist) == sorted(logged), key
