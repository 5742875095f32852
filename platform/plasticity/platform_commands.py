"""The platform subcommands without a config of their own: ``sweep``, ``ui``, ``server`` and
``reproduce``.

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

NAMES = ("sweep", "ui", "server", "reproduce", "log")


def add_parsers(sub, shared) -> None:
    """Add ``sweep``, ``ui``, ``server`` and ``reproduce`` to the ``plasticity`` subparsers."""
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
    p = sub.add_parser("log", help="log a run's output folder (its events.jsonl) to the tracking "
                       "store: a run whose tracking failed")
    p.add_argument("folder", type=Path, help="the run's output folder (--out)")
    p.add_argument("--tracking-uri", help="store (default as for every command: sqlite:///mlflow.db)")
    p.add_argument("--json", action="store_true", help="print one JSON result object on stdout")
    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 for the tracking store")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--tracking-uri", help="store (default as for every command: sqlite:///mlflow.db)")
    p = sub.add_parser("server", help="an MLflow tracking server with basic auth (MLflow's "
                       "--app-name basic-auth) for the store; credentials from "
                       "$MLFLOW_TRACKING_USERNAME/$MLFLOW_TRACKING_PASSWORD or ~/.mlflow/credentials")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; a cluster head: its private address)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--tracking-uri", help="store (default as for every command: sqlite:///mlflow.db)")
    p.add_argument("--auth-dir", type=Path, help="the server's user database and secret key "
                   "(default ~/.mlflow/plasticity-auth, created 0700)")


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
    print(f"MLflow UI for {uri} at {address} (Ctrl-C stops it)", flush=True)
    _serve(cmd, "mlflow ui", None)
    return {"command": "ui", "address": address}


def _serve(cmd: list[str], what: str, env: dict | None) -> None:
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


def _credentials() -> tuple[str, str]:
    """The admin's user name and password: the environment, else ~/.mlflow/credentials (the
    same places MLflow's client reads them from, so the server and its clients agree)."""
    from mlflow.utils.credentials import _get_credentials_path, read_mlflow_creds

    creds = read_mlflow_creds()
    if not creds.username or not creds.password:
        raise PlasticityError("plasticity server needs credentials: set MLFLOW_TRACKING_USERNAME "
                              "and MLFLOW_TRACKING_PASSWORD, or write them to ~/.mlflow/credentials "
                              "(chmod 600; see the README, Security)")
    if len(creds.password) < 12:
        raise PlasticityError("the tracking password is shorter than 12 characters, which MLflow's "
                              "basic auth refuses: choose a longer one")
    path = Path(_get_credentials_path())
    if not os.environ.get("MLFLOW_TRACKING_PASSWORD") and path.is_file():
        st = path.stat()
        if st.st_mode & 0o077 or st.st_uid != os.getuid():
            raise PlasticityError(f"{path} holds the server's password but others can read it "
                                  f"(mode {st.st_mode & 0o777:o}): chmod 600 {path}")
    return creds.username, creds.password


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PlasticityError(f"{path} holds the server's users and secret key but is not private "
                              f"to you (mode {st.st_mode & 0o777:o}): chmod 700 {path}")
    return path


def _secret_key(auth_dir: Path) -> str:
    """The Flask secret key (CSRF) the basic-auth app needs: $MLFLOW_FLASK_SERVER_SECRET_KEY, else
    one made once in ``auth_dir/secret_key`` (0600)."""
    import secrets

    key = os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY")
    if key:
        return key
    f = auth_dir / "secret_key"
    if not f.is_file():
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    return f.read_text().strip()


def run_server(args) -> dict:
    """``mlflow server --app-name basic-auth`` for the store: every request but /health needs a
    user's credentials (401 without). The admin user is created on first start from the
    credentials (env or ~/.mlflow/credentials); the password is handed to MLflow through its
    environment only, never written by us. Ctrl-C stops it."""
    from .cli import tracking_uri

    uri = tracking_uri(args)
    if uri is None:
        raise PlasticityError("plasticity server needs a tracking store: pass --tracking-uri")
    if uri.startswith(("http://", "https://")):
        raise PlasticityError(f"{uri} is a server already: pass the store it should serve "
                              "(sqlite:///FILE.db, postgresql://...)")
    user, password = _credentials()
    auth_dir = _private_dir(Path(args.auth_dir or Path.home() / ".mlflow" / "plasticity-auth")
                            .expanduser().resolve())
    from .tracking import open_store

    open_store(uri)  # create the schema, fail early on a bad store
    ini = auth_dir / "basic_auth.ini"
    ini.write_text("[mlflow]\n"
                   "default_permission = READ\n"
                   f"database_uri = sqlite:///{auth_dir / 'basic_auth.db'}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                   # a password check is a PBKDF2 hash per request: cached for 60 s (one worker,
                   # so a password changed through the API takes effect at once)
                   "auth_cache_ttl_seconds = 60\n")
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_USERNAME": user,
           "MLFLOW_AUTH_ADMIN_PASSWORD": password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret_key(auth_dir)}
    artifacts = (Path(uri[len("sqlite:///"):]).parent if uri.startswith("sqlite:///")
                 else Path.cwd()) / "mlartifacts"
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin), "server", "--app-name", "basic-auth", "--backend-store-uri", uri,
           "--artifacts-destination", str(artifacts), "--host", args.host, "--port", str(args.port),
           "--workers", "1"]
    host = f"[{args.host}]" if ":" in args.host else args.host
    address = f"http://{host}:{args.port}"
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"plasticity: warning: serving on {args.host}: plain HTTP, so passwords and results "
              "cross the network unencrypted; beyond a private network put TLS in front",
              file=sys.stderr)
    print(f"MLflow tracking server (basic auth, admin user '{user}') for {uri} at {address} "
          "(Ctrl-C stops it)", flush=True)
    _serve(cmd, "mlflow server", env)
    return {"command": "server", "address": address}


def run_log(args) -> dict:
    """Replay a run's ``events.jsonl`` (params, metrics with their steps, rules, artifacts, its
    end) into a new run of the store, with the folder's result files attached."""
    import json
    import math

    from .cli import tracking_uri

    out = Path(args.folder).resolve()
    events = out / "events.jsonl"
    if not events.is_file():
        raise PlasticityError(f"{out} holds no events.jsonl: give the output folder (--out) of a "
                              "plasticity run")
    uri = tracking_uri(args)
    if uri is None:
        raise PlasticityError("plasticity log needs a tracking store: pass --tracking-uri")
    rows = []
    for line in events.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut off by a kill
    try:
        command = json.loads((out / "result.json").read_text())["command"]
    except (OSError, ValueError, KeyError, TypeError):
        command = out.name.split("-")[0]
    from .rules.io import load_rule
    from .tracking import open_store

    sink = open_store(uri).sink(command, tags={"plasticity.command": command,
                                               "plasticity.logged_from": str(out)}, out=out)
    status = "FAILED"
    for e in rows:
        kind = e.get("event")
        if kind == "params" and isinstance(e.get("params"), dict):
            sink.params(e["params"])
        elif kind == "metrics" and isinstance(e.get("metrics"), dict):
            sink.metrics({k: math.nan if v is None else v for k, v in e["metrics"].items()},
                         e.get("step"))
        elif kind == "rule" and e.get("path") and Path(e["path"]).is_file():
            sink.rule(e["name"], load_rule(e["path"]), Path(e["path"]))
        elif kind == "artifact" and Path(e.get("path", "")).is_file():
            sink.artifact(Path(e["path"]), e.get("subdir"))
        elif kind == "close":
            status = e.get("status", "FINISHED")
    sink.close(status)
    return {"command": "log", "run_id": sink.run_id, "status": status, "events": len(rows),
            "summary": f"logged {out} ({len(rows)} events) as run {sink.run_id} ({status}) in {uri}"}


def run(args: argparse.Namespace) -> dict:
    """Run a platform command; returns its result dict."""
    if args.command == "log":
        return run_log(args)
    if args.command == "ui":
        return run_ui(args)
    if args.command == "server":
        return run_server(args)
    if args.command == "sweep":
        from .sweep import run_sweep

        return run_sweep(args)
    from .reproduce import run_reproduce

    return run_reproduce(args)
