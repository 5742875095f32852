"""Static checks of the source tree: nothing unpickles, nothing reaches a shell, nothing listens
beyond loopback unless asked. Cheap, and they fail the moment a regression is written."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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
