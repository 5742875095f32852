"""The platform subcommands without a config of their own: ``sweep``, ``ui`` and ``reproduce``.

``cli.build_parser`` calls :func:`add_parsers`; ``cli.run`` hands these commands to :func:`run`.
Heavy imports (Ray, MLflow) happen only when a command runs. :func:`prepare_command` builds a
registered command's config and argument namespace from plain fields: sweep trials and
reproduce stages run handlers through it exactly as ``plasticity <command> --set ...`` would.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from . import PlasticityError

NAMES = ("sweep", "ui", "reproduce")


def add_parsers(sub, shared) -> None:
    """Add ``sweep``, ``ui`` and ``reproduce`` to the ``plasticity`` subparsers."""
    p = sub.add_parser("sweep", help="run a named Ray Tune search space, tracked in MLflow")
    p.add_argument("space", help="search space name (search_spaces.SPACES: smoke, fig3_transfer, "
                   "...); --preset replaces the space's command preset, --set fixes a field")
    p.add_argument("--samples", type=int, default=1, help="samples per grid point (Tune num_samples)")
    p.add_argument("--scheduler", default="none", choices=("none", "asha", "pbt"))
    p.add_argument("--address", help="Ray cluster address (default: a new local Ray)")
    p.add_argument("--resume", action="store_true", help="resume the sweep in --out after a crash")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float,
                   help="GPUs per trial (default: the space's, when the cluster has GPUs; else 0)")
    shared(p)
    p = sub.add_parser("reproduce", help="the whole study in one command, tracked in MLflow")
    shared(p)
    p.add_argument("--stages", help="comma-separated stage names to run (default: all)")
    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 for the tracking store")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--tracking-uri", help="store (default as for every command: sqlite:///mlflow.db)")


def prepare_command(name: str, preset: str | None, sets: dict, out: Path, seed: int | None = None):
    """``(command, cfg, args)`` for ``plasticity NAME --preset PRESET --set k=v ... --out OUT``,
    with the command's own argument defaults (e.g. ``--rule``, ``--resume``) in ``args``."""
    from .cli import all_commands, build_parser

    commands = all_commands()
    if name not in commands:
        raise PlasticityError(f"unknown command '{name}': available are {', '.join(commands)}")
    argv = [name, "--out", str(out), "--no-progress", "--no-tracking"]
    args = build_parser().parse_args(argv + (["--preset", preset] if preset else []))
    command = commands[name]
    cfg = command.build(name, preset, dict(sets), seed)
    args.out = Path(out)
    Path(out).mkdir(parents=True, exist_ok=True)
    return command, cfg, args


def run_ui(args) -> dict:
    """``mlflow ui`` on 127.0.0.1 for the store; prints the address and waits (Ctrl-C stops)."""
    from .cli import tracking_uri

    uri = tracking_uri(args)
    if uri is None:
        raise PlasticityError("plasticity ui needs a tracking store: pass --tracking-uri")
    if uri.startswith(("http://", "https://")):
        print(f"the tracking server already serves the UI: {uri}")
        return {"command": "ui", "address": uri}
    from .tracking import open_store

    open_store(uri)  # create the schema, fail early on a bad store
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(args.port), "--workers", "1"]
    if uri.startswith("sqlite:///"):
        cmd += ["--default-artifact-root", (Path(uri[len("sqlite:///"):]).parent / "mlruns").as_uri()]
    address = f"http://127.0.0.1:{args.port}"
    log = Path(tempfile.mkstemp(prefix="plasticity-ui-", suffix=".log")[1])
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f, start_new_session=True)
    print(f"MLflow UI for {uri} at {address} (Ctrl-C stops it)", flush=True)

    def _stop(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _stop)  # `kill PID` stops the UI too
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # stop the UI's process group (its server and job runner)
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
        return {"command": "ui", "address": address}
    finally:
        signal.signal(signal.SIGTERM, old)
    if code != 0:
        err = log.read_text().strip().splitlines()
        raise PlasticityError(f"mlflow ui exited with code {code}: {err[-1] if err else ''} "
                              f"(log: {log})")
    return {"command": "ui", "address": address}


def run(args: argparse.Namespace) -> dict:
    """Run a platform command; returns its result dict."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.command == "ui":
        return run_ui(args)
    if args.command == "sweep":
        from .sweep import run_sweep

        return run_sweep(args)
    from .reproduce import run_reproduce

    return run_reproduce(args)
