"""Ray's token authentication on the project's own local Ray (issue 16).

The cluster is started as `plasticity evolve --set workers=2` starts it (``driver.make_pool``: a
RayPool of two actors on a new local Ray), in a subprocess whose environment names no Ray setting
and whose HOME is fresh, so the project's defaults decide: Ray creates the token in
``$HOME/.ray/auth_token``. Clients are subprocesses on this machine with an empty HOME, connecting
to the GCS address Ray reports (the machine's network address: Ray listens on every interface).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_cli import assert_one_line_error

CLUSTER = r"""
import sys
import ray
from plasticity.commands import config_commands as all_commands
from plasticity.evolution.driver import make_pool

cfg = all_commands()["evolve"].build("smoke", {"workers": 2}, None)
pool = make_pool(cfg, None, "cpu")  # what `plasticity evolve --set workers=2` does
print(ray.get_runtime_context().gcs_address, len(pool.actors), flush=True)
sys.stdin.read()  # until the test closes stdin
pool.close()
"""

# A client that tries what an attacker would: ask the GCS (argv[2] == "gcs"; Ray's C++ aborts
# the process there when token mode has no token at all), then run a remote function.
CLIENT = r"""
import json, sys
import ray
from ray._raylet import GcsClient

out = {}
if sys.argv[2] == "gcs":
    try:
        GcsClient(address=sys.argv[1], cluster_id=None)
        out["gcs"] = "accepted"
    except ray.exceptions.AuthenticationError as exc:
        out["gcs"] = "AuthenticationError: " + str(exc).splitlines()[0]
try:
    ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False)
    out["ran"] = ray.get(ray.remote(num_cpus=0)(lambda: 6 * 7).remote())  # the actors hold the CPUs
except Exception as exc:
    out["ran"] = type(exc).__name__ + ": " + str(exc).splitlines()[0]
print(json.dumps(out))
"""

WRONG = "0123456789abcdef" * 4


def _env(home: Path, **extra) -> dict:
    """This environment without any Ray setting, with ``home`` as HOME, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "HOME": str(home), **extra}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(GCS address, the token file) of a local Ray started the way `evolve` starts it."""
    home = tmp_path_factory.mktemp("cluster-home")
    proc = subprocess.Popen([sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(home, OMP_NUM_THREADS="1"), start_new_session=True)
    try:
        line = proc.stdout.readline().split()
        assert len(line) == 2, proc.stderr.read() if proc.poll() is not None else line
        assert line[1] == "2"
        yield line[0], home / ".ray" / "auth_token"
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _client(address: str, home: Path, gcs: bool = True, **env) -> dict:
    # RAY_gcs_server_port_wait_time_s: a refused ray.init gives up after ~2 s, not 20 s
    proc = subprocess.run([sys.executable, "-c", CLIENT, address, "gcs" if gcs else "-"],
                          capture_output=True, text=True,
                          timeout=120, env=_env(home, RAY_gcs_server_port_wait_time_s="2", **env))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_projects_local_ray_refuses_a_client_without_its_token(cluster, tmp_path):
    address, token = cluster
    assert token.is_file() and len(token.read_text().strip()) >= 32  # Ray made it itself
    assert stat.S_IMODE(token.stat().st_mode) == 0o600  # ray_cluster made it private
    empty = tmp_path / "home"
    empty.mkdir()
    with ThreadPoolExecutor(4) as ex:  # four independent clients at once
        bare, none, wrong, ok = ex.map(lambda kw: _client(address, empty, **kw), [
            {}, {"gcs": False, "RAY_AUTH_MODE": "token"},
            {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": WRONG},
            {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}])
    # no token at all, Ray's default client: the GCS refuses it, no remote function runs
    assert bare["gcs"].startswith("AuthenticationError") and "InvalidAuthToken" in bare["gcs"], bare
    assert bare["ran"] != 42 and "ConnectionError" in bare["ran"], bare
    # token mode but no token: Ray's authentication error before anything is sent
    assert none["ran"].startswith("AuthenticationError") and "no authentication token" in \
        none["ran"], none
    # a wrong token: refused by the GCS
    assert wrong["gcs"].startswith("AuthenticationError") and wrong["ran"] != 42, wrong
    # the same client with the cluster's token connects and runs code
    assert ok == {"gcs": "accepted", "ran": 42}, ok


def test_address_with_a_missing_or_wrong_token_is_one_line_exit_2(cluster, tmp_path):
    address, token = cluster
    empty = tmp_path / "home"
    empty.mkdir()
    cases = [
        (["sweep", "smoke", "--address", address, "--out", str(tmp_path / "sw")], {},
         "this machine has no Ray token"),
        (["evolve", "--preset", "smoke", "--set", "workers=2", "--address", address,
          "--out", str(tmp_path / "ev")], {"RAY_AUTH_TOKEN": WRONG},
         "refused the token from $RAY_AUTH_TOKEN"),
    ]
    for args, env, needle in cases:
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "plasticity", *args, "--no-tracking"],
                              capture_output=True, text=True, timeout=120, env=_env(empty, **env))
        took = time.time() - t0
        assert_one_line_error(proc, f"the Ray cluster at {address}", needle, "RAY_AUTH_TOKEN_PATH",
                              "~/.ray/auth_token")
        assert took < 30, f"{args[0]}: {took:.1f} s"  # the process's imports; the check is ms
    assert not (tmp_path / "sw").exists()  # the sweep checks the cluster before writing
