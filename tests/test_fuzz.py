"""Property-based fuzzing of everything a user types or hands in: config dicts, ``--set`` flags
and rule files. Each bad input is a one-line PlasticityError (exit code 2 at the CLI), never a
traceback, and nothing is written."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from plasticity import PlasticityError
from plasticity.cli import main
from plasticity.commands.paper_studies import StudyConfig
from plasticity.config import BaselineConfig, MetaConfig, TrainConfig, field_names, from_dict, parse_sets
from plasticity.rules.classic import classic_rule
from plasticity.rules.io import load_rule, rule_to_dict

CONFIGS = (TrainConfig, MetaConfig, BaselineConfig, StudyConfig)
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.text(max_size=12), st.integers(-10**30, 10**30), st.booleans(), st.none(),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(["1e999", "nan", "-inf", "0x10", "1_000", " 3 ", "true", ""]))


def _one_line(exc: BaseException) -> None:
    msg = str(exc)
    assert msg and "\n" not in msg, repr(msg)


@FUZZ
@given(cls=st.sampled_from(CONFIGS), data=st.data())
def test_config_parser_accepts_or_refuses_in_one_line(cls, data):
    keys = st.one_of(st.sampled_from(field_names(cls)), st.text(max_size=8))
    d = data.draw(st.dictionaries(keys, scalars, max_size=6))
    try:
        cfg = from_dict(cls, d)
    except PlasticityError as exc:
        _one_line(exc)
        return
    assert isinstance(cfg, cls)
    for name in field_names(cls):  # whatever got in is finite
        v = getattr(cfg, name)
        if isinstance(v, float):
            assert math.isfinite(v)


def _spellings(name: str) -> list[str]:
    """Ways to write a valid value of MetaConfig field ``name`` (its default and a neighbour), and
    an invalid one."""
    d = getattr(MetaConfig(), name)
    if isinstance(d, bool):
        good = ["true", "off", "1", "No"]
    elif isinstance(d, int):
        good = [str(d), f" {d} ", f"{d}.0", f"{d:_}", str(d + 1)]
    elif isinstance(d, float):
        good = [repr(d), f"{d:e}", repr(d * 2)]
    else:
        good = [d]
    return good + ["nan"]


key_values = st.sampled_from(field_names(MetaConfig)).flatmap(
    lambda k: st.sampled_from(_spellings(k)).map(lambda v: f"{k}={v}"))
set_items = st.one_of(key_values, key_values, key_values, st.text(max_size=20))  # mostly key=value


def _means(value, text: str) -> bool:
    """Whether a config value says what the flag's text said (the CLI's documented reading)."""
    if isinstance(value, bool):
        return value == (text.lower() in ("1", "true", "yes", "on"))
    if isinstance(value, (int, float)):
        return value == float(text)
    return value == text


@FUZZ
@example(items=["neurons=20", "k=10", " lr = 0.5 ", "T=3", "learn=both", "k=8",
                "resample_networks=off", "dataset=relu1"])
@given(items=st.lists(set_items, max_size=5))
def test_set_flags_parse_or_refuse_in_one_line(items):
    try:
        cfg = from_dict(MetaConfig, parse_sets(items))
    except PlasticityError as exc:
        _one_line(exc)
        return
    expected: dict[str, str] = {}  # key=value, both stripped; a repeated key: the last one wins
    for item in items:
        key, _, value = item.partition("=")
        expected[key.strip()] = value.strip()
    # Catches: a flag that is accepted but dropped or misread on its way into the config
    for key, text in expected.items():
        assert _means(getattr(cfg, key), text), (key, text, getattr(cfg, key))


def _run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        with pytest.raises(SystemExit) as exc:
            main(argv)
    return exc.value.code, err.getvalue()


numeric_fields = [f for f in field_names(TrainConfig) if f not in ("dataset", "inputs", "recurrence",
                                                                   "input_weights", "dtype", "rule",
                                                                   "update_on", "output_rows")]


@FUZZ
@given(field=st.sampled_from(numeric_fields),
       junk=st.text(alphabet="abcxyz!?%- ", min_size=1, max_size=8).filter(lambda s: s.strip()),
       unknown=st.text(alphabet="abcdefghij_", min_size=1, max_size=10))
def test_cli_bad_set_is_exit_2_one_line_and_writes_nothing(tmp_path, field, junk, unknown):
    out = tmp_path / "out"
    for sets, needle in (([f"{field}={junk}"], field), ([f"zz_{unknown}=1"], f"'zz_{unknown}'"),
                         ([f"{field}"], "key=value")):
        code, err = _run_cli(["train", "--no-progress", "--out", str(out),
                              *[a for s in sets for a in ("--set", s)]])
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert needle in err, err  # catches: a refusal that does not name what was wrong
        assert not out.exists()


# ---------------------------------------------------------------------------- rule files

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner,
                                                                         max_size=4)),
    max_leaves=12)


def _paths(obj, prefix=()):
    """Every key path into a JSON object."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _good_rules() -> list[dict]:
    return [rule_to_dict(classic_rule(name, T)) for name in ("perceptron", "hebb+perceptron")
            for T in (1, 2, 3)]


@st.composite
def mutated_rule_text(draw) -> str:
    d = draw(st.sampled_from(_good_rules()))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(d) if p]
        path = draw(st.sampled_from(paths))
        parent = d
        for k in path[:-1]:
            parent = parent[k]
        op = draw(st.sampled_from(["set", "delete", "nonfinite", "grow"]))
        if op == "set":
            parent[path[-1]] = draw(json_values)
        elif op == "delete":
            del parent[path[-1]]
        elif op == "nonfinite":
            parent[path[-1]] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        else:  # huge or deep sizes
            parent[path[-1]] = [parent[path[-1]]] * draw(st.integers(2, 300))
    text = json.dumps(d)
    if draw(st.booleans()):
        text = text[:draw(st.integers(0, len(text)))]  # truncated file
    return text


@FUZZ
@given(text=mutated_rule_text())
def test_rule_loader_loads_or_refuses_in_one_line(tmp_path, text):
    path = tmp_path / "rule.json"
    path.write_text(text)
    try:
        rule = load_rule(path)
    except PlasticityError as exc:
        _one_line(exc)
        assert str(path) in str(exc)
        return
    rnn, out = rule.tables()  # what loaded is a usable, finite rule
    assert out.isfinite().all() and (rnn is None or rnn.isfinite().all())


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=mutated_rule_text())
def test_cli_refuses_bad_rule_file_with_exit_2(tmp_path, text):
    path = tmp_path / "rule.json"
    path.write_text(text)
    try:
        load_rule(path)
        return  # a harmless mutation: nothing to refuse
    except PlasticityError:
        pass
    out = tmp_path / "run"
    code, err = _run_cli(["train", "--preset", "smoke", "--no-progress", "--rule", str(path),
                          "--out", str(out)])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (out / "result.json").exists()


def test_oversized_rule_file_is_refused_unread(tmp_path):
    path = tmp_path / "huge.json"
    with path.open("w") as f:
        f.write("[" + "0," * (9 * 2**20) + "0]")
    with pytest.raises(PlasticityError, match="bytes"):
        load_rule(path)


# ---------------------------------------------------------------- every command x every flag

def _every_command() -> list[list[str]]:
    from plasticity.commands import config_commands as all_commands

    return [[name, "--preset", "smoke"] for name in all_commands() if name != "study"] + [
        ["study", "fig3", "--preset", "smoke"], ["sweep", "smoke"], ["reproduce"]]


def _tree(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _bad_inputs() -> list:
    """(command line, what the error line must name), each with the fixtures' files below."""
    cases = []
    for cmd in _every_command():
        name = cmd[0] if cmd[0] != "study" else "study"
        cases.append(pytest.param([*cmd, "--out", "{file}"], "is a file", id=f"{name}-out-file"))
        cases.append(pytest.param([*cmd, "--out", "{file}/sub"], "a file", id=f"{name}-out-in-file"))
        cases.append(pytest.param([*cmd, "--tracking-uri", "ftp://nowhere"], "not supported",
                                  id=f"{name}-tracking-scheme"))
    for uri, needle in (("sqlite:////no/such/folder/m.db", "does not exist"),
                        ("http://127.0.0.1:9", "unreachable"), ("http://", "unreachable"),
                        ("mlflow.db", "not supported"), ("sqlite:///{file}", "cannot be used"),
                        ("postgresql://127.0.0.1:9/db", "cannot be used")):
        cases.append(pytest.param(["train", "--preset", "smoke", "--tracking-uri", uri], needle,
                                  id=f"train-tracking-{uri}"))
    for rule, needle in (("missing.json", "missing.json"), ("{text}", "{text}"),
                         ("{folder}", "{folder}"), ("{pt}", "{pt}"), ("no_such_rule", "no_such_rule")):
        cases.append(pytest.param(["train", "--preset", "smoke", "--rule", rule], needle,
                                  id=f"train-rule-{rule}"))
        cases.append(pytest.param(["attack", "--preset", "smoke", "--set", f"rule={rule}", "--set",
                                   "train=rule"], needle, id=f"attack-rule-{rule}"))
    cases.append(pytest.param(["transfer", "--preset", "smoke", "--set", "sources=perceptron,{text}"],
                              "{text}", id="transfer-sources-text"))
    for field in ("load", "surrogate"):
        for f in ("{text}", "{pt}", "{rulefile}", "{folder}", "missing.pt", "{tensors}"):
            cases.append(pytest.param(["attack", "--preset", "smoke", "--set", f"{field}={f}"],
                                      "network file", id=f"attack-{field}-{f}"))
    for cmd in (["evolve", "--preset", "smoke"], ["compare", "--preset", "smoke"], ["sweep", "smoke"]):
        cases.append(pytest.param([*cmd, "--resume", "--out", "{empty}"], "resume",
                                  id=f"{cmd[0]}-resume-nothing"))
    cases.append(pytest.param(["evolve", "--preset", "smoke", "--resume", "--out", "{junk}"],
                              "resume", id="evolve-resume-junk-checkpoint"))
    for cmd in (["evolve", "--preset", "smoke"], ["evolve", "--preset", "smoke", "--set",
                                                  "workers=2"],
                ["compare", "--preset", "smoke"], ["sweep", "smoke"]):
        cases.append(pytest.param([*cmd, "--address", "127.0.0.1:9"], "cannot reach the Ray cluster",
                                  id=f"{'-'.join(cmd[::2])}-address"))
    return cases


@pytest.mark.parametrize("argv, needle", _bad_inputs())
def test_bad_input_to_any_command_is_one_line_exit_2_fast_and_writes_nothing(
        argv, needle, tmp_path, monkeypatch):
    """Files, folders, stores and clusters that are not what a flag needs: one line naming it,
    exit 2, within seconds, and nothing new in the folder (no runs/<command>-<time>/events.jsonl
    either: the command runs in ``tmp_path``, where its default --out would go)."""
    import time

    import torch

    files = {"file": tmp_path / "a_file", "text": tmp_path / "notes.txt", "folder": tmp_path / "dir",
             "pt": tmp_path / "garbage.pt", "rulefile": tmp_path / "rule.json",
             "empty": tmp_path / "empty", "junk": tmp_path / "junk", "tensors": tmp_path / "t.pt"}
    files["file"].write_text("a file, not a folder\n")
    files["text"].write_text("not a rule, not a network\n")
    files["folder"].mkdir()
    files["pt"].write_bytes(bytes(range(256)) * 8)
    files["rulefile"].write_text(json.dumps(rule_to_dict(classic_rule("perceptron", 1))))
    torch.save({"W": torch.zeros(3), "k": "five"}, files["tensors"])  # tensors, not a network
    files["empty"].mkdir()
    files["junk"].mkdir()
    (files["junk"] / "checkpoint.json").write_text('{"format": "something else"}')
    argv = [a.format(**files) for a in argv]
    needle = needle.format(**files)
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    t0 = time.time()
    code, err = _run_cli([*argv, "--no-progress"] if argv[0] != "sweep" else argv)
    seconds = time.time() - t0
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err
    assert seconds < 30, f"{seconds:.1f} s"
    assert _tree(tmp_path) == before, _tree(tmp_path) - before
