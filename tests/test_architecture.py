"""The layering a reviewer can check statically (issue: one entry-point layer): no import cycles
among the project's modules (lazy, in-function imports included), the core never imports the
command layer, no private name crosses modules, and every command's --help and ``config`` are
generated from its dataclass."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
from plasticity.cli import build_parser, fields_help, run
from plasticity.commands import MODULES, all_commands, config_commands
from plasticity.config import field_docs

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"plasticity": ROOT / "platform" / "plasticity", "trainables": ROOT / "trainables",
            "search_spaces": ROOT / "search_spaces"}
COMMAND_LAYER = ("plasticity.cli", "plasticity.__main__", "plasticity.commands", "trainables")


def project_modules() -> dict[str, Path]:
    out = {}
    for top, root in PACKAGES.items():
        for f in root.rglob("*.py"):
            parts = [top, *f.relative_to(root).with_suffix("").parts]
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[tuple[str, str | None]]]:
    """module -> {(imported project module, imported name or None)}, every import statement."""
    def resolve(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    out = {}
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                found |= {(r, None) for a in node.names if (r := resolve(a.name))}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                for a in node.names:
                    sub = resolve(f"{base}.{a.name}")
                    if sub == f"{base}.{a.name}":  # a submodule
                        found.add((sub, None))
                    elif (r := resolve(base)):
                        found.add((r, a.name))
        out[m] = {(t, n) for t, n in found if t != m}
    return out


MODS = project_modules()
IMPORTS = imports(MODS)


def test_no_import_cycles() -> None:
    edges = {m: {t for t, _ in v} for m, v in IMPORTS.items()}
    cycles, index, low, stack, on = [], {}, {}, [], set()

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                on.discard(w)
                comp.append(w)
            on.discard(v)
            if comp:
                cycles.append(sorted([v, *comp]))

    for v in edges:
        if v not in index:
            visit(v)
    assert len(MODS) > 50 and sum(map(len, edges.values())) > 100  # the graph was really read
    assert cycles == []


def test_the_checker_sees_a_cycle(tmp_path) -> None:
    """The cycle test can fail: two modules importing each other lazily are found."""
    (tmp_path / "a.py").write_text("def f():\n    from . import b\n")
    (tmp_path / "b.py").write_text("from .a import f\n")
    (tmp_path / "__init__.py").write_text("")
    mods = {"pkg": tmp_path / "__init__.py", "pkg.a": tmp_path / "a.py", "pkg.b": tmp_path / "b.py"}
    got = imports(mods)
    assert ("pkg.b", None) in got["pkg.a"] and ("pkg.a", "f") in got["pkg.b"]


def test_the_core_never_imports_the_command_layer() -> None:
    bad = [f"{m} imports {t}" for m, v in IMPORTS.items() if not m.startswith(COMMAND_LAYER)
           for t, _ in v if t.startswith(COMMAND_LAYER)]
    assert bad == []


def test_no_private_name_is_imported_from_another_module() -> None:
    bad = [f"{m}: from {t} import {n}" for m, v in IMPORTS.items() for t, n in v
           if n is not None and n.startswith("_") and not n.startswith("__")]
    assert bad == []
    tests = imports({**MODS, **{f"tests.{f.stem}": f for f in (ROOT / "tests").glob("*.py")}})
    bad = [f"{m}: from {t} import {n}" for m, v in tests.items() for t, n in v
           if m.startswith("tests.") and n is not None and n.startswith("_")
           and not n.startswith("__")]
    assert bad == []


def test_every_registered_command_is_one_module_with_a_command() -> None:
    commands = all_commands()
    assert list(commands) == list(MODULES)
    for name, command in commands.items():
        assert command.name == name and command.help
        if command.config is not None:
            assert "smoke" in command.presets, name  # every config command has a smoke preset
            for preset in command.presets:
                command.build(preset)  # every preset builds


@pytest.mark.parametrize("name", sorted(config_commands()))
def test_every_config_field_has_a_one_line_doc(name) -> None:
    cls = config_commands()[name].config
    docs = field_docs(cls)
    missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
    assert missing == []


def test_train_help_lists_fields_with_defaults(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for line in ("neurons = 100", "k = 50", "T = 1", 'rule = "perceptron"'):
        assert line in text, line
    assert "|V|, hidden neurons" in text
    assert fields_help(config_commands()["train"]) in text


def test_config_prints_the_resolved_config_and_set_round_trips(capsys) -> None:
    assert run(["config", "train", "--preset", "smoke", "--set", "neurons=60", "--set", "k=30"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["n_train"] == config_commands()["train"].presets["smoke"]["n_train"]
    assert (cfg["neurons"], cfg["k"]) == (60, 30)
    sets = [a for k, v in cfg.items() for a in ("--set", f"{k}={json.dumps(v).strip(chr(34))}")]
    assert run(["config", "train", *sets]) == 0
    assert json.loads(capsys.readouterr().out) == cfg
    assert run(["config", "meta-train", "--dynamics", "reference"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert (meta["recurrence"], meta["firing"], meta["meta_loss"]) == ("code", "topk", "softmax")
    assert run(["config", "compare", "--dynamics", "reference"]) == 0  # GD of compare: its loss too
    cmp = json.loads(capsys.readouterr().out)
    assert (cmp["recurrence"], cmp["firing"], cmp["meta_loss"]) == ("code", "topk", "softmax")


def test_the_worked_example_command_of_the_docs_runs(monkeypatch, tmp_path, capsys) -> None:
    """docs/extending.md's example command, executed as written: one module plus one registry
    line make a command with --help, config, presets and a tracked run."""
    import re
    import sys
    import types

    import plasticity.commands as registry

    text = (ROOT / "docs" / "extending.md").read_text()
    code = re.search(r"```python\n# platform/plasticity/commands/shape.py\n(.*?)```", text, re.S).group(1)
    module = types.ModuleType("plasticity.commands.shape")
    module.__package__ = "plasticity.commands"
    monkeypatch.setitem(sys.modules, "plasticity.commands.shape", module)
    exec(compile(code, "shape.py", "exec"), module.__dict__)  # noqa: S102 - our own docs' code
    monkeypatch.setitem(registry.MODULES, "shape", "shape")
    assert run(["shape", "--preset", "smoke", "--no-tracking", "--out", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.strip() == "40 x 20"
    assert (tmp_path / "s" / "events.jsonl").is_file()
    assert run(["config", "shape", "--set", "label=x"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] == "x"
    assert "label = \"-\"" in fields_help(registry.get("shape"))
