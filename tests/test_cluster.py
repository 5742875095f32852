"""A sweep on a 2-node Ray cluster (``ray.cluster_utils.Cluster`` on this machine, one CPU per
node, Ray's token on) that loses its worker node mid-trial: Tune restarts the trial that was on
it (``sweep --retries``), the trial continues from its evolution checkpoint, every trial ends as
one FINISHED MLflow child run with every step once, and the results equal a sweep without the
fault."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from plasticity.tracking import child_runs, open_store

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["sweep", "lifetime_rules", "--preset", "smoke", "--set", "generations=200", "--seed", "0"]


def _sweep(address: str, out: Path, uri: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}{os.pathsep}{ROOT}",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "plasticity", *SWEEP, "--address", address,
                             "--out", str(out), "--tracking-uri", uri], env=env, cwd=out.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _generation(folder: Path) -> int:
    try:
        return json.loads((folder / "checkpoint.json").read_text())["generation"]
    except (OSError, ValueError, KeyError):
        return 0


def _by_strategy(out: Path) -> dict:
    """strategy -> (result.json, history.json, rule.json) of each trial, without timings and
    the trial's own paths."""
    got = {}
    for d in sorted((out / "trials").iterdir()):
        result = json.loads((d / "result.json").read_text())
        history = json.loads((d / "history.json").read_text())
        got[result["config"]["strategy"]] = (
            {k: v for k, v in result.items() if k not in ("seconds", "resumed_from", "rule")},
            [{k: v for k, v in h.items() if "seconds" not in k} for h in history],
            (d / "rule.json").read_text())
    return got


@pytest.mark.slow  # ~90 s: two 4-trial sweeps on a 2-node cluster
def test_a_sweep_that_loses_a_node_restarts_its_trial_from_the_checkpoint(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=1)
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        out = tmp_path / "faulty"
        proc = _sweep(cluster.address, out, uri)
        # two trials run at once, one per node: remove the worker node once both are >= 5
        # generations in (the one on it is then cut off mid-trial)
        deadline = time.time() + 240
        while True:
            running = [d for d in (out / "trials").glob("*") if _generation(d) >= 5]
            if len(running) >= 2:
                break
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "the sweep's trials did not start"
            time.sleep(0.2)
        cluster.remove_node(worker)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert err.count(": restarted (failure 1; --retries 2)") == 1, err[-3000:]

        result = json.loads((out / "result.json").read_text())
        assert result["errors"] == 0 and len(result["trials"]) == 4
        resumed = {d.name: json.loads((d / "result.json").read_text())["resumed_from"]
                   for d in (out / "trials").iterdir()}
        lost = [t for t, g in resumed.items() if g > 0]
        assert len(lost) == 1 and resumed[lost[0]] >= 5, resumed  # from its checkpoint, not 0

        store = open_store(uri)
        children = child_runs(store, result["parent_run_id"])
        assert sorted(c.data.tags["trial_id"] for c in children) == sorted(resumed)  # one each
        assert all(c.info.status == "FINISHED" for c in children)
        for c in children:  # every step once, with the trial's own values (timings aside)
            events = [json.loads(line) for line in (out / "trials" / c.data.tags["trial_id"]
                                                     / "events.jsonl").read_text().splitlines()]
            steps = [e for e in events if e["event"] == "metrics" and e["step"] is not None]
            assert [e["step"] for e in steps] == list(range(1, 201))
            hist = store.client.get_metric_history(c.info.run_id, "evolution/loss_center")
            assert sorted(m.step for m in hist) == list(range(1, 201))
            assert {m.step: m.value for m in hist} == pytest.approx(
                {e["step"]: e["metrics"]["evolution/loss_center"] for e in steps})

        # the same sweep without the fault (a fresh worker node): the same rules and results
        cluster.add_node(num_cpus=1)
        clean = tmp_path / "clean"
        proc = _sweep(cluster.address, clean, "none")
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert _by_strategy(out) == _by_strategy(clean)
    finally:
        cluster.shutdown()


@pytest.mark.slow  # ~60 s: a lifetime evolution in process, then on a 2-node cluster
def test_lifetime_evolution_on_a_cluster_that_loses_a_node_equals_in_process(tmp_path):
    """Two actors spread over two nodes; the worker node removed mid-run: its actor is replaced
    on the head, and the evolved rule and every generation equal the in-process run's."""
    from ray.cluster_utils import Cluster

    evolve = ["evolve", "--preset", "lifetime-smoke", "--set", "generations=30", "--seed", "3",
              "--tracking-uri", "none", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}{os.pathsep}{ROOT}",
           "OMP_NUM_THREADS": "1"}
    local = subprocess.run([sys.executable, "-m", "plasticity", *evolve, "--out",
                            str(tmp_path / "local")], env=env, capture_output=True, text=True)
    assert local.returncode == 0, local.stderr[-3000:]
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=1)
        out = tmp_path / "cluster"
        proc = subprocess.Popen([sys.executable, "-m", "plasticity", *evolve, "--set", "workers=2",
                                 "--address", cluster.address, "--out", str(out)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240
        while _generation(out) < 3:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "the evolution did not start"
            time.sleep(0.1)
        cluster.remove_node(worker)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    finally:
        cluster.shutdown()
    a, b = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("local", "cluster"))
    assert b["replaced_actors"] >= 1 and a["replaced_actors"] == 0
    rules = [json.loads((d / "rule.json").read_text()) for d in (tmp_path / "local", out)]
    assert [(r["output"], r["rnn"]) for r in rules[:1]] == [(r["output"], r["rnn"]) for r in rules[1:]]
    strip = lambda h: [{k: v for k, v in g.items() if "seconds" not in k} for g in h]  # noqa: E731
    assert strip(json.loads((tmp_path / "local" / "history.json").read_text())) == \
        strip(json.loads((out / "history.json").read_text()))
