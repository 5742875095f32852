"""``plasticity server``: an MLflow tracking server with basic auth (MLflow's ``--app-name
basic-auth``) for the store, for many writers (a cluster's trials, several terminals)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .. import PlasticityError
from .base import Command, require_tracking
from .ui import serve


def _credentials() -> tuple[str, str]:
    """The admin's user name and password: the environment, else ~/.mlflow/credentials (the
    same places MLflow's client reads them from, so the server and its clients agree)."""
    from mlflow.utils.credentials import _get_credentials_path, read_mlflow_creds

    creds = read_mlflow_creds()
    if not creds.username or not creds.password:
        raise PlasticityError("plasticity server needs credentials: set MLFLOW_TRACKING_USERNAME "
                              "and MLFLOW_TRACKING_PASSWORD, or write them to ~/.mlflow/credentials "
                              "(chmod 600; see docs/security.md)")
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


def server_flags(p) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; a cluster head: its private address)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--auth-dir", type=Path, help="the server's user database and secret key "
                   "(default ~/.mlflow/plasticity-auth, created 0700)")


def server_handler(_cfg, ctx) -> dict:
    """``mlflow server --app-name basic-auth`` for the store: every request but /health needs a
    user's credentials (401 without). The admin user is created on first start from the
    credentials (env or ~/.mlflow/credentials); the password is handed to MLflow through its
    environment only, never written by us. Ctrl-C stops it."""
    uri = require_tracking(ctx, "server")
    host, port, auth = ctx.options["host"], ctx.options["port"], ctx.options.get("auth_dir")
    if uri.startswith(("http://", "https://")):
        raise PlasticityError(f"{uri} is a server already: pass the store it should serve "
                              "(sqlite:///FILE.db, postgresql://...)")
    user, password = _credentials()
    auth_dir = _private_dir(Path(auth or Path.home() / ".mlflow" / "plasticity-auth")
                            .expanduser().resolve())
    from ..tracking import open_store

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
           "--artifacts-destination", str(artifacts), "--host", host, "--port", str(port),
           "--workers", "1"]
    bracketed = f"[{host}]" if ":" in host else host
    address = f"http://{bracketed}:{port}"
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"plasticity: warning: serving on {host}: plain HTTP, so passwords and results "
              "cross the network unencrypted; beyond a private network put TLS in front",
              file=sys.stderr)
    print(f"MLflow tracking server (basic auth, admin user '{user}') for {uri} at {address} "
          "(Ctrl-C stops it)", flush=True)
    serve(cmd, "mlflow server", env)
    return {"command": "server", "address": address}


COMMAND = Command("server", "an MLflow tracking server with basic auth (MLflow's --app-name "
                  "basic-auth) for the store; credentials from $MLFLOW_TRACKING_USERNAME/"
                  "$MLFLOW_TRACKING_PASSWORD or ~/.mlflow/credentials", server_handler,
                  flags="tracking", arguments=server_flags,
                  options=lambda a: {"host": a.host, "port": a.port, "auth_dir": a.auth_dir})
