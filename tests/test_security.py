"""Static checks of the source tree: nothing unpickles, nothing reaches a shell, nothing listens
beyond loopback unless asked, nothing switches Ray's token authentication off. Cheap, and they
fail the moment a regression is written."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("platform", "trainables", "search_spaces", "bench")
                 for p in (ROOT / d).rglob("*.py"))


def _calls(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_the_tree_has_sources():
    assert len(SOURCES) > 20


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unpickling_and_no_shell(path):
    text = path.read_text()
    for banned in ("import pickle", "from pickle", "import dill", "cloudpickle.load", "import shelve",
                   "os.system(", "os.popen("):
        assert banned not in text, f"{path}: {banned}"
    for node, name in _calls(path):
        kw = {k.arg: k.value for k in node.keywords}
        assert name not in ("eval", "exec"), f"{path}:{node.lineno}: {name}() of a string"
        if name in ("torch.load",):
            assert "weights_only" in kw and ast.literal_eval(kw["weights_only"]) is True, \
                f"{path}:{node.lineno}: torch.load without weights_only=True"
        if name.startswith("subprocess.") or name in ("Popen", "run", "check_call", "check_output"):
            shell = kw.get("shell")
            assert shell is None or ast.literal_eval(shell) is False, \
                f"{path}:{node.lineno}: a subprocess with shell=True"
            if node.args:
                assert not isinstance(node.args[0], (ast.Constant, ast.JoinedStr)), \
                    f"{path}:{node.lineno}: a subprocess given one command string (use a list)"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_listeners_bind_to_loopback(path):
    for node, name in _calls(path):
        kw = {k.arg: k.value for k in node.keywords}
        if name == "ray.init":
            assert ("include_dashboard" in kw or "dashboard_host" in kw), \
                f"{path}:{node.lineno}: ray.init without include_dashboard / dashboard_host"
            host = kw.get("dashboard_host")
            if isinstance(host, ast.Constant):
                assert host.value == "127.0.0.1", f"{path}:{node.lineno}: dashboard on {host.value}"
    text = path.read_text()
    assert '"0.0.0.0"' not in text and "'0.0.0.0'" not in text, f"{path}: binds to 0.0.0.0"


# Ray's token authentication switched off, in any of the forms a file can do it: shell / Makefile
# / YAML assignments (`X=disabled`, `X := disabled`, `X: disabled`), Python (`environ["X"] =`,
# `setdefault("X", ...)`, `{"X": ...}`), Ray's `_system_config` ("AUTH_MODE": ...) and Kubernetes
# env lists (`name: X` / `value: ...`). This file's own patterns do not match themselves.
_OFF = "disabled"
_DISABLES_RAY_AUTH = re.compile(
    r"RAY_AUTH_MODE[\"'\]\s]*(?::=|=|:|,)\s*[\"']?" + _OFF
    + r"|AUTH_MODE[\"']\s*:\s*[\"']" + _OFF
    + r"|RAY_AUTH_MODE\W{1,40}value\W{1,10}" + _OFF, re.IGNORECASE)


def _repository_files() -> list[Path]:
    """Every file of the repository (git's list; without git, the tree minus build output)."""
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True,
                               timeout=60).stdout.decode().split("\0")
        files = [ROOT / n for n in names if n]
    except (OSError, subprocess.SubprocessError):
        skip = {".git", ".venv", "runs", "data", "mlruns", "__pycache__", ".pytest_cache"}
        files = [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.parts)]
    return [f for f in files if f.is_file()]


def test_no_file_in_the_repository_disables_rays_authentication():
    files = _repository_files()
    assert any(f.name == "Makefile" for f in files) and any(f.suffix == ".yaml" for f in files)
    hits = []
    for f in files:
        try:
            text = f.read_text(errors="ignore")
        except OSError:
            continue
        hits += [f"{f.relative_to(ROOT)}: {m.group(0)!r}" for m in _DISABLES_RAY_AUTH.finditer(text)]
    assert not hits, hits
    # the patterns do catch what the project used to do
    for line in ("export RAY_AUTH_MODE := " + _OFF, "RAY_AUTH_MODE=" + _OFF + " ray start --head",
                 f'os.environ.setdefault("RAY_AUTH_MODE", "{_OFF}")',
                 f'os.environ["RAY_AUTH_MODE"] = "{_OFF}"', f'_system_config={{"AUTH_MODE": "{_OFF}"}}',
                 f"- name: RAY_AUTH_MODE\n  value: {_OFF}"):
        assert _DISABLES_RAY_AUTH.search(line), line


def test_the_package_turns_rays_token_authentication_on():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    code = "import os, plasticity; print(os.environ['RAY_AUTH_MODE'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.stdout.strip() == "token", out.stderr


def test_every_cluster_node_gets_rays_token_and_token_mode():
    """cluster.yaml as Ray's docs describe token authentication for the cluster launcher: the
    token file mounted on every node, RAY_AUTH_MODE=token for every shell and every ray start."""
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert cfg["file_mounts"].get("/home/ubuntu/.ray/auth_token") == "~/.ray/auth_token"
    assert any("export RAY_AUTH_MODE=token" in c for c in cfg["initialization_commands"])
    starts = [c for k in ("head_start_ray_commands", "worker_start_ray_commands")
              for c in cfg[k] if "ray start" in c]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ") for c in starts), starts
    server = [c for c in cfg["head_start_ray_commands"] if "5000" in c]
    assert len(server) == 1 and "plasticity server" in server[0], server  # MLflow with basic auth
    assert cfg["file_mounts"].get("/home/ubuntu/.mlflow/credentials") == "~/.mlflow/credentials"
