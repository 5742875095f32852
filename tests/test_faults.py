"""Fault injection: a SIGKILLed evolution driver resumes to the uninterrupted result, an
interrupted checkpoint write keeps the previous checkpoint, a trial that raises is reported as an
error while the other trials finish, and a tracking server that goes away mid-run and comes back
loses and duplicates no metric step."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from plasticity.commands import config_commands as all_commands
from plasticity.evolution.driver import CHECKPOINT, run_evolution
from procs import kill_when
from test_cli import in_process
from test_evolution import tiny
from test_tracking import free_port


def _strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if "seconds" not in k} for h in history]


def _events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def _generation_events(out: Path) -> list[dict]:
    return [e for e in _events(out) if e["event"] == "metrics" and e["step"] is not None
            and "evolution/loss_best" in e["metrics"]]


def _checkpoint_generation(out: Path) -> int:
    try:
        return json.loads((out / CHECKPOINT).read_text())["generation"]
    except (OSError, ValueError, KeyError):
        return 0


# --- 1. the evolution driver killed by SIGKILL mid-run, then --resume -----------------------

EVOLVE = ["evolve", "--preset", "smoke", "--set", "generations=150", "--no-progress",
          "--no-tracking", "--seed", "5"]


def test_sigkilled_evolution_resumes_to_the_uninterrupted_result(tmp_path, capsys):
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "plasticity", *EVOLVE, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    kill_when(proc, lambda: _checkpoint_generation(killed) >= 5, timeout=120, what="evolve")
    assert proc.returncode == -signal.SIGKILL
    cut = _checkpoint_generation(killed)
    assert 5 <= cut < 150, cut  # killed mid-run, after a checkpoint
    assert not (killed / "result.json").exists()

    whole = in_process(capsys, *EVOLVE, "--out", str(tmp_path / "whole"), "--json")
    assert whole.returncode == 0, whole.stderr
    resumed = in_process(capsys, *EVOLVE, "--out", str(killed), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    a, b = json.loads(whole.stdout), json.loads(resumed.stdout)
    for key in ("final_rule", "start_rule", "final_loss", "loss_best", "examples", "generations",
                "test_accuracy", "output_table", "pattern"):
        assert a[key] == b[key], key
    rule_a = json.loads((tmp_path / "whole" / "rule.json").read_text())
    rule_b = json.loads((killed / "rule.json").read_text())
    assert rule_a == rule_b  # the saved rule, provenance included, is identical
    hist = json.loads((killed / "history.json").read_text())
    assert [h["generation"] for h in hist] == list(range(1, 151))  # every generation, once
    assert _strip(hist) == _strip(json.loads((tmp_path / "whole" / "history.json").read_text()))
    ck = json.loads((killed / CHECKPOINT).read_text())
    assert ck["generation"] == 150 and [h["generation"] for h in ck["history"]] == list(range(1, 151))
    # events.jsonl is exactly-once: the resume drops what the killed run logged past its
    # checkpoint (the generation in flight at the kill), so every generation is there once,
    # with the values of the uninterrupted run
    steps = [e["step"] for e in _generation_events(killed)]
    assert steps == list(range(1, 151))
    for a_ev, b_ev in zip(_generation_events(tmp_path / "whole"), _generation_events(killed)):
        assert ({k: v for k, v in a_ev["metrics"].items() if "seconds" not in k}
                == {k: v for k, v in b_ev["metrics"].items() if "seconds" not in k})
    assert [e["status"] for e in _events(killed) if e["event"] == "close"] == ["FINISHED"]


# --- 4. an interrupted checkpoint write leaves the previous complete checkpoint -------------

@pytest.mark.parametrize("fault", ["replace", "fsync"])
def test_interrupted_checkpoint_write_keeps_the_previous_one_and_resume_works(
        fault, tmp_path, monkeypatch):
    from plasticity import files as rules_io
    from plasticity.data import load_dataset

    data = load_dataset("halfspace")
    cfg = tiny(generations=5)
    whole = run_evolution(cfg, data, out=tmp_path / "whole")
    out = tmp_path / "cut"
    real = getattr(os, fault)
    writes = []

    def failing(*args, **kw):
        if fault == "fsync" or Path(args[1]).name == CHECKPOINT:
            writes.append(1)
            if len(writes) == 3:  # the checkpoint of generation 3 dies mid-write
                raise OSError(28, "No space left on device")
        return real(*args, **kw)

    monkeypatch.setattr(rules_io.os, fault, failing)
    with pytest.raises(OSError, match="No space left"):
        run_evolution(cfg, data, out=out)
    monkeypatch.setattr(rules_io.os, fault, real)
    ck = json.loads((out / CHECKPOINT).read_text())  # complete JSON of the last good write
    assert ck["generation"] == 2 and len(ck["history"]) == 2
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT]  # no temp file left behind
    resumed = run_evolution(cfg, data, out=out, resume=True)
    np.testing.assert_array_equal(whole.final, resumed.final)
    assert _strip(whole.history) == _strip(resumed.history)
    assert [h["generation"] for h in resumed.history] == [1, 2, 3, 4, 5]


# --- 2. a Tune trial that raises: reported as an error, the other trials finish -------------

def test_a_failing_trial_is_an_error_and_the_others_finish(ray_local, tmp_path, capsys, monkeypatch):
    from plasticity.rules.refs import shipped_path
    from plasticity.tracking import child_runs, open_store
    from ray import tune

    import search_spaces

    good = json.loads(shipped_path("fig3_T1").read_text())
    broken = tmp_path / "half_copied_rule.json"  # a rule file cut off while being copied
    broken.write_text(json.dumps(good)[:200])
    space = search_spaces.Space(
        "train", "smoke", {"rule": tune.grid_search(["perceptron", str(broken), "winnow"])},
        metric="train/test_accuracy_mean", mode="max", help="test only: one trial fails")
    monkeypatch.setitem(search_spaces.SPACES, "faulty", space)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "sweep"
    proc = in_process(capsys, "sweep", "faulty", "--out", str(out), "--tracking-uri", uri, "--json")
    result = json.loads(proc.stdout)
    assert proc.returncode == 1, proc.stderr  # the sweep finished, but not every trial did
    assert result["errors"] == 1 and len(result["trials"]) == 3
    failed = [t for t in result["trials"] if t["error"] is not None]
    assert [t["config"]["rule"] for t in failed] == [str(broken)]
    assert failed[0]["error_message"].startswith("plasticity.PlasticityError: rule file")
    summary = (out / "sweep.md").read_text()  # the summary table names the failure and why
    assert "1 of 3 trials failed" in summary and "is not valid JSON" in summary
    assert summary == f"# Sweep faulty (train, preset smoke)\n\n{result['summary']}"
    store = open_store(uri)
    parent = store.client.get_run(result["parent_run_id"])
    assert parent.info.status == "FAILED" and parent.data.metrics["sweep/errors"] == 1
    children = {c.data.params["rule"]: c for c in child_runs(store, result["parent_run_id"])}
    assert set(children) == {"perceptron", str(broken), "winnow"}
    assert children[str(broken)].info.status == "FAILED"
    for name in ("perceptron", "winnow"):
        c = children[name]
        assert c.info.status == "FINISHED", name
        assert 0.0 <= c.data.metrics["train/test_accuracy_mean"] <= 1.0
        n_train = all_commands()["train"].presets["smoke"]["n_train"]  # the space's preset
        assert "train/test_accuracy_mean" in c.data.metrics and c.data.params["n_train"] == str(n_train)
        arts = {a.path for a in store.client.list_artifacts(c.info.run_id, "rules/train")}
        assert "rules/train/rule.json" in arts


# --- 3. the MLflow tracking server stopped mid-run and restarted ----------------------------

def test_sink_keeps_metrics_through_an_outage_and_resends_idempotently(tmp_path, monkeypatch, capsys):
    """The store fails (down, or the batch stored but its reply lost) and recovers: every step
    lands exactly once; during the run a failed flush does not block, at close it is retried."""
    import requests
    from plasticity.tracking import open_store

    store = open_store(f"sqlite:///{tmp_path}/mlflow.db")
    real = store.client.raw.log_batch
    plan = ["ok", "down", "down", "lost", "ok", "ok"]  # one entry per metrics batch sent

    def flaky(run_id, metrics=(), params=(), tags=()):
        what = plan.pop(0) if metrics and plan else "ok"
        if what == "down":
            raise requests.ConnectionError("[Errno 111] Connection refused")
        out = real(run_id, metrics=metrics, params=params, tags=tags)
        if what == "lost":
            raise requests.ConnectionError("Connection reset by peer")
        return out

    monkeypatch.setattr(store.client.raw, "log_batch", flaky)
    sink = store.sink("flaky", experiment="unit")
    sink.FLUSH_S = 0.0  # flush at every step
    for step in range(6):
        sink.metrics({"m/a": step, "m/b": -step}, step=step)
    assert len(sink._metrics) == 0 and not plan
    sink.FLUSH_S = 1e9  # the last steps stay buffered until close, which meets two failures
    for step in range(6, 8):
        sink.metrics({"m/a": step, "m/b": -step}, step=step)
    plan[:] = ["down", "down"]
    sink.close()
    for key, sign in (("m/a", 1), ("m/b", -1)):
        hist = store.client.get_metric_history(sink.run_id, key)
        assert sorted((h.step, h.value) for h in hist) == [(s, sign * s) for s in range(8)], key
    assert store.client.get_run(sink.run_id).info.status == "FINISHED"
    err = capsys.readouterr().err
    assert "tracking store unavailable" in err and "reachable again" in err



def _start_server(port: int, root: Path) -> subprocess.Popen:
    """`mlflow server` on loopback over a sqlite store in ``root`` (as tests/test_tracking.py)."""
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    return subprocess.Popen(
        [mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{root}/server.db",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_healthy(server: subprocess.Popen, base: str, timeout: float = 120) -> float:
    import urllib.request

    t0 = time.time()
    while True:
        try:
            urllib.request.urlopen(base + "/health", timeout=2)
            return time.time() - t0
        except OSError:
            assert server.poll() is None and time.time() < t0 + timeout, "mlflow server did not start"
            time.sleep(0.2)


def _stop(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    """Kill the process group this test started (the server and its uvicorn worker)."""
    if proc.poll() is None or sig == signal.SIGKILL:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


@pytest.mark.slow  # ~60 s: the server starts twice
def test_tracking_server_restart_mid_run_loses_and_duplicates_no_metric(tmp_path):
    from mlflow import MlflowClient

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = _start_server(port, tmp_path)
    out = tmp_path / "evolve"
    run = None
    try:
        _wait_healthy(server, base)
        run = subprocess.Popen(
            [sys.executable, "-m", "plasticity", "evolve", "--preset", "smoke", "--set",
             "generations=400", "--set", "population=32", "--no-progress", "--tracking-uri", base,
             "--out", str(out), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.time() + 180
        while _checkpoint_generation(out) < 80:  # >= one batch of metrics sent (1000 per batch)
            assert run.poll() is None, run.stderr.read()
            assert time.time() < deadline
            time.sleep(0.05)
        _stop(server)  # the server dies mid-run ...
        down_at = _checkpoint_generation(out)
        time.sleep(3)
        server = _start_server(port, tmp_path)  # ... and comes back on the same port and store
        restart_s = _wait_healthy(server, base)
        stdout, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr
        assert down_at < 400, "the run ended before the server went down"
        print(f"server down at generation {down_at}, back after {3 + restart_s:.1f} s")
        print(stderr)
        assert "tracking store unavailable" in stderr  # the run did meet the outage
        assert "Traceback" not in stderr
        result = json.loads(stdout)
        client = MlflowClient(tracking_uri=base)
        exp = client.get_experiment_by_name("plasticity")
        runs = client.search_runs([exp.experiment_id])
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        run_id = runs[0].info.run_id
        expected: dict[str, list] = {}
        for e in _events(out):
            if e["event"] == "metrics" and e["step"] is not None:
                for k, v in e["metrics"].items():
                    expected.setdefault(k, []).append((e["step"], v))
        assert len(expected["evolution/loss_best"]) == 400
        for key, points in expected.items():
            got = [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
            assert sorted(s for s, _ in got) == sorted(s for s, _ in points), key  # once each
            values = dict(got)
            for step, v in points:  # events.jsonl writes a non-finite value as null
                assert (math.isnan(values[step]) if v is None
                        else math.isclose(values[step], v, rel_tol=1e-6)), (key, step)
        assert runs[0].data.metrics["evolve/generations"] == result["generations"] == 400
    finally:
        if run is not None and run.poll() is None:
            _stop(run)
        _stop(server, signal.SIGTERM)
        _stop(server)
