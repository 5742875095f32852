"""Attacks on frozen networks: every ATTACKS entry (eps balls, pixel range, what it needs:
registry_checks.check_attack), sanity of robust-accuracy curves, the paper's batched targeted
attack against a per-example loop, and the `attack` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from plasticity.cli import main
from plasticity.commands import config_commands as all_commands
from plasticity.data import load_dataset
from plasticity.robustness.attacks import ATTACKS, Attack, FrozenNet, fgsm, paper_l2, pgd, square
from plasticity.robustness.evaluate import Budget, diagnostics, robustness_curves
from registry_checks import BlackBox, check_attack
from registry_checks import frozen_net as _net

BUDGET = Budget(steps=10, restarts=2, paper_steps=10, paper_alpha=1.0, queries=60)


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


@pytest.fixture(scope="module", params=[1, 3], ids=["T1", "T3"])
def net(request, mnist):
    return _net(mnist, request.param)


@pytest.fixture(scope="module")
def batch(mnist):
    return mnist.x_test[:40], mnist.y_test[:40]


def _gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def surrogate(mnist):
    """Another network (its own graph, weights and examples): the transfer attacks' surrogate."""
    return _net(mnist, 1, seed=1)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_stays_in_its_ball_breaks_and_needs_what_it_says(net, batch, surrogate, name):
    """Every registry entry (registry_checks.check_attack), on networks of T = 1 and T = 3."""
    check_attack(name, net, *batch, surrogate)


def test_attack_records_are_checked():
    def noop(model, x, y, eps, **_):
        return x, model.predict(x) != y

    Attack(noop, "threat", "queries", "a valid record")
    for bad in (dict(norm="l1"), dict(needs="labels"), dict(doc=""), dict(doc="two\nlines")):
        with pytest.raises(ValueError):
            Attack(**{"fn": noop, "norm": "l2", "needs": "gradients", "doc": "x", **bad})


def test_eps_zero_gives_the_clean_accuracy(net, batch, surrogate):
    x, y = batch
    res = robustness_curves(net, x, y, [0.0], list(ATTACKS), budget=BUDGET, gen=_gen(),
                            surrogate=surrogate)
    clean = (net.predict(x) == y).double().mean().item()
    assert res["clean"] == clean
    assert res["worst"] == [clean] and all(v == [clean] for v in res["raw"].values())
    assert set(res["raw"]) == set(ATTACKS)


def test_worst_case_is_below_every_attack_and_large_eps_breaks_everything(net, batch):
    x, y = batch
    eps = [0.0, 0.5, 1.0, 2.0, 4.0, 30.0]
    attacks = ["fgsm", "paper", "pgd_l2", "square"]  # the weakest (L-inf in an L2 ball) first
    res = robustness_curves(net, x, y, eps, attacks, budget=BUDGET, gen=_gen())
    w, raw = res["worst"], res["raw"]
    # Catches: a worst case taken from one attack only (the first, say): at every eps it is at
    # most each attack's own robust accuracy and at most the union of that eps's breaks ...
    for i in range(len(eps)):
        assert w[i] <= min(raw[a][i] for a in attacks) + 1e-12, (eps[i], w, raw)
        assert w[i] <= res["worst_raw"][i] + 1e-12
    # ... and here the union is strictly stronger than the first attack, so such a bug shows
    assert any(w[i] < raw[attacks[0]][i] for i in range(len(eps))), (w, raw)
    # Catches: a worst case that forgets breaks found at a smaller eps (per-eps union only)
    assert all(b <= a for a, b in zip(w, w[1:])), w
    assert w[0] > 0.3 and w[-1] <= 0.05, w  # L2 eps = 30 covers the whole pixel cube (28)
    # per example: the smallest breaking eps is consistent with the worst-case curve
    for i, e in enumerate(eps):
        robust = sum(b is None or b > e for b in res["broken_at"])
        assert robust / len(y) == pytest.approx(w[i])
    assert set(res["broken_by"]) - {None, "clean"} <= set(attacks)


def test_pgd_is_never_weaker_than_fgsm(net, batch):
    x, y = batch
    for eps in (0.02, 0.05, 0.1, 0.2):
        _, b_fgsm = fgsm(net, x, y, eps)
        _, b_pgd = pgd(net, x, y, eps, norm="linf", steps=5, restarts=2, gen=_gen())
        assert bool((b_pgd | ~b_fgsm).all()), eps  # every FGSM break is a PGD break


def test_batched_paper_attack_matches_one_example_at_a_time(mnist, batch):
    net = _net(mnist, 3)
    x, y = batch[0][:8], batch[1][:8]
    _, together = paper_l2(net, x, y, 1.0, steps=8, alpha=2.0)
    alone = torch.cat([paper_l2(net, x[i:i + 1], y[i:i + 1], 1.0, steps=8, alpha=2.0)[1]
                       for i in range(8)])
    assert torch.equal(together, alone)


class _Masked(FrozenNet):
    """The same network behind an input quantisation that has zero gradient everywhere."""

    def logits(self, x):
        return super().logits(torch.round(x * 4) / 4)  # round: gradient 0 everywhere


def test_gradient_free_attack_sees_through_masked_gradients(mnist, batch):
    base = _net(mnist, 1)
    masked = _Masked(base.nets, base.W, base.U)
    x, y = batch
    _, b_pgd = pgd(masked, x, y, 3.0, norm="l2", steps=10, restarts=1, gen=_gen())
    _, b_sq = square(masked, x, y, 3.0, norm="l2", queries=200, gen=_gen())
    assert int(b_pgd.sum()) == int((masked.predict(x) != y).sum())  # no gradient, no progress
    assert int(b_sq.sum()) > int(b_pgd.sum()) + 5


def test_transfer_attack_crafts_on_the_surrogate_and_judges_on_the_target(net, batch, surrogate):
    x, y = batch
    target = BlackBox(net)
    # Catches: a transfer attack that asks the target network for a gradient (BlackBox raises)
    x_tr, b_tr = ATTACKS["transfer"].fn(target, x, y, 2.0, surrogate=surrogate, norm="l2",
                                        steps=5, restarts=1, gen=_gen())
    # Catches: adversarial points crafted on anything but the surrogate
    x_pgd, _ = pgd(surrogate, x, y, 2.0, norm="l2", steps=5, restarts=1, gen=_gen())
    assert torch.equal(x_tr, x_pgd)
    # Catches: breaks judged on the surrogate, not on the target (the two disagree here)
    assert torch.equal(b_tr, net.predict(x_tr) != y)
    assert not torch.equal(b_tr, surrogate.predict(x_tr) != y)


def _run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(["attack", "--no-progress", *args])
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


@pytest.mark.parametrize("sets, needle", [
    (["eps=0,-1"], "eps"),
    (["eps=1,,2"], "eps"),
    (["eps=a"], "eps"),
    (["attacks=paper,bogus"], "unknown attack 'bogus'"),
    (["norm=l3"], "norm"),
    (["rule=fig3_T1", "T=3"], "rule has T=1"),
    (["load=/nonexistent/network.pt"], "not found"),
    (["update_on=margin_rel", "gamma=-0.5"], "gamma=-0.5 must be >= 0"),
    (["update_on=margin"], "needs gamma > 0"),
    (["gamma=0.3"], "applies to update_on=margin"),
    (["train=gd", "update_on=margin_rel", "gamma=0.3"], "train=rule only"),
    (["update_on=sometimes"], "update_on"),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, sets, needle):
    args = ["--preset", "smoke", "--out", str(tmp_path)]
    for s in sets:
        args += ["--set", s]
    code, _, err = _run(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_attack_command_smoke_writes_curves_and_reloads(capsys, tmp_path):
    code, out, _ = _run(capsys, "--preset", "smoke", "--out", str(tmp_path / "a"), "--json")
    assert code == 0
    res = json.loads(out)
    for f in ("result.json", "network.pt", "curves.png", "events.jsonl"):
        assert (tmp_path / "a" / f).is_file(), f
    smoke_eps = [float(e) for e in all_commands()["attack"].presets["smoke"]["eps"].split(",")]
    assert res["worst"][0] == res["clean"] and res["eps"] == smoke_eps
    assert res["test_plasticity"].startswith("off")
    events = (tmp_path / "a" / "events.jsonl").read_text()
    assert "attack/paper/eps_2" in events and "attack/worst/eps_1" in events
    code, out, _ = _run(capsys, "--preset", "smoke", "--out", str(tmp_path / "b"), "--json",
                        "--set", f"load={tmp_path / 'a' / 'network.pt'}", "--set", "eps=0")
    assert code == 0 and json.loads(out)["clean_test_accuracy"] == res["clean_test_accuracy"]


def test_gradient_free_attacks_are_not_stronger_than_pgd_on_a_gd_network(capsys, tmp_path):
    """On a GD-trained network the input gradient is informative, so at small eps the attacks
    that only query (ES, our Square, ART's Square and HopSkipJump) break no more than PGD does;
    if they did, the gradients would be masked. (A rule-trained network is where that can fail.)"""
    queries = ["es", "square", "art_square", "art_hsj"]
    code, out, _ = _run(capsys, "--preset", "smoke", "--out", str(tmp_path), "--json", "--set",
                        "train=gd", "--set", f"attacks=pgd_l2,{','.join(queries)}", "--set",
                        "eps=0,0.25,0.5")
    assert code == 0
    raw = json.loads(out)["raw"]
    assert raw["pgd_l2"][2] < raw["pgd_l2"][0]  # PGD breaks something at 0.5
    for a in queries:
        assert all(p <= q + 1e-9 for p, q in zip(raw["pgd_l2"], raw[a])), (a, raw)


def test_double_softmax_loss_masks_gradients_of_large_logits(mnist, batch):
    """The same network with logits x1000 predicts the same; the paper's attack on the reference
    code's double-softmax loss then gets no gradient (saturated softmax) while on CE it works."""
    base = _net(mnist, 1)
    big = FrozenNet(base.nets, base.W, base.U * 1000)
    x, y = batch
    assert torch.equal(big.predict(x), base.predict(x))
    _, b_ce = ATTACKS["paper"].fn(big, x, y, 2.0, steps=10, alpha=0.1)
    _, b_ds = ATTACKS["paper_ds"].fn(big, x, y, 2.0, steps=10, alpha=0.1)
    wrong = int((big.predict(x) != y).sum())
    assert int(b_ds.sum()) == wrong < int(b_ce.sum())
    d_big, d_base = diagnostics(big, x, y), diagnostics(base, x, y)
    assert d_big["zero_ce_gradient"] > d_base["zero_ce_gradient"]
    assert d_base["h_T_vs_h_1"] == 0.0 and d_base["mean_W_on_edges"] == 0.0  # T = 1: no recurrence
    # the first-order distance to the boundary is scale-free: the same for logits x1000
    fb, fs = d_big["first_order_distance"], d_base["first_order_distance"]
    assert 0 < fs["q25"] <= fs["median"] <= fs["q75"]
    assert fb["median"] == pytest.approx(fs["median"], rel=1e-4)


def test_first_order_distance_is_where_a_linear_attack_breaks(mnist, batch):
    """On a T = 1 network (piecewise linear in x away from cap switches), a step of the
    first-order distance (x 1.2) along the margin's gradient breaks most of the correct examples
    it is computed for; a step of half of it breaks fewer."""
    from plasticity.robustness.evaluate import first_order_distance
    from plasticity.robustness.frozen import margin

    model = _net(mnist, 1)
    x, y = batch
    xg = x.clone().requires_grad_(True)
    m = margin(model.logits(xg), y)
    (g,) = torch.autograd.grad(m.sum(), xg)
    ok = m.detach() > 0
    d = m.detach() / g.norm(dim=1)
    unit = g / g.norm(dim=1, keepdim=True)
    broken = {f: int((model.predict(x - f * d[:, None] * unit) != y)[ok].sum()) for f in (0.5, 1.2)}
    assert broken[1.2] >= 0.6 * int(ok.sum()) and broken[0.5] < broken[1.2]
    assert first_order_distance(model, x, y)["first_order_distance"]["median"] == pytest.approx(
        float(torch.quantile(d[ok].double(), 0.5)), rel=1e-6)


def test_bpda_surrogate_keeps_the_forward_and_gives_the_cap_a_gradient(mnist, batch):
    """Networks.relax changes no value (logits, verdicts) but the input gradient: units outside
    the cap, which the exact gradient ignores, contribute."""
    from plasticity.robustness.attacks import margin

    net = _net(mnist, 3)
    x, y = batch
    relaxed = net.relaxed(0.5)
    assert torch.equal(relaxed.logits(x), net.logits(x))
    grads = []
    for model in (net, relaxed):
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(margin(model.logits(xg), y).sum(), xg)
        grads.append(g)
    assert (grads[0] - grads[1]).abs().max() > 1e-3 * grads[0].abs().max()
    assert net.nets.relax == 0.0  # the attacked network itself is untouched


def test_margin_scheme_trains_the_attacked_network(capsys, tmp_path):
    """update_on=margin_rel reaches the trained network: more updates than on mistakes alone
    (correct examples inside the margin update too), recorded in the result's config."""
    runs = {}
    for name, sets in (("mistakes", []), ("margin", ["update_on=margin_rel", "gamma=0.5"])):
        args = ["--preset", "smoke", "--out", str(tmp_path / name), "--json", "--set", "eps=0",
                "--set", "T=1"]
        for s in sets:
            args += ["--set", s]
        code, out, _ = _run(capsys, *args)
        assert code == 0
        runs[name] = json.loads(out)
    assert runs["margin"]["network"]["updates"] > runs["mistakes"]["network"]["updates"]
    assert runs["margin"]["config"]["update_on"] == "margin_rel"
    assert runs["margin"]["config"]["gamma"] == 0.5


def _study(capsys, tmp_path, *sets, code=0, tracking="none"):
    args = ["study", "robustness", "--preset", "smoke", "--no-progress", "--tracking-uri",
            tracking, "--out", str(tmp_path), "--set", "rob_datasets=mnist", "--set", "seeds=1"]
    for s in sets:
        args += ["--set", s]
    with pytest.raises(SystemExit) as exc:
        main(args)
    cap = capsys.readouterr()
    assert exc.value.code == code, cap.err
    return cap.err


def test_robustness_study_tables_every_network_and_reuses_finished_cells(capsys, tmp_path):
    err = _study(capsys, tmp_path, "rob_networks=perceptron,margin,gd_full", "rob_gammas=0.5",
                 "rob_attacks=pgd_l2,transfer")
    assert "reused" not in err
    res = json.loads((tmp_path / "result.json").read_text())
    assert set(res["summary"]) == {"mnist/perceptron", "mnist/margin_rel 0.5", "mnist/gd_full"}
    cells = tmp_path / "cells" / "mnist-seed0"
    rule_net = json.loads((cells / "perceptron" / "result.json").read_text())
    gd = json.loads((cells / "gd_full" / "result.json").read_text())
    # the transfer attack crafts on the GD network for rule networks, on a rule network for GD
    assert rule_net["config"]["surrogate"] == str(cells / "gd_full-train" / "network.pt")
    assert gd["config"]["surrogate"] == str(cells / "perceptron" / "network.pt")
    assert gd["config"]["load"] == str(cells / "gd_full-train" / "network.pt")
    assert json.loads((cells / "margin_rel0.5" / "result.json").read_text())["config"]["gamma"] == 0.5
    for key, s in res["summary"].items():
        assert len(s["worst_mean"]) == len(res["eps"]) and s["meets_target"] in (True, False)
        assert all(a >= b for a, b in zip(s["worst_mean"], s["worst_mean"][1:])), key
    assert (tmp_path / "robust_vs_clean.png").is_file()
    report = (tmp_path / "report.md").read_text()
    assert "| margin_rel 0.5 | 1 |" in report and "Target" in report
    mtime = (cells / "perceptron" / "result.json").stat().st_mtime
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    err = _study(capsys, tmp_path, "rob_networks=perceptron,margin,gd_full", "rob_gammas=0.5",
                 "rob_attacks=pgd_l2,transfer", tracking=uri)
    assert err.count("reused") == 4  # gd_full-train, perceptron, margin_rel 0.5, gd_full
    assert (cells / "perceptron" / "result.json").stat().st_mtime == mtime
    assert json.loads((tmp_path / "result.json").read_text())["summary"] == res["summary"]
    # tracked, the reused cells are still the study run's children, with their metrics
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("plasticity").experiment_id])
    study = [r for r in runs if r.data.tags.get("plasticity.command") == "study"]
    assert len(study) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study[0].info.run_id]
    assert sorted(r.data.tags["plasticity.command"] for r in children) == ["attack"] * 4
    by_folder = {Path(r.data.tags["plasticity.logged_from"]).name: r for r in children}
    assert by_folder["perceptron"].data.metrics["attack/worst/eps_0"] == pytest.approx(
        rule_net["worst"][0])
    assert "robust_vs_clean.png" in {a.path for a in client.list_artifacts(study[0].info.run_id)}


def test_robustness_study_without_transfer_gives_no_network_a_surrogate(capsys, tmp_path):
    """Without the transfer attack no cell names a surrogate (an unused path in a cell's config
    would stop it being reused by a study whose network list differs)."""
    _study(capsys, tmp_path, "rob_networks=perceptron,gd_full", "rob_attacks=pgd_l2")
    cells = tmp_path / "cells" / "mnist-seed0"
    assert not (cells / "gd_full-train").exists()
    for name in ("perceptron", "gd_full"):
        assert json.loads((cells / name / "result.json").read_text())["config"]["surrogate"] == ""


@pytest.mark.parametrize("sets, needle", [
    (["rob_networks=perceptron,bogus"], "unknown network 'bogus'"),
    (["rob_gammas=0.3,-1"], "every gamma must be > 0"),
    (["rob_eps=0,-1"], "every radius must be >= 0"),
    (["rob_attacks=pgd_l2,nope"], "unknown attack 'nope'"),
    (["rob_datasets=relu1"], "image sets"),
    (["n_attack=0"], "n_attack=0"),
])
def test_robustness_study_bad_input_is_one_line_exit_2(capsys, tmp_path, sets, needle):
    err = _study(capsys, tmp_path, *sets, code=2)
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "cells").exists()


def test_every_robustness_network_is_a_valid_attack_config():
    """Each name of the study's NETWORKS is accepted by its config and builds at least one
    valid AttackConfig (a name without a spec, or a spec the attack refuses, fails here)."""
    from plasticity.commands.attack import AttackConfig
    from plasticity.commands.paper_studies import StudyConfig
    from plasticity.commands.robustness_study import NETWORKS, network_specs

    for name in NETWORKS:
        specs = network_specs(StudyConfig(rob_networks=name), learned="learned_rule.json")
        assert specs, name
        for label, fields in specs:
            assert AttackConfig(**fields).T == fields["T"], label


def test_a_stuck_art_attack_ends_and_counts_its_examples_as_not_broken(mnist, batch, monkeypatch,
                                                                       caplog):
    """ART's HopSkipJump step-size search has no bound (it can query one point for ever); a run
    of one-point queries beyond the limit stops it: the examples are retried one at a time and
    those still stuck keep their clean point. With a limit its binary search always exceeds,
    every example is stuck, so nothing is broken, and it says so."""
    from plasticity.robustness import art_attacks

    model = _net(mnist, 1)
    x, y = batch
    keep = model.predict(x) == y
    x, y = x[keep][:4], y[keep][:4]
    free = ATTACKS["art_hsj"].fn(model, x, y, 3.0, queries=100, gen=_gen())[1]
    assert bool(free.any())  # unhindered, HSJ breaks some of these at eps 3
    monkeypatch.setattr(art_attacks, "STUCK_QUERIES", 3)
    with caplog.at_level("WARNING"):
        x_adv, broken = ATTACKS["art_hsj"].fn(model, x, y, 3.0, queries=100, gen=_gen())
    assert not bool(broken.any()) and torch.equal(x_adv, x)
    assert "stuck on 4 of 4 examples" in caplog.text
