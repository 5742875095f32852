"""The lifetime objective (evolution/lifetime.py): per-network rule tables are exact (members x
networks in one batch equal each network learned alone); members of a generation share their
networks, orders and validation examples; lifetime runs resume exactly and equal on 2 actors;
bad input is one line."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from plasticity.data import load_dataset
from plasticity.evolution.config import EvolutionConfig
from plasticity.evolution.driver import CHECKPOINT, run_evolution
from plasticity.evolution.lifetime import LifetimeEvaluator
from plasticity.learning import RuleLearner
from plasticity.network import make_networks
from plasticity.rules import LayerRule, Rule, Scheme
from test_cli import assert_one_line_error, in_process


def _rule(T, out, rnn, mode="additive", scheme=None):
    return Rule(T, LayerRule.from_table("output", T, out),
                None if rnn is None else LayerRule.from_table("rnn", T, rnn), mode,
                scheme or Scheme(), {})


@pytest.mark.parametrize("T,mode,rows,update_on", [
    (1, "additive", "label_pred", "mistakes"),
    (3, "additive", "label_pred", "mistakes"),
    (3, "additive", "all", "all"),
    (2, "multiplicative", "label_pred", "mistakes"),
])
def test_per_network_tables_equal_each_network_learned_alone(task, T, mode, rows, update_on):
    x, y = task
    N, S = 4, 2**T
    g = torch.Generator().manual_seed(7)
    out = torch.randn(N, S, 2, generator=g, dtype=torch.float64)
    rnn = 0.3 * torch.randn(N, S, S, generator=g, dtype=torch.float64) if T > 1 else None
    scheme = Scheme(update_on, rows)
    nets = make_networks(N, x.shape[1], 3, neurons=24, k=8, p=0.5, T=T, seed=3,
                         dtype=torch.float64)
    order = torch.stack([torch.randperm(x.shape[0], generator=g) for _ in range(N)])
    base = _rule(T, out[0], None if rnn is None else rnn[0], mode, scheme)
    batch = RuleLearner(nets, base, eta=0.05, tables=(rnn, out))
    batch.learn(x, y, order)
    assert int(batch.updates.min()) > 0  # every network really learned
    for i in range(N):
        one = RuleLearner(nets.select(slice(i, i + 1)),
                          _rule(T, out[i], None if rnn is None else rnn[i], mode, scheme), eta=0.05)
        one.learn(x, y, order[i:i + 1])
        torch.testing.assert_close(batch.U[i], one.U[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(batch.W[i], one.W[0], rtol=0, atol=1e-12)
        assert int(batch.updates[i]) == int(one.updates[0])
    # and the members' rules really differ: their networks end apart
    assert not torch.allclose(batch.U[0], batch.U[1])


def test_per_network_tables_of_the_wrong_shape_are_refused(task):
    x, _ = task
    nets = make_networks(2, x.shape[1], 3, neurons=24, k=8, p=0.5, T=3, seed=0,
                         dtype=torch.float64)
    rule = _rule(3, torch.zeros(8, 2, dtype=torch.float64), torch.zeros(8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="output tables"):
        RuleLearner(nets, rule, 0.01, tables=(torch.zeros(2, 8, 8), torch.zeros(3, 8, 2)))
    with pytest.raises(ValueError, match="RNN tables"):
        RuleLearner(nets, rule, 0.01, tables=(torch.zeros(2, 4, 8), torch.zeros(2, 8, 2)))


# --- the lifetime objective ---------------------------------------------------------------

LIFE = dict(objective="lifetime", dataset="relu1", T=3, learn="both", neurons=30, k=15,
            n_train=700, n_test=200, lifetime_examples=400, lifetime_networks=2, validation=150,
            population=6, generations=3, strategy="es")


@pytest.fixture(scope="module")
def relu1():
    return load_dataset("relu1")


def life(**kw) -> EvolutionConfig:
    return EvolutionConfig(**{**LIFE, **kw})


def test_members_of_a_generation_share_networks_orders_and_validation(relu1):
    ev = LifetimeEvaluator(life(), relu1)
    start = ev.space.initial()
    g = np.random.default_rng(0)
    other = start + 0.5 * g.standard_normal(start.shape)
    both = ev.scores(np.stack([start, other, start]), generation=1)
    assert both[0].tolist() == both[2].tolist()  # the same rule, the same draws: the same score
    assert both[0].tolist() != both[1].tolist()  # another rule scores otherwise
    alone = ev.scores(start[None], generation=1)
    assert alone[0].tolist() == both[0].tolist()  # a score does not depend on its batch-mates
    assert torch.equal(ev.networks(1).A, ev.networks(1).A) and torch.equal(ev.orders(1), ev.orders(1))
    assert not torch.equal(ev.networks(2).A, ev.networks(1).A)  # a new generation: new draws
    assert not torch.equal(ev.orders(2), ev.orders(1))
    # validation = the last examples of the training set, never the test set; the lifetimes
    # learn only from the examples before them
    assert torch.equal(ev.xv, relu1.x_train[550:700].to(ev.xv))
    assert int(ev.orders(1).max()) < 550 and ev.orders(1).shape == (2, 400)
    loss, acc, ce = alone[0]
    assert 0.0 < acc <= 1.0 and loss == 1.0 - acc and np.isfinite(ce) and ce > 0  # error: default
    ce_ev = LifetimeEvaluator(life(lifetime_loss="ce"), relu1)
    assert ce_ev.scores(start[None], generation=1)[0].tolist() == [ce, acc, ce]


@pytest.mark.parametrize("strategy", ["es", "cma", "ga", "genetic"])
def test_lifetime_evolution_resumes_exactly(strategy, relu1, tmp_path):
    kw = {"genes": 8} if strategy == "genetic" else {}
    cfg = life(strategy=strategy, **kw)
    whole = run_evolution(cfg, relu1, out=tmp_path / "a")
    run_evolution(cfg, relu1, out=tmp_path / "b", stop_after=1)
    resumed = run_evolution(cfg, relu1, out=tmp_path / "b", resume=True)
    np.testing.assert_array_equal(whole.final, resumed.final)
    strip = [{k: v for k, v in h.items() if "seconds" not in k} for h in whole.history]
    assert strip == [{k: v for k, v in h.items() if "seconds" not in k} for h in resumed.history]
    ck = json.loads((tmp_path / "b" / CHECKPOINT).read_text())
    assert ck["state"] == json.loads((tmp_path / "a" / CHECKPOINT).read_text())["state"]
    h = whole.history[-1]
    assert h["examples"] == 3 * 7 * 400 * 2  # generations x (members + center) x L x M
    assert 0.0 < h["accuracy_center"] <= 1.0


def test_lifetime_on_two_actors_equals_in_process(ray_local, relu1):
    from plasticity.evolution.ray_pool import RayPool

    cfg = life(strategy="cma", generations=2)
    local = run_evolution(cfg, relu1)
    pool = RayPool(dataclasses.replace(cfg, workers=2), 2, 1.0)
    try:
        remote = run_evolution(dataclasses.replace(cfg, workers=2), relu1, pool=pool)
    finally:
        pool.close()
    np.testing.assert_array_equal(local.final, remote.final)
    strip = lambda hs: [{k: v for k, v in h.items() if "seconds" not in k} for h in hs]  # noqa: E731
    assert strip(local.history) == strip(remote.history)


@pytest.mark.parametrize("sets, needle", [
    (["lifetime_examples=0"], "lifetime_examples=0"),
    (["lifetime_networks=0"], "lifetime_networks=0"),
    (["validation=600"], "validation=600"),
    (["strategy=nope"], "strategy='nope'"),
    (["objective=nope"], "objective='nope'"),
    (["lifetime_loss=mse"], "lifetime_loss='mse'"),
])
def test_bad_lifetime_input_is_one_line_exit_2(sets, needle, capsys, tmp_path):
    args = ["evolve", "--preset", "smoke", "--set", "objective=lifetime", "--set", "n_train=600",
            "--out", str(tmp_path / "x"), "--no-progress"]
    proc = in_process(capsys, *args, *[a for s in sets for a in ("--set", s)])
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "x").exists()


def test_a_lifetime_field_without_the_lifetime_objective_is_refused(capsys, tmp_path):
    proc = in_process(capsys, "evolve", "--preset", "smoke", "--set", "validation=10",
                      "--out", str(tmp_path / "x"))
    assert_one_line_error(proc, "validation applies to objective=lifetime")


def test_compare_lifetime_runs_every_outer_loop_at_equal_examples_on_one_chart(capsys, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = in_process(capsys, "compare", "--preset", "lifetime-smoke", "--out", str(tmp_path / "c"),
                      "--no-progress", "--tracking-uri", uri, "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    methods = res["runs"][0]["methods"]
    assert list(methods) == ["es", "cma", "ga", "gd"]
    budget = {m["examples"] for n, m in methods.items() if n != "gd"}
    assert len(budget) == 1 and methods["gd"]["examples"] == budget.pop()  # equal inner loops
    for m in methods.values():
        assert m["curve"][0]["examples"] == 0 and len(m["curve"]) >= 3
        assert 0 < m["test_accuracy"] <= 1 and 0 <= m["diagnostics"]["h_T_differs"] <= 1
    # the start is the same rule for every method: one first point
    assert len({m["curve"][0]["accuracy"] for m in methods.values()}) == 1
    assert (tmp_path / "c" / "curves_seed0.png").stat().st_size > 10_000
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("plasticity").experiment_id])
    keys = set(next(r for r in runs if "mlflow.parentRunId" not in r.data.tags).data.metrics)
    for n in methods:  # one validation-accuracy metric per method, the same name pattern
        assert f"compare/seed0/{n}/validation_accuracy" in keys
        assert f"compare/seed0/{n}/diag/h_T_differs" in keys
    runs = client.search_runs([client.get_experiment_by_name("plasticity").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "curves_seed0.png" in arts
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert res["method_runs"] == len(children) == 4  # one child run per method, same names:
    for child in children:  # the UI overlays them on one chart
        assert {"validation_accuracy", "test_accuracy", "diag/h_T_differs"} <= set(child.data.metrics)
        curve = client.get_metric_history(child.info.run_id, "validation_accuracy")
        assert [m.step for m in curve] == [p["examples"] for p in
                                           methods[child.data.tags["compare.method"]]["curve"]]


def test_a_comparison_accepts_the_fields_of_its_strategies_and_gives_each_only_its_own():
    from plasticity import PlasticityError
    from plasticity.evolution.config import CompareConfig
    from plasticity.evolution.strategies import for_strategy

    cfg = CompareConfig(**LIFE, strategies="es,genetic", sigma=0.3, genes=5)
    es, genetic = for_strategy(cfg, "es"), for_strategy(cfg, "genetic")
    assert (es.strategy, es.sigma, es.genes, es.strategies) == ("es", 0.3, 20, "")
    assert (genetic.strategy, genetic.sigma, genetic.genes) == ("genetic", 0.1, 5)
    with pytest.raises(PlasticityError, match="^genes applies to genetic; strategy=es|cma does"):
        CompareConfig(**{**LIFE, "strategy": "genetic"}, strategies="es,cma", genes=5)
    with pytest.raises(PlasticityError, match="strategies applies to objective=lifetime"):
        CompareConfig(strategies="es,cma")
