"""Transfer of frozen rules across data sets and network shapes, and the `transfer` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from plasticity import PlasticityError
from plasticity.cli import main
from plasticity.data import load_dataset
from plasticity.rules.classic import classic_rule
from plasticity.rules.io import load_rule
from plasticity.rules.refs import shipped_path
from plasticity.transfer import lift_rule, transfer_cell

SMALL = dict(neurons=40, k=20, n_train=400, n_test=300, eval_every=100, eval_examples=200)


@pytest.fixture(scope="module")
def halfspace():
    return load_dataset("halfspace")


def test_lifted_rule_without_rnn_rule_trains_exactly_the_T1_network(halfspace):
    rule = load_rule(shipped_path("fig3_T1"))
    one = transfer_cell(rule, halfspace, T=1, seeds=2, orders=1, **SMALL)
    lifted = transfer_cell(lift_rule(rule, 3), halfspace, T=3, seeds=2, orders=1, **SMALL)
    np.testing.assert_array_equal(one.accuracy, lifted.accuracy)
    np.testing.assert_array_equal(one.updates, lifted.updates)


def test_lift_borrows_the_rnn_rule_and_refuses_wrong_T():
    t1, t3 = load_rule(shipped_path("fig3_T1")), load_rule(shipped_path("fig3_T3"))
    lifted = lift_rule(t1, 3, t3)
    assert lifted.T == 3 and lifted.rnn is t3.rnn
    table, base = lifted.output.table().numpy(), t1.output.table().numpy()
    assert table.shape == (8, 2)
    np.testing.assert_array_equal(table[1::2], np.repeat(base[1:2], 4, 0))  # fired in the last round
    np.testing.assert_array_equal(table[0::2], np.repeat(base[0:1], 4, 0))
    with pytest.raises(PlasticityError, match="only T=1 rules"):
        lift_rule(t3, 3)
    with pytest.raises(PlasticityError, match="lift_rnn"):
        lift_rule(t1, 3, classic_rule("perceptron", 3))  # no RNN rule in it


def test_cells_are_seeds_times_orders_and_learn(halfspace):
    rule = load_rule(shipped_path("fig3_T1"))
    big = transfer_cell(rule, halfspace, T=1, seeds=2, orders=2, gd="output", **SMALL)
    assert big.accuracy.shape == (4,) and big.curve.shape[1] == 4
    assert big.accuracy.mean() > 0.7  # halfspace is learnable well above chance
    # network 0 with its first order is the same run whatever the number of seeds and orders
    one = transfer_cell(rule, halfspace, T=1, seeds=1, orders=1, **SMALL)
    assert one.accuracy[0] == big.accuracy[0]
    # two orders of the same network differ (different example sequences)
    assert big.updates[0] != big.updates[1] or big.accuracy[0] != big.accuracy[1]
    assert big.gd is not None and big.gd.test_accuracy.shape == (4,)


def _run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(["transfer", "--no-progress", *args])
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


def test_transfer_command_smoke_writes_matrix_and_curves(capsys, tmp_path):
    code, out, _ = _run(capsys, "--preset", "smoke", "--out", str(tmp_path), "--json",
                        "--set", "targets=halfspace,relu1", "--set", "shapes=40x20,40x20x3",
                        "--set", "lift=last_round", "--set", "lift_rnn=fig3_T3")
    assert code == 0, out
    res = json.loads(out)
    keys = set(res["cells"])
    for src in ("fig3_T1", "perceptron"):
        for t in ("halfspace", "relu1"):
            assert f"{src}|{t}|40x20x1" in keys and f"{src}->T3|{t}|40x20x3" in keys
    assert len(keys) == 8
    cell = res["cells"]["fig3_T1|halfspace|40x20x1"]
    assert len(cell["runs"]) == 2 and cell["learned_on"] == "halfspace" and "gd" in cell
    for f in ("matrix_40x20x1.png", "matrix_40x20x3.png", "curves.png", "report.md"):
        assert (tmp_path / f).is_file(), f
    report = (tmp_path / "report.md").read_text()
    assert "fig3_T1->T3 (halfspace)" in report and "Recurrence diagnostics" in report
    diag = res["cells"]["fig3_T1->T3|relu1|40x20x3"]["diagnostics"]
    assert 0 <= diag["h_T_differs"] <= 1 and "W_mean" in diag
    assert "diagnostics" not in res["cells"]["fig3_T1|relu1|40x20x1"]
    assert "transfer/fig3_T1/40x20x1/halfspace" in (tmp_path / "events.jsonl").read_text()


@pytest.mark.parametrize("sets, needle", [
    (["shapes=40x20x3"], "set lift=last_round"),
    (["sources=fig3_T3", "shapes=40x20x1", "lift=last_round"], "only T=1"),
    (["targets=halfspace,cifar"], "unknown dataset 'cifar'"),
    (["shapes=40by20"], "shape '40by20'"),
    (["shapes=40x50"], "k=50"),
    (["sources=nope.json"], "nope.json"),
    (["seeds=0"], "seeds=0"),
    (["sources=fig3_T1,perceptron,fig3_T1"], "sources lists fig3_T1 more than once"),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, sets, needle):
    args = ["--preset", "smoke", "--out", str(tmp_path)]
    for s in sets:
        args += ["--set", s]
    code, _, err = _run(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_sources_sharing_a_file_stem_keep_their_own_cells(capsys, tmp_path):
    """Two rule files named rule_T1.json in different folders: two sources named folder/stem,
    each with its own cells (before, the second overwrote the first's under one name)."""
    from plasticity.commands.transfer import source_names
    from plasticity.rules.refs import shipped_path

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "rule_T1.json").write_text(shipped_path("fig3_T1").read_text())
    refs = [str(tmp_path / f / "rule_T1.json") for f in ("a", "b")]
    assert source_names([*refs, "perceptron", "x/fig3.json"]) == ["a/rule_T1", "b/rule_T1",
                                                                   "perceptron", "fig3"]
    code, out, _ = _run(capsys, "--preset", "smoke", "--out", str(tmp_path / "o"), "--json",
                        "--set", f"sources={','.join(refs)}", "--set", "targets=halfspace",
                        "--set", "shapes=40x20")
    assert code == 0, out
    assert sorted(json.loads(out)["cells"]) == ["a/rule_T1|halfspace|40x20x1",
                                                "b/rule_T1|halfspace|40x20x1"]
