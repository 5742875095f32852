"""Classic rule tables (docs/paper.md 2.4, Table 1), JSON rule files: exact round trip, atomic save,
and one-line PlasticityErrors for malformed files."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from plasticity import PlasticityError
from plasticity.data import load_dataset
from plasticity.rules import LayerRule, Rule, Scheme
from plasticity.rules.classic import classic_rule, perceptron, temporal_hebb, winnow
from plasticity.rules.io import load_rule, rule_from_dict, rule_to_dict, save_rule
from plasticity.rules.tables import PARAMETRIZATIONS, Parametrization, init_params
from registry_checks import check_parametrization

F64 = torch.float64


def _bits(h: int, T: int) -> list[int]:
    """A history's firing bits, round 1 first (round 1 is the most significant bit)."""
    return [int(c) for c in format(h, f"0{T}b")]


# ------------------------------------------------------------------ classic tables


@pytest.mark.parametrize("T", [1, 2, 3])
def test_perceptron_sign_pattern(T):
    table = perceptron(T).table()
    assert table.shape == (2**T, 2)
    for h in range(2**T):
        fired_last = _bits(h, T)[-1]
        expected = [1.0, -1.0] if fired_last else [-1.0, 1.0]
        assert table[h].tolist() == expected
    if T == 1:
        assert table.tolist() == [[-1.0, 1.0], [1.0, -1.0]]


@pytest.mark.parametrize("T", [1, 3])
def test_winnow_factors(T):
    """With w *= 1 + eta * r: a fired neuron's weight into the true label doubles, into the
    predicted label halves; a silent neuron's weights do not change (Table 1)."""
    eta = 0.01
    rule = classic_rule("winnow", T, eta=eta)
    assert rule.mode == "multiplicative" and rule.rnn is None
    factors = 1.0 + eta * rule.output.table()
    for h in range(2**T):
        expected = [2.0, 0.5] if _bits(h, T)[-1] else [1.0, 1.0]
        assert torch.allclose(factors[h], torch.tensor(expected, dtype=F64), rtol=0, atol=1e-12)
    assert torch.allclose(1.0 + 0.1 * winnow(1, eta=0.1, factor=3.0).table()[1],
                          torch.tensor([3.0, 1 / 3], dtype=F64))


def test_hebb_t1_is_and():
    assert temporal_hebb(1).table().tolist() == [[0.0, 0.0], [0.0, 1.0]]


def test_temporal_hebb_t3_counts():
    """r[pre, post] = #rounds t with pre firing at t and post at t + 1 (docs/paper.md 2.4)."""
    T = 3
    table = temporal_hebb(T).table()
    assert table.shape == (8, 8)
    for pre in range(8):
        for post in range(8):
            p, q = _bits(pre, T), _bits(post, T)
            assert table[pre, post] == sum(p[t] * q[t + 1] for t in range(T - 1))
    # spot checks: pre fires in rounds 1-2, post in rounds 2-3 -> two causal pairs
    assert table[0b110, 0b011] == 2
    assert table[0b001, 0b111] == 0  # pre fires only in the last round: nothing follows it
    assert table[0b100, 0b010] == 1 and table[0b010, 0b100] == 0


def test_classic_rule_sets():
    hp = classic_rule("hebb+perceptron", 3)
    assert hp.mode == "additive" and hp.T == 3
    assert torch.equal(hp.rnn.table(), temporal_hebb(3).table())
    assert torch.equal(hp.output.table(), perceptron(3).table())
    assert classic_rule("perceptron", 1).rnn is None
    with pytest.raises(PlasticityError, match="unknown classic rule"):
        classic_rule("oja", 1)


# ------------------------------------------------------------------ JSON round trip


def _table_rule() -> Rule:
    g = torch.Generator().manual_seed(0)
    out = torch.randn(8, 2, generator=g, dtype=F64)
    out[0, 0], out[0, 1] = 1e-300, 1.0 / 3.0
    rnn = torch.randn(8, 8, generator=g, dtype=F64) * 1e5
    return Rule(3, LayerRule.from_table("output", 3, out), LayerRule.from_table("rnn", 3, rnn),
                "multiplicative", Scheme("all", "all"),
                {"method": "gd", "dataset": "relu1", "config": {"seed": 3, "lr": 0.01,
                                                                 "nested": [1, "a", None]}})


def _mlp_rule() -> Rule:
    g = torch.Generator().manual_seed(1)
    out = init_params("mlp", "output", 2, hidden=5, gen=g, scale=0.7)
    rnn = init_params("mlp", "rnn", 2, hidden=5, gen=g, scale=1.3)
    return Rule(2, LayerRule("output", 2, "mlp", out, 5), LayerRule("rnn", 2, "mlp", rnn, 5),
                provenance={"method": "gd", "steps": 17})


def _assert_same(a: Rule, b: Rule) -> None:
    assert (a.T, a.mode, a.scheme, a.provenance) == (b.T, b.mode, b.scheme, b.provenance)
    for la, lb in ((a.output, b.output), (a.rnn, b.rnn)):
        assert (la is None) == (lb is None)
        if la is None:
            continue
        assert (la.layer, la.T, la.param, la.hidden) == (lb.layer, lb.T, lb.param, lb.hidden)
        assert la.params.keys() == lb.params.keys()
        for k in la.params:
            assert la.params[k].dtype == lb.params[k].dtype == F64
            assert torch.equal(la.params[k], lb.params[k]), k
        assert torch.equal(la.table(), lb.table())


def _margin_rule() -> Rule:
    return dataclasses.replace(_table_rule(), scheme=Scheme("margin_rel", "label_pred", 0.25))


@pytest.mark.parametrize("make", [_table_rule, _mlp_rule, lambda: classic_rule("winnow", 2),
                                  _margin_rule])
def test_json_round_trip_is_exact(tmp_path, make):
    rule = make()
    path = save_rule(rule, tmp_path / "sub" / "rule.json")
    _assert_same(rule, load_rule(path))
    _assert_same(rule, rule_from_dict(json.loads(json.dumps(rule_to_dict(rule)))))
    d = json.loads(path.read_text())
    assert d["format"] == "plasticity-rule" and d["version"] == 1
    assert d["output"]["values"] == rule.output.table().tolist()


@pytest.mark.parametrize("name", list(PARAMETRIZATIONS))
def test_every_parametrization_keeps_the_protocol(name, tmp_path):
    """Every registry entry (registry_checks.check_parametrization): init, the rule-file round
    trip, meta-learning steps with a finite gradient."""
    check_parametrization(name, load_dataset("halfspace"), tmp_path)


def test_shipped_rule_files_load_as_their_parametrization():
    """The rule files of the repository (the shipped rules/data, results/) still load, each
    through its registry entry, to the table stored next to its params."""
    import subprocess

    files = [f for f in subprocess.run(["git", "ls-files", "*.json"], capture_output=True,
                                       text=True, check=True).stdout.split()
             if '"plasticity-rule"' in open(f).read()]
    shipped = "platform/plasticity/rules/data"
    assert {f"{shipped}/fig3_T1.json", f"{shipped}/fig3_T3.json"} <= set(files)
    for f in files:
        rule, d = load_rule(f), json.loads(open(f).read())
        for layer in ("output", "rnn"):
            if d[layer] is None:
                continue
            lr = getattr(rule, layer)
            assert lr.param == d[layer].get("param", "table") and lr.param in PARAMETRIZATIONS
            values = torch.tensor(d[layer]["values"], dtype=F64)
            assert torch.allclose(lr.table(), values, rtol=0, atol=1e-12), (f, layer)


def test_parametrization_records_are_checked():
    table = PARAMETRIZATIONS["table"]
    for bad in (dict(keys=()), dict(keys=("a", "b"), from_values=True), dict(doc=""),
                dict(doc="two\nlines")):
        with pytest.raises(ValueError):
            Parametrization(**{"init": table.init, "table": table.table, "keys": ("table",),
                               "doc": "x", **bad})


# ------------------------------------------------------------------ atomic save


def _listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_save_leaves_no_temp_files_and_overwrites(tmp_path):
    path = tmp_path / "rule.json"
    save_rule(classic_rule("perceptron", 1), path)
    save_rule(_table_rule(), path)
    assert _listing(tmp_path) == ["rule.json"]
    _assert_same(load_rule(path), _table_rule())


def test_failed_serialisation_keeps_previous_file(tmp_path):
    path = tmp_path / "rule.json"
    save_rule(classic_rule("perceptron", 1), path)
    before = path.read_bytes()
    bad = Rule(1, LayerRule.from_table("output", 1, [[float("nan"), 0.0], [0.0, 1.0]]))
    with pytest.raises((ValueError, PlasticityError)):
        save_rule(bad, path)
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["rule.json"]


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "rule.json"
    save_rule(classic_rule("perceptron", 1), path)
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_rule(_table_rule(), path)
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["rule.json"]


# ------------------------------------------------------------------ malformed files


def _good() -> dict:
    return rule_to_dict(classic_rule("hebb+perceptron", 1))


def _mlp_good() -> dict:
    return rule_to_dict(_mlp_rule())


def _mutated(base, fn) -> str:
    d = base()
    fn(d)
    return json.dumps(d)


def _set(*keys_value):
    *keys, value = keys_value

    def fn(d):
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return fn


def _del(*keys):
    def fn(d):
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]

    return fn


def _del_params_and_values(d):
    del d["rnn"]["params"], d["rnn"]["values"]


def _bump_mlp_values(d):
    d["output"]["values"][0][0] += 0.5


MALFORMED = {
    "empty file": "",
    "not json": "this is not json",
    "truncated json": json.dumps(_good())[:-40],
    "json array": "[1, 2, 3]",
    "no format tag": _mutated(_good, _del("format")),
    "wrong format tag": _mutated(_good, _set("format", "pickle")),
    "wrong version": _mutated(_good, _set("version", 2)),
    "version as string": _mutated(_good, _set("version", "1")),
    "missing T": _mutated(_good, _del("T")),
    "T zero": _mutated(_good, _set("T", 0)),
    "T string": _mutated(_good, _set("T", "1")),
    "T bool": _mutated(_good, _set("T", True)),
    "T too large": _mutated(_good, _set("T", 9)),
    "T disagrees with tables": _mutated(_good, _set("T", 2)),
    "wrong shape": _mutated(_good, _set("output", "params", "table", [[1.0, 2.0, 3.0]] * 2)),
    "wrong rnn shape": _mutated(_good, _set("rnn", "params", "table", [[1.0]])),
    "ragged table": _mutated(_good, _set("output", "params", "table", [[1.0, 2.0], [3.0]])),
    "non-numeric table": _mutated(_good, _set("output", "params", "table", "abc")),
    "null table": _mutated(_good, _set("output", "params", "table", None)),
    "NaN value": json.dumps(_good()).replace("-1.0", "NaN", 1),
    "Infinity value": json.dumps(_good()).replace("-1.0", "Infinity", 1),
    "overflowing float": json.dumps(_good()).replace("-1.0", "1e999", 1),
    "values disagree with table params": _mutated(
        _good, _set("output", "values", [[0.0, 0.0], [0.0, 0.0]])),
    "missing output": _mutated(_good, _del("output")),
    "output not an object": _mutated(_good, _set("output", [1, 2])),
    "unknown param kind": _mutated(_good, _set("output", "param", "spline")),
    "missing MLP params": _mutated(_mlp_good, _del("rnn", "params")),
    "missing table params and values": _mutated(_good, _del_params_and_values),
    "extra param key": _mutated(_good, _set("output", "params", "bias", [0.0])),
    "bad mode": _mutated(_good, _set("mode", "subtractive")),
    "bad scheme": _mutated(_good, _set("scheme", {"update_on": "sometimes"})),
    "scheme not an object": _mutated(_good, _set("scheme", "mistakes")),
    "margin scheme without gamma": _mutated(_good, _set("scheme", {"update_on": "margin"})),
    "negative gamma": _mutated(_good, _set("scheme", {"update_on": "margin", "gamma": -0.5})),
    "gamma not a number": _mutated(_good, _set("scheme", {"update_on": "margin", "gamma": "x"})),
    "gamma on the mistakes scheme": _mutated(_good, _set("scheme", {"gamma": 0.5})),
    "bad hidden": _mutated(_mlp_good, _set("output", "hidden", -3)),
    "MLP values inconsistent with params": _mutated(_mlp_good, _bump_mlp_values),
    "MLP weights of inconsistent shapes": _mutated(
        _mlp_good, _set("rnn", "params", "w1", [[0.1, 0.2, 0.3]] * 5)),
    "MLP param keys missing": _mutated(_mlp_good, _del("output", "params", "b2")),
}


# Loader gaps found while writing these tests (each used to escape as a non-PlasticityError or to
# load a file that contradicts itself), now refused like the others.
MALFORMED.update({
    "param is a list (unhashable -> TypeError)": _mutated(_good, _set("output", "param", ["x"])),
    "deeply nested JSON (RecursionError)": "[" * 100_000 + "]" * 100_000,
    "integer too large for a float (OverflowError)": _mutated(
        _good, _set("output", "params", "table", [[10**400, 0], [0, 0]])),
    "MLP hidden field disagrees with w1": _mutated(_mlp_good, _set("output", "hidden", 7)),
})

@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_rule_file_is_one_line_error(tmp_path, name):
    path = tmp_path / "rule.json"
    path.write_text(MALFORMED[name])
    with pytest.raises(PlasticityError) as info:
        load_rule(path)
    msg = str(info.value)
    assert msg and "\n" not in msg
    assert str(path) in msg


def test_missing_and_unreadable_files(tmp_path):
    for path in (tmp_path / "absent.json", tmp_path):
        with pytest.raises(PlasticityError) as info:
            load_rule(path)
        assert "\n" not in str(info.value)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PlasticityError):
        load_rule(binary)


def test_values_only_table_file_loads(tmp_path):
    """A hand-written table rule may give just ``values`` (no ``params``)."""
    d = _good()
    for layer in ("output", "rnn"):
        del d[layer]["params"]
    path = tmp_path / "rule.json"
    path.write_text(json.dumps(d))
    _assert_same(load_rule(path), classic_rule("hebb+perceptron", 1))


