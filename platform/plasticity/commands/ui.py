"""``plasticity ui``: the MLflow UI on 127.0.0.1 for the tracking store, opened on the
experiment's training runs (MLflow 3 reads the view from the address: ``#/experiments/<id>/runs
?workflowType=machine_learning``; without it the UI opens in its GenAI view)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import PlasticityError
from .base import Command, require_tracking


def port_flag(p) -> None:
    p.add_argument("--port", type=int, default=5000)


def ui_handler(_cfg, ctx) -> dict:
    """``mlflow ui`` on 127.0.0.1 for the store; prints the address of the experiment's training
    runs and waits (Ctrl-C stops)."""
    uri = require_tracking(ctx, "ui")
    from ..tracking import open_store

    store = open_store(uri)  # create the schema, fail early on a bad store
    if uri.startswith(("http://", "https://")):
        address = runs_address(uri, store.experiment_id())
        print(f"the tracking server already serves the UI: {address}")
        return {"command": "ui", "address": address}
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(ctx.options["port"]), "--workers", "1"]
    if uri.startswith("sqlite:///"):
        cmd += ["--default-artifact-root", (Path(uri[len("sqlite:///"):]).parent / "mlruns").as_uri()]
    address = runs_address(f"http://127.0.0.1:{ctx.options['port']}", store.experiment_id())
    print(f"MLflow UI for {uri} at {address} (Ctrl-C stops it)", flush=True)
    serve(cmd, "mlflow ui", None)
    return {"command": "ui", "address": address}


def runs_address(base: str, experiment_id: str) -> str:
    """The UI's page of the experiment's training runs (not its GenAI view)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def serve(cmd: list[str], what: str, env: dict | None) -> None:
    """Run a server's process group until it exits (an error: its last log line) or until
    Ctrl-C / SIGTERM, which stop the whole group (the server and its workers)."""
    log = Path(tempfile.mkstemp(prefix="plasticity-server-", suffix=".log")[1])
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f, start_new_session=True,
                                env=env)

    def _stop(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _stop)  # `kill PID` stops the server too
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # stop the process group (its server and job runner)
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # workers that outlived their parent
        except ProcessLookupError:
            pass
        return
    finally:
        signal.signal(signal.SIGTERM, old)
    if code != 0:
        err = [ln for ln in log.read_text().strip().splitlines() if ln.strip()]
        raise PlasticityError(f"{what} exited with code {code}: {err[-1][:300] if err else ''} "
                              f"(log: {log})")


COMMAND = Command("ui", "start the MLflow UI on 127.0.0.1 for the tracking store", ui_handler,
                  flags="tracking",
                  arguments=port_flag, options=lambda a: {"port": a.port})
