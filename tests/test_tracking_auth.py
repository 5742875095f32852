"""The tracking server with authentication (issue 16): `plasticity server` runs MLflow's basic-auth
app on 127.0.0.1 (a free port, started and stopped here), with the admin account from the
environment; the platform's client sends MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from test_cli import assert_one_line_error, in_process
from test_tracking import free_port

USER, PASSWORD = "alice", "correct-horse-battery-staple"


def _env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**env, "HOME": str(home), **extra}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(URL, store folder, HOME) of `plasticity server` with basic auth over a fresh sqlite store."""
    root = tmp_path_factory.mktemp("auth-server")
    home = root / "home"
    home.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "plasticity", "server", "--port", str(port),
         "--tracking-uri", f"sqlite:///{root}/mlflow.db"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env=_env(home, MLFLOW_TRACKING_USERNAME=USER, MLFLOW_TRACKING_PASSWORD=PASSWORD))
    try:
        assert url in proc.stdout.readline()
        deadline = time.time() + 120
        while True:
            try:
                requests.get(url + "/health", timeout=2).raise_for_status()
                break
            except requests.RequestException:
                assert proc.poll() is None, proc.stderr.read()
                assert time.time() < deadline, "the tracking server did not start"
                time.sleep(0.5)
        yield url, root, home
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # plasticity server stops its process group
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of the group left
        except ProcessLookupError:
            pass


def _search(url: str, auth=None) -> requests.Response:
    return requests.post(url + "/api/2.0/mlflow/runs/search", json={"experiment_ids": ["0", "1"]},
                         auth=auth, timeout=20)


def _runs(url: str) -> list:
    exp = requests.get(url + "/api/2.0/mlflow/experiments/get-by-name",
                       params={"experiment_name": "plasticity"}, auth=(USER, PASSWORD), timeout=20)
    if exp.status_code != 200:
        return []
    eid = exp.json()["experiment"]["experiment_id"]
    r = requests.post(url + "/api/2.0/mlflow/runs/search", json={"experiment_ids": [eid]},
                      auth=(USER, PASSWORD), timeout=20)
    r.raise_for_status()
    return r.json().get("runs", [])


def test_server_refuses_requests_without_credentials_and_stores_a_run_with_them(
        server, tmp_path, monkeypatch, capsys):
    url, root, home = server
    auth_dir = home / ".mlflow" / "plasticity-auth"
    assert stat.S_IMODE(auth_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((auth_dir / "secret_key").stat().st_mode) == 0o600
    assert PASSWORD not in "".join(f.read_text(errors="ignore") for f in auth_dir.iterdir()
                                   if f.suffix != ".db")  # the password is never written by us
    for path in ("/api/2.0/mlflow/experiments/search?max_results=1", "/"):
        assert requests.get(url + path, timeout=20).status_code == 401, path
    assert _search(url).status_code == 401
    assert _search(url, auth=(USER, "wrong-password-123")).status_code == 401
    assert _search(url, auth=(USER, PASSWORD)).status_code == 200
    # the platform's client sends the credentials MLflow reads from the environment
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    proc = in_process(capsys, "train", "--preset", "smoke", "--tracking-uri", url, "--no-progress",
                      "--out", str(tmp_path / "tr"))
    assert proc.returncode == 0, proc.stderr
    runs = _runs(url)
    assert len(runs) == 1 and runs[0]["info"]["status"] == "FINISHED"
    assert "train/test_accuracy_mean" in {m["key"] for m in runs[0]["data"]["metrics"]}
    arts = requests.get(url + "/api/2.0/mlflow/artifacts/list", auth=(USER, PASSWORD), timeout=20,
                        params={"run_id": runs[0]["info"]["run_id"], "path": "rules/train"}).json()
    assert {f["path"] for f in arts["files"]} == {"rules/train/rule.json", "rules/train/heatmap.png"}
    # ... and so do MLflow's own credentials file (0600) in place of the environment
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    creds = tmp_path / "home" / ".mlflow" / "credentials"
    creds.parent.mkdir(parents=True)
    creds.write_text(f"[mlflow]\nmlflow_tracking_username = {USER}\n"
                     f"mlflow_tracking_password = {PASSWORD}\n")
    creds.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    from plasticity.tracking import open_store

    store = open_store(url)
    assert "plasticity" in {e.name for e in store.client.search_experiments()}


@pytest.mark.parametrize("creds, needle, process", [
    ({"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": "wrong-password-123"},
     f"401 Unauthorized, user '{USER}'", True),  # a real process: its whole stderr is one line
    ({}, "401 Unauthorized, no user name given", False),
])
def test_bad_credentials_are_one_line_exit_2_and_write_nothing(server, creds, needle, process,
                                                               tmp_path, capsys, monkeypatch):
    url, _, _ = server
    before = len(_runs(url))
    args = ["train", "--preset", "smoke", "--tracking-uri", url, "--no-progress",
            "--out", str(tmp_path / "bad")]
    t0 = time.time()
    if process:
        proc = subprocess.run([sys.executable, "-m", "plasticity", *args], capture_output=True,
                              text=True, timeout=300, env={**_env(tmp_path), **creds})
    else:
        for k, v in _env(tmp_path, **creds).items():
            monkeypatch.setenv(k, v)
        for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            if k not in creds:
                monkeypatch.delenv(k, raising=False)
        proc = in_process(capsys, *args)
    took = time.time() - t0
    assert_one_line_error(proc, f"tracking server {url} refused the credentials", needle,
                          "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    assert took < 60, took  # refused at once, not retried for $PLASTICITY_TRACKING_RETRY_S
    assert not (tmp_path / "bad").exists()
    assert len(_runs(url)) == before  # nothing half-written


def test_server_without_private_credentials_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    args = ("server", "--port", str(free_port()), "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert_one_line_error(in_process(capsys, *args), "needs credentials", "MLFLOW_TRACKING_PASSWORD")
    creds = tmp_path / ".mlflow" / "credentials"
    creds.parent.mkdir()
    creds.write_text(f"[mlflow]\nmlflow_tracking_username = {USER}\n"
                     f"mlflow_tracking_password = {PASSWORD}\n")
    creds.chmod(0o644)  # readable by everyone on the machine
    assert_one_line_error(in_process(capsys, *args), "others can read it", f"chmod 600 {creds}")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "short")
    assert_one_line_error(in_process(capsys, *args), "shorter than 12 characters")
    assert not (tmp_path / "m.db").exists()  # refused before the store is touched


@pytest.mark.parametrize("code, needle", [(401, "refused the credentials (401"),
                                          (403, "(403 Permission denied)")])
def test_a_refused_request_is_not_retried(code, needle):
    """A 401/403 ends at once in one line, unlike an outage (retried for up to retry_s)."""
    from mlflow.exceptions import MlflowException
    from plasticity import PlasticityError
    from plasticity.tracking import RetryingClient, transient

    calls = []

    class Raw:
        def log_batch(self, *a, **kw):
            calls.append(1)
            raise MlflowException(f"API request to endpoint /api/2.0/mlflow/runs/log-batch failed "
                                  f"with error code {code} != 200. Response body: 'denied'")

    client = RetryingClient(Raw(), retry_s=300, uri="http://127.0.0.1:1")
    t0 = time.time()
    with pytest.raises(PlasticityError, match=re.escape(needle)):
        client.log_batch("run")
    assert calls == [1] and time.time() - t0 < 1
    assert not transient(MlflowException(f"failed with error code {code} != 200"))
