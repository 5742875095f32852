"""Tests for plasticity.theory: the closed form of docs/paper.md 6.5 against the engine, the
MSE-optimal rule, Theorem 3's mistake bound and the structure of the Theorem 1 experiment."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from plasticity import PlasticityError, theory
from plasticity.config import MetaConfig
from plasticity.data import load_dataset
from plasticity.learning import example_orders, train_with_rule
from plasticity.meta import episode_loss, meta_train
from plasticity.network import make_networks
from plasticity.rules import LayerRule, Rule, Scheme
from plasticity.rules.classic import perceptron
from plasticity.seeding import torch_generator


@pytest.fixture(scope="module")
def halfspace():
    ds = load_dataset("halfspace", data_seed=0)
    return ds, ds.x_train[:200].double(), ds.y_train[:200]


def _nets(ds, T=1, n=2, seed=1):
    return make_networks(n, ds.dim, ds.n_classes, neurons=30, k=15, p=0.5, T=T, seed=seed,
                         dtype=torch.float64)


@pytest.mark.parametrize("T", [1, 2])
def test_engine_all_all_ends_at_closed_form_weights(halfspace, T):
    ds, x, y = halfspace
    nets = _nets(ds, T)
    table = torch.randn(2**T, 2, generator=torch_generator(0, "test-rule"), dtype=torch.float64)
    rule = Rule(T, LayerRule.from_table("output", T, table), scheme=Scheme("all", "all"))
    expected = theory.closed_form_weights(nets, table, x, y, eta=0.01)
    finals = []
    for s in (0, 1):
        order = example_orders(nets.n, x.shape[0], 1, torch_generator(s, "test-order"))
        res = train_with_rule(nets, rule, x, y, x[:10], y[:10], order=order, eta=0.01,
                              eval_every=x.shape[0], eval_examples=10)
        assert res.U.dtype == torch.float64
        assert torch.allclose(res.U, expected, rtol=1e-10, atol=1e-12)
        finals.append(res.U)
    assert torch.allclose(finals[0], finals[1], rtol=1e-10, atol=1e-12)


def test_update_counts_sum_to_examples(halfspace):
    ds, x, y = halfspace
    S = theory.update_counts(_nets(ds), x, y)  # [N, l, V, 2, 2]
    assert S.shape == (2, 2, 30, 2, 2)
    assert torch.all(S.sum((3, 4)) == x.shape[0])  # every example updates every (c, v) once
    assert torch.all(S[..., 0].sum((1, 3)) == x.shape[0])  # each example has one label row


def test_mse_optimal_rule_beats_other_rules(halfspace):
    ds, _, _ = halfspace
    x, y = ds.x_train[:240].double(), ds.y_train[:240]  # 124 / 116: a unique optimum
    nets = _nets(ds)
    layer, info = theory.mse_optimal_output_rule(nets, x, y, eta=0.01)
    best = info["mse"]
    assert layer.table().shape == (2, 2) and info["rank"] == 4
    assert best == pytest.approx(float(theory.closed_form_mse(nets, layer, x, y).mean()))
    assert isinstance(info["rule"], Rule) and info["rule"].scheme == Scheme("all", "all")
    gen = torch_generator(0, "test-random-rules")
    others = [perceptron(1).table() * c for c in (1e-3, 1e-2, 0.1, 1.0)]
    others += [torch.randn(2, 2, generator=gen, dtype=torch.float64) * 0.1 for _ in range(5)]
    others += [layer.table() + 1e-3 * torch.randn(2, 2, generator=gen, dtype=torch.float64)
               for _ in range(5)]
    for table in others:
        assert best <= float(theory.closed_form_mse(nets, table, x, y).mean()) + 1e-12


def test_balanced_classes_leave_one_rule_direction_free(halfspace):
    ds, x, y = halfspace
    assert torch.equal(y.bincount(), torch.tensor([100, 100]))
    nets = _nets(ds)
    _, info = theory.mse_optimal_output_rule(nets, x, y)
    assert info["rank"] == 3
    table = perceptron(1).table()
    free = torch.tensor([[1.0, -1.0], [1.0, -1.0]], dtype=torch.float64)  # u_1 = -u_0 / (l - 1)
    assert torch.allclose(theory.closed_form_weights(nets, table, x, y),
                          theory.closed_form_weights(nets, table + 0.3 * free, x, y), atol=1e-12)


def test_binary_episode_loss_ignores_the_common_part_of_the_output_rule(halfspace):
    """Why theorem1_experiment reports the column difference: with l = 2 and label/pred rows,
    adding the same value to both columns of a row changes nothing."""
    ds, x, y = halfspace
    nets = make_networks(2, ds.dim, 2, neurons=20, k=10, p=0.5, T=1, seed=3, dtype=torch.float64)
    table = torch.tensor([[-0.5, 1.0], [2.0, -0.3]], dtype=torch.float64)
    xs, ys = x[:40].view(2, 20, -1), y[:40].view(2, 20)
    kw = {"eta": 0.01, "mode": "additive", "scheme": Scheme()}
    base = episode_loss(nets, None, table, xs, ys, **kw)
    shifted = episode_loss(nets, None, table + torch.tensor([[0.7], [-1.3]]), xs, ys, **kw)
    assert torch.allclose(base, shifted, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("a,b", [(1.0, 1.0), (1.0, 2.0), (0.5, 2.0)])
def test_theorem3_converges_within_the_bound(a, b):
    out = theory.theorem3_experiment(10, 0.3, a, b, examples=200, seed=0, passes=500, runs=3)
    assert out["bound"] == pytest.approx(2 * b**2 * 10 / (a**2 * 0.3**2))
    assert all(out["converged"])
    assert all(m <= out["bound"] for m in out["mistakes"])
    assert all(acc == 1.0 for acc in out["train_accuracy"])
    assert all(g >= 0.3 for g in out["margin"])


def test_theorem3_is_seeded_and_checks_its_rule():
    one = theory.theorem3_experiment(8, 0.3, 1.0, 2.0, examples=100, seed=4, passes=50, runs=2)
    two = theory.theorem3_experiment(8, 0.3, 1.0, 2.0, examples=100, seed=4, passes=50, runs=2)
    assert one == two
    with pytest.raises(PlasticityError, match="b >= a"):
        theory.theorem3_experiment(8, 0.3, 2.0, 1.0, examples=10, seed=0)


def test_margin_data_is_separable_with_balanced_teacher():
    w, X, y = theory.margin_data(12, 0.25, 50, torch_generator(0, "test-margin"), runs=2)
    assert w.shape == (2, 12) and X.shape == (2, 50, 12) and y.shape == (2, 50)
    assert torch.allclose(w.sum(1), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(w.norm(dim=1), torch.ones(2, dtype=torch.float64))
    margins = torch.einsum("rmn,rn->rm", X, w) * y
    assert torch.all(margins >= 0.25)


def test_sign_pattern():
    assert theory.sign_pattern(perceptron(1).table()) == "[-,+;+,-]"
    assert theory.sign_pattern(torch.tensor([[0.0, 2.0], [-1.0, 3.0]])) == "[0,+;-,+]"


@pytest.mark.parametrize("mode", ["additive", "multiplicative"])
def test_theorem1_experiment_structure(halfspace, mode):
    ds, _, _ = halfspace
    cfg = MetaConfig(n_train=400, n_test=200, neurons=20, k=10, episodes=2, batch=10, steps=30,
                     lr=0.1, eval_every=30, eval_train=100, eval_examples=100, mode=mode)
    out = theory.theorem1_experiment(cfg, ds, 2, output_init=1.0)
    assert out["mode"] == mode and len(out["starts"]) == 2
    assert [r["seed"] for r in out["starts"]] == [0, 1]
    for r in out["starts"]:
        final = torch.tensor(r["final"], dtype=torch.float64)
        assert torch.tensor(r["initial"]).shape == (2, 2) == final.shape
        assert r["initial"] != r["final"]  # GD moved the table
        assert r["pattern"] == theory.sign_pattern(final)
        assert 0.0 <= r["accuracy"] <= 1.0
        # Catches: loss_first / loss_last swapped or taken from the same step (measured 0.87 ->
        # 0.59 and 1.03 -> 0.61 in 30 steps of lr 0.1, both modes)
        assert r["loss_last"] < 0.8 * r["loss_first"], r
        # Catches: a reported column difference that is not d[a] = r[a,0] - r[a,1] of the final
        d = final[:, 0] - final[:, 1]
        assert r["difference"] == pytest.approx(d.tolist(), abs=1e-12)
        assert r["difference_perceptron"] == bool(d[0] < 0 < d[1])
    assert out["starts"][0]["initial"] != out["starts"][1]["initial"]  # random starts
    assert out["perceptron_count"] == sum(r["perceptron"] for r in out["starts"])
    assert out["difference_perceptron_count"] == 2  # GD found the identifiable perceptron form
    assert sum(out["patterns"].values()) == 2
    # Catches: start s reported from another start's run: start 1 is meta_train at seed 1
    alone = meta_train(dataclasses.replace(cfg, seed=1, output_init=1.0), ds)
    one = out["starts"][1]
    assert one["final"] == alone.rule.output.table().tolist()
    assert (one["loss_first"], one["loss_last"]) == (alone.history[0]["loss"],
                                                     alone.history[-1]["loss"])
    with pytest.raises(PlasticityError, match="T=1"):
        theory.theorem1_experiment(MetaConfig(T=2), ds, 1)


def test_slack_data_lies_in_the_ball_with_margin_and_flipped_labels_make_d2():
    gen = torch_generator(0, "test-slack")
    w, X, y, D2 = theory.slack_data(10, 0.1, 400, gen, radius=2.0, noise=0.05, runs=2)
    assert X.shape == (2, 400, 10) and torch.all(X.norm(dim=-1) <= 2.0 + 1e-12)
    signed = torch.einsum("rmn,rn->rm", X, w) * y
    assert torch.all(signed.abs() >= 0.1)  # every point is gamma away from w*'s threshold
    flipped = signed < 0
    assert 0 < int(flipped.sum()) < 80  # ~5% of 800
    expected = ((0.1 - signed).clamp(min=0) ** 2).sum(1)
    assert torch.allclose(D2, expected) and torch.all(D2 > 0)
    *_, D2_clean = theory.slack_data(10, 0.1, 100, torch_generator(0, "x"), noise=0.0)
    assert float(D2_clean.sum()) == 0.0


def _margin_perceptron(X, y, gamma, a, b):
    """The Theorem 4 learner one example at a time in numpy (the reference for the batched one)."""
    import numpy as np

    w, mistakes, updates = np.zeros(X.shape[1]), 0, 0
    for x, t in zip(X.numpy(), y.numpy()):
        s = float(w @ x)
        wrong = (1.0 if s > 0 else -1.0) != t
        if wrong or t * s < gamma:
            w += t * x * np.where(x > 0, b, a)
            updates += 1
        mistakes += wrong
    return mistakes, updates


@pytest.mark.parametrize("a,b,noise", [(1.0, 1.0, 0.0), (0.5, 2.0, 0.0), (1.0, 2.0, 0.03)])
def test_theorem4_mistakes_stay_within_the_bound_and_match_a_plain_loop(a, b, noise):
    out = theory.theorem4_experiment(10, 0.15, a, b, examples=600, noise=noise, seed=1, runs=3)
    assert all(m <= bd for m, bd in zip(out["margin"]["mistakes"], out["bound"]))
    assert all(u >= m for u, m in zip(out["margin"]["updates"], out["margin"]["mistakes"]))
    assert out["mistakes"]["updates"] == out["mistakes"]["mistakes"]  # mistakes-only scheme
    _, X, y, _ = theory.slack_data(10, 0.15, 600, torch_generator(1, "theorem4", 10, 0.15, noise),
                                   noise=noise, runs=3)
    for r in range(3):
        assert _margin_perceptron(X[r], y[r], 0.15, a, b) == (out["margin"]["mistakes"][r],
                                                              out["margin"]["updates"][r])
        assert _margin_perceptron(X[r], y[r], 0.0, a, b)[0] == out["mistakes"]["mistakes"][r]


def test_theorem4_refuses_a_bad_rule_or_margin():
    with pytest.raises(PlasticityError, match="b >= a"):
        theory.theorem4_experiment(5, 0.1, 2.0, 1.0, examples=10)
    with pytest.raises(PlasticityError, match="gamma > 0"):
        theory.theorem4_experiment(5, 0.0, 1.0, 1.0, examples=10)
