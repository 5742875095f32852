"""Starting or joining Ray, always with Ray's token authentication on (docs/security.md).

Ray's processes (GCS, raylet, object manager, workers) listen on every interface and cannot be
bound to loopback; what keeps others from running code on them is Ray's token: with
``RAY_AUTH_MODE=token`` every RPC must carry the cluster's token, and a client without it is
refused. ``plasticity/__init__.py`` sets ``RAY_AUTH_MODE=token`` unless the environment already
sets a mode (Ray reads the mode once, when it is imported, so it must be set before ``import
ray``). A local Ray started here creates its token in ``~/.ray/auth_token`` the first time (Ray
writes it world-readable; :func:`init` makes it 0600); a client of an existing cluster uses the
token Ray finds: ``$RAY_AUTH_TOKEN``, the file ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``.

:func:`check_cluster` asks an existing cluster's GCS once, before ``ray.init`` (which would wait
20 s and then report only "Failed to connect"), so a missing or wrong token is one line naming
the fix, in well under a second.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from . import PlasticityError

MODE = "RAY_AUTH_MODE"
FIX = ("copy the cluster's token (`ray get-auth-token` on its head) to ~/.ray/auth_token on this "
       "machine, or set RAY_AUTH_TOKEN_PATH to a file holding it")
_warned = False


def token_source() -> str | None:
    """Where Ray will take this client's token from (None: nowhere)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "$RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return os.environ["RAY_AUTH_TOKEN_PATH"]
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() and default.stat().st_size else None


def token_problem() -> str | None:
    """Why Ray, in token mode, would find no usable token here (its C++ loader aborts the
    process on some of these instead of raising), else None."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        f = Path(path).expanduser()
        return None if f.is_file() and f.stat().st_size else f"RAY_AUTH_TOKEN_PATH={path} is " \
            "missing or empty"
    return None if token_source() else "this machine has no Ray token"


def auth_error(address: str) -> PlasticityError:
    """The one-line error for a cluster that refused this client's token."""
    mode = os.environ.get(MODE, "")
    if mode.lower() != "token":
        return PlasticityError(f"the Ray cluster at {address} requires its token, but {MODE}={mode} "
                               f"here: unset {MODE} (plasticity then uses the token) and {FIX}")
    what = token_problem() or f"it refused the token from {token_source()}"
    return PlasticityError(f"the Ray cluster at {address} refused this client ({what}): {FIX}")


def warn_if_disabled() -> None:
    """One warning line when the user's environment switched Ray's authentication off."""
    global _warned
    mode = os.environ.get(MODE, "token")
    if mode.lower() != "token" and not _warned:
        _warned = True
        print(f"plasticity: warning: {MODE}={mode} in your environment: the Ray started or joined "
              "now has no token authentication, and anyone who can reach this machine's Ray "
              f"ports can run code on it; unset {MODE}", file=sys.stderr)


def _keep_token_private() -> None:
    """Ray creates ``~/.ray/auth_token`` with the umask's mode (0644 under 022): anyone on the
    machine could read the token and run code on the cluster. Ours becomes 0600."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    f = Path.home() / ".ray" / "auth_token"
    try:
        st = f.stat()
        if st.st_uid == os.getuid() and st.st_mode & 0o077:
            f.chmod(0o600)
    except OSError:
        pass


def _split(address: str) -> tuple[str, int] | None:
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_cluster(address: str | None) -> None:
    """An existing cluster's address must accept a connection and this client's token; else one
    line (unreachable, or the token's fix). ``None`` / ``local`` (a new local Ray) pass."""
    if not address or address == "local":
        return
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            address = canonicalize_bootstrap_address("auto") or "auto"
        except Exception:  # noqa: BLE001 - no Ray found here: ray.init says so itself
            return
    hp = _split(address)
    if hp is None:
        return  # not HOST:PORT; ray.init reports it
    try:
        socket.create_connection(hp, timeout=5).close()
    except OSError as exc:
        raise PlasticityError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    if os.environ.get(MODE, "").lower() == "token" and token_problem():
        raise auth_error(address)  # known before asking (and Ray would abort on asking)
    if address.startswith("ray://"):
        return  # Ray Client: ray.init's AuthenticationError is mapped in init()
    import ray
    from ray._raylet import GcsClient

    _sync_mode()
    saved, quiet = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 2)  # Ray's C++ client logs the refusal on stderr: our one line says it
    try:
        GcsClient(address=f"{hp[0]}:{hp[1]}", cluster_id=None)
    except ray.exceptions.AuthenticationError:
        raise auth_error(address) from None
    except Exception:  # noqa: BLE001 - not our check's business (ray.init reports it)
        return
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(quiet)


def _sync_mode() -> None:
    """Make Ray see the mode now in the environment. Ray caches it when imported: after an
    ``import ray`` that came before ``import plasticity`` it would still think authentication is
    off, create no token, and the GCS it starts (which reads the environment) would die for want
    of one. Ray's own ``ray.init`` refreshes the cache the same way when it turns token mode on."""
    import ray

    try:
        from ray._raylet import AuthenticationMode, Config, get_authentication_mode
    except ImportError:  # another Ray: nothing cached this way
        return
    if os.environ.get(MODE, "").lower() == "token" and not ray.is_initialized() and \
            get_authentication_mode() != AuthenticationMode.TOKEN:
        Config.initialize("")


def init(address: str | None = None, **kwargs):
    """``ray.init`` for a new local Ray (``address`` None or ``local``) or an existing cluster,
    without the dashboard, with the token; failures to join are one-line PlasticityErrors."""
    _sync_mode()
    check_cluster(address)
    warn_if_disabled()
    local = not address or address == "local"
    problem = token_problem()
    if local and problem and problem.startswith("RAY_AUTH_TOKEN_PATH") and \
            os.environ.get(MODE, "").lower() == "token":
        raise PlasticityError(f"cannot start a local Ray: {problem} (unset it: a local Ray makes "
                              "its own token in ~/.ray/auth_token)")
    import ray

    try:
        ctx = ray.init(address=address, include_dashboard=False, **kwargs)
        _keep_token_private()
        return ctx
    except ray.exceptions.AuthenticationError:
        raise auth_error(address or "local") from None
    except (ConnectionError, ValueError, RuntimeError) as exc:
        if local:
            raise PlasticityError(f"could not start a local Ray: {str(exc).splitlines()[0][:200]}") \
                from None
        raise PlasticityError(f"cannot reach the Ray cluster at {address}: "
                              f"{str(exc).splitlines()[0][:200]}") from None
