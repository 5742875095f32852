"""MLflow tracking: the sink's batching and param rules, rules logged and registered, bad stores
and references as one-line errors, and a real `mlflow server` over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from plasticity.tracking import open_store
from test_cli import assert_one_line_error, in_process


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating the schema takes seconds)."""
    return open_store(f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db")


def _runs(store, name="plasticity"):
    exp = store.client.get_experiment_by_name(name)
    return [] if exp is None else store.client.search_runs([exp.experiment_id], max_results=1000)


def test_sink_batches_within_mlflow_limits_and_never_rewrites_a_param(store, monkeypatch):
    sizes = []
    real = store.client.log_batch

    def spy(run_id, metrics=(), params=(), tags=()):
        sizes.append((len(metrics), len(params), len(tags)))
        return real(run_id, metrics=metrics, params=params, tags=tags)

    monkeypatch.setattr(store.client, "log_batch", spy)
    sink = store.sink("unit", experiment="unit")
    sink.params({f"p{i}": i for i in range(250)} | {"nested": {"a": 1}})
    for step in range(5):
        sink.metrics({f"m/x{i}": i * step for i in range(500)} | {"bad key=1": 1.0}, step=step)
    sink.params({"p0": 7, "p1": 1})  # PBT-style mutation of p0, p1 unchanged
    sink.close()
    assert sizes and all(m <= 1000 and p <= 100 and t <= 100 for m, p, t in sizes)
    assert sum(m for m, _, _ in sizes) == 5 * 501 + 1
    run = store.client.get_run(sink.run_id)
    assert len(run.data.params) == 251 and run.data.params["p0"] == "0"
    assert run.data.params["nested.a"] == "1"
    assert run.data.metrics["hparam/p0"] == 7.0 and "hparam/p1" not in run.data.metrics
    assert "bad key_1" in run.data.metrics
    hist = store.client.get_metric_history(sink.run_id, "m/x3")
    assert [h.step for h in hist] == [0, 1, 2, 3, 4] and hist[-1].value == 12
    assert run.info.status == "FINISHED"


def test_a_run_that_fails_before_output_leaves_nothing(store):
    before = len(_runs(store, "unit"))
    sink = store.sink("doomed", experiment="unit")
    sink.params({"a": 1})
    sink.close("FAILED")
    assert sink.run_id is None and len(_runs(store, "unit")) == before


def test_meta_train_logs_and_registers_its_rule_then_train_uses_it(store, tmp_path, capsys):
    uri = ["--tracking-uri", store.uri, "--no-progress"]
    proc = in_process(capsys, "meta-train", "--preset", "smoke", "--out", str(tmp_path / "mt"), *uri)
    assert proc.returncode == 0, proc.stderr
    assert "models:/gd-halfspace-T1/" in proc.stderr
    version = proc.stderr.split("models:/gd-halfspace-T1/")[1].split()[0]
    run = [r for r in _runs(store) if r.data.tags.get("plasticity.command") == "meta-train"][0]
    assert run.data.params["lr"] == "0.01" and run.data.params["rule.meta-train.provenance.method"] == "gd"
    assert run.data.tags["rule.meta-train.dataset"] == "halfspace"
    assert "meta/loss" in run.data.metrics and "meta-train/final_loss" in run.data.metrics
    arts = {a.path for a in store.client.list_artifacts(run.info.run_id, "rules/meta-train")}
    assert arts == {"rules/meta-train/rule.json", "rules/meta-train/heatmap.png"}
    assert store.client.get_model_version("gd-halfspace-T1", version).run_id == run.info.run_id

    n = len(_runs(store))
    proc = in_process(capsys, "train", "--preset", "smoke", "--rule", f"models:/gd-halfspace-T1/{version}",
                      "--json", "--out", str(tmp_path / "tr"), *uri)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    saved = json.loads((tmp_path / "mt" / "rule.json").read_text())
    assert result["rule_provenance"]["method"] == "gd"
    assert result["rule_provenance"]["config"] == saved["provenance"]["config"]
    assert len(_runs(store)) == n + 1

    proc = in_process(capsys, "train", "--preset", "smoke", "--rule", "models:/gd-halfspace-T1/999",
                      "--out", str(tmp_path / "tr2"), *uri)
    assert_one_line_error(proc, "gd-halfspace-T1", "999", "not found")
    proc = in_process(capsys, "train", "--preset", "smoke", "--rule", "models:/no-such-rule/1",
                      "--out", str(tmp_path / "tr3"), *uri)
    assert_one_line_error(proc, "no-such-rule")
    assert len(_runs(store)) == n + 1  # nothing half-written


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("uri, needle", [
    ("http://127.0.0.1:{port}", "unreachable"),
    ("sqlite:////no/such/folder/mlflow.db", "does not exist"),
    ("ftp://example", "not supported"),
])
def test_unusable_tracking_uri_is_one_line_exit_2(uri, needle, tmp_path, capsys):
    uri = uri.format(port=free_port())
    proc = in_process(capsys, "train", "--preset", "smoke", "--tracking-uri", uri,
                      "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, needle)


def _rest(base: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.loads(r.read())


def test_mlflow_server_over_http(tmp_path, capsys):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    server = subprocess.Popen(
        [mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        proc = in_process(capsys, "meta-train", "--preset", "smoke", "--tracking-uri", base,
                          "--no-progress", "--out", str(tmp_path / "mt"))
        assert proc.returncode == 0, proc.stderr
        exp = _rest(base, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=plasticity")
        runs = _rest(base, "/api/2.0/mlflow/runs/search",
                     {"experiment_ids": [exp["experiment"]["experiment_id"]]})["runs"]
        assert len(runs) == 1 and runs[0]["info"]["status"] == "FINISHED"
        metrics = {m["key"] for m in runs[0]["data"]["metrics"]}
        params = {p["key"]: p["value"] for p in runs[0]["data"]["params"]}
        assert "meta/loss" in metrics and params["dataset"] == "halfspace"
        arts = _rest(base, "/api/2.0/mlflow/artifacts/list?run_id="
                     f"{runs[0]['info']['run_id']}&path=rules/meta-train")
        assert {f["path"] for f in arts["files"]} == {"rules/meta-train/rule.json",
                                                       "rules/meta-train/heatmap.png"}
        model = _rest(base, "/api/2.0/mlflow/registered-models/get?name=gd-halfspace-T1")
        assert model["registered_model"]["latest_versions"][0]["version"] == "1"
    finally:
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # the group this test started
            server.wait()
        if server.returncode is not None:
            try:
                os.killpg(server.pid, signal.SIGKILL)  # uvicorn workers left in our group, if any
            except ProcessLookupError:
                pass
    assert server.returncode is not None
