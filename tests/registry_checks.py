"""The checks every registry entry must pass (docs/extending.md): one function per registry.

``tests/test_robustness.py``, ``test_evolution.py`` and ``test_rules.py`` run them over every
entry of ``ATTACKS``, ``STRATEGIES`` and ``PARAMETRIZATIONS`` (parametrised by the registry's
keys, so a new entry is checked without a new test); ``tests/test_extending.py`` runs them on the
worked examples of docs/extending.md, registered for the test only."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from plasticity import PlasticityError
from plasticity.config import MetaConfig, TrainConfig
from plasticity.evolution.config import EvolutionConfig
from plasticity.evolution.driver import run_evolution
from plasticity.evolution.strategies import STRATEGIES, make_strategy, method_name
from plasticity.experiment import run_networks, run_tensors
from plasticity.meta import RuleParams, episode_batches, episode_loss, meta_train
from plasticity.robustness.attacks import ATTACKS, NORMS, FrozenNet
from plasticity.robustness.evaluate import Budget, attack_radius, inside, robustness_curves
from plasticity.rules import LayerRule, Rule, Scheme
from plasticity.rules.classic import classic_rule
from plasticity.rules.io import load_rule, rule_from_dict, rule_to_dict, save_rule
from plasticity.rules.tables import PARAMETRIZATIONS, table_shape
from plasticity.transfer import run_train

# ------------------------------------------------------------------ attacks

ATTACK_BUDGET = Budget(steps=5, restarts=2, paper_steps=5, paper_alpha=5.0, queries=30)
RADII = {"l2": (0.3, 1.5), "linf": (0.05, 0.2)}  # small and medium balls of each threat
LARGE = {"l2": 8.0, "linf": 0.3}  # balls in which every attack breaks some correct example


def frozen_net(data, T: int = 1, seed: int = 0) -> FrozenNet:
    """A small MNIST network trained by the perceptron rule (one pass of 800 examples), frozen."""
    cfg = TrainConfig(dataset="mnist", neurons=60, k=30, T=T, n_train=800, n_test=100, networks=1,
                      eval_every=10**6, eval_examples=1, seed=seed)
    res = run_train(cfg, classic_rule("perceptron", T), data=data)
    return FrozenNet(run_networks(cfg, data, 1, "cpu"), res.W, res.U)


class BlackBox(FrozenNet):
    """A network that refuses every gradient query: all an attack that needs only queries (or a
    surrogate) may use of it."""

    def __init__(self, net: FrozenNet):
        super().__init__(net.nets, net.W, net.U)

    def logits(self, x):
        if torch.is_grad_enabled() and x.requires_grad:
            raise AssertionError("the attacked network was asked for a gradient")
        return super().logits(x)


def attack_kwargs(name: str, surrogate: FrozenNet) -> dict:
    """The keywords robustness_curves passes (shared budget, the entry's own, the surrogate)."""
    attack = ATTACKS[name]
    b = ATTACK_BUDGET
    kw = dict(steps=b.steps, step_scale=b.step_scale, restarts=b.restarts, queries=b.queries,
              gen=torch.Generator().manual_seed(0), lo=0.0, hi=1.0, surrogate=surrogate)
    return {**kw, **(attack.budget(b) if attack.budget is not None else {})}


def check_attack(name: str, net: FrozenNet, x, y, surrogate: FrozenNet) -> None:
    """ATTACKS[name] on a frozen network, in each threat model: its points stay in its own ball
    and in the threat ball and the pixel range, its "broken" points are misclassified, it breaks
    correct examples in a large ball, and it asks the network only for what ``needs`` says."""
    attack = ATTACKS[name]
    assert attack.doc and "\n" not in attack.doc
    clean_wrong = net.predict(x) != y
    for threat in NORMS:
        for eps in (*RADII[threat], LARGE[threat]):
            norm, r = attack_radius(name, threat, eps, x.shape[1])
            assert norm == (threat if attack.norm == "threat" else attack.norm)
            x_adv, broken = attack.fn(net, x, y, r, norm=norm, **attack_kwargs(name, surrogate))
            assert x_adv.shape == x.shape and broken.shape == y.shape and broken.dtype == torch.bool
            assert inside(x_adv, x, r, norm, 0.0, 1.0, tol=1e-5), (name, threat, eps)
            assert inside(x_adv, x, eps, threat, 0.0, 1.0, tol=1e-5), (name, threat, eps)
            # a "broken" example's point really is misclassified, and a break is never lost
            assert bool((net.predict(x_adv[broken]) != y[broken]).all()), (name, threat, eps)
        # Catches: an attack that returns x (or never leaves it): the large ball is broken
        assert int((broken & ~clean_wrong).sum()) > 0, f"{name} breaks nothing in a large ball"
    # what it needs of the attacked network: only "gradients" attacks ask it for a gradient
    box = BlackBox(net)
    norm, r = attack_radius(name, "l2", RADII["l2"][1], x.shape[1])
    if attack.needs == "gradients":
        with pytest.raises(AssertionError, match="asked for a gradient"):
            attack.fn(box, x, y, r, norm=norm, **attack_kwargs(name, surrogate))
    else:
        x_adv, broken = attack.fn(box, x, y, r, norm=norm, **attack_kwargs(name, surrogate))
        assert torch.equal(broken, box.predict(x_adv) != y)
    if attack.needs == "surrogate":
        with pytest.raises(PlasticityError, match=f"attack '{name}' needs a surrogate"):
            robustness_curves(net, x, y, [0.0], [name], budget=ATTACK_BUDGET)
    # through robustness_curves: eps 0 is the clean accuracy, a large eps breaks something
    res = robustness_curves(net, x, y, [0.0, LARGE["l2"]], [name], budget=ATTACK_BUDGET,
                            gen=torch.Generator().manual_seed(0), surrogate=surrogate)
    clean = 1.0 - clean_wrong.double().mean().item()
    assert res["raw"][name][0] == res["clean"] == clean
    assert res["raw"][name][1] < clean


# ------------------------------------------------------------------ evolution strategies

TINY_EVOLUTION = dict(n_train=300, n_test=200, neurons=20, k=10, episodes=2, batch=10,
                      population=6, generations=2)
TARGET = np.array([-1.0, 1.0, 1.5, -0.5])


def quadratic(c: np.ndarray) -> np.ndarray:
    """A smooth test loss with its minimum at TARGET: [n, P] -> [n]."""
    return 0.5 * ((c - TARGET) ** 2).sum(1)


def _jsonable(state: dict) -> dict:
    """The state as it comes back from a checkpoint (write_json refuses NaN / inf)."""
    return json.loads(json.dumps(state, allow_nan=False))


def check_strategy(name: str, data, tmp_path) -> None:
    """STRATEGIES[name]: the ask / tell / state_dict interface (members [n, P] seeded by the
    generation, a tell that uses the losses, an exact JSON state round trip), its fields, the
    one-line refusal of other strategies' fields, and a 2-generation run whose rule file loads."""
    spec = STRATEGIES[name]
    assert spec.doc and "\n" not in spec.doc
    fields = {f.name: f for f in dataclasses.fields(EvolutionConfig)}
    assert set(spec.fields) <= set(fields), "a strategy's fields are EvolutionConfig fields"
    cfg = EvolutionConfig(**TINY_EVOLUTION, strategy=name)
    start = np.array([0.3, -0.2, 0.1, 0.4])
    a, b = make_strategy(cfg, start), make_strategy(cfg, start)
    members = a.ask(1)
    assert members.ndim == 2 and members.shape[1] == 4 and np.isfinite(members).all()
    np.testing.assert_array_equal(members, b.ask(1))  # seeded by (seed, generation) only
    losses = quadratic(members)
    a.tell(1, members, losses)
    b.tell(1, members, losses[::-1].copy())
    # Catches: a tell that ignores the losses (or their order)
    assert not (np.array_equal(a.center(), b.center())
                and np.array_equal(a.ask(2), b.ask(2))), "tell must use the losses"
    assert np.isfinite(a.center()).all() and a.center().shape == (4,)
    assert all(np.isfinite(v) for v in a.stats().values())
    # the state round trip through JSON: the copy continues exactly like the original
    c = make_strategy(cfg, np.zeros(4))
    c.load_state_dict(_jsonable(a.state_dict()))
    np.testing.assert_array_equal(c.center(), a.center())
    for g in (2, 3):
        m = a.ask(g)
        np.testing.assert_array_equal(m, c.ask(g))
        a.tell(g, m, quadratic(m))
        c.tell(g, m, quadratic(m))
    assert _jsonable(a.state_dict()) == _jsonable(c.state_dict())
    # a field only other strategies read, set under this one, is one line naming it and the fix
    for field, f in fields.items():
        users = [s for s, other in STRATEGIES.items() if field in other.fields]
        if not users or field in spec.fields:
            continue
        value = (not f.default) if isinstance(f.default, bool) else (
            "random" if isinstance(f.default, str) else f.default + 1)
        with pytest.raises(PlasticityError) as info:
            EvolutionConfig(**TINY_EVOLUTION, strategy=name, **{field: value})
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(f"{field} applies to {', '.join(users)}")
        assert f"strategy={name} does not use it" in msg and f"strategy={'|'.join(users)}" in msg
    # a 2-generation run on a tiny config: finite history, the rule file with its method
    run = run_evolution(cfg, data, out=tmp_path)
    assert [h["generation"] for h in run.history] == [1, 2]
    assert all(np.isfinite(h["loss_center"]) and np.isfinite(h["loss_best"]) for h in run.history)
    assert run.rule.provenance["method"] == method_name(cfg)
    loaded = load_rule(save_rule(run.rule, tmp_path / "rule.json"))
    assert torch.equal(loaded.output.table(), run.rule.output.table())
    assert json.loads((tmp_path / "checkpoint.json").read_text())["generation"] == 2


# ------------------------------------------------------------------ rule parametrizations

TINY_META = dict(dataset="halfspace", neurons=20, k=10, T=2, learn="both", episodes=3, batch=10,
                 steps=2, n_train=300, n_test=200, eval_every=2, eval_train=200,
                 eval_examples=200, output_init=0.5, hidden=4)


def _layer_rule(name: str, layer: str, T: int, params: dict, hidden: int) -> LayerRule:
    return LayerRule(layer, T, name, params, hidden if PARAMETRIZATIONS[name].uses_hidden else None)


def check_parametrization(name: str, data, tmp_path) -> None:
    """PARAMETRIZATIONS[name]: init (keys, finite, seeded, the table's shape, scale 0 -> zero
    table, leading dims kept), an exact rule-file round trip (and a file with a foreign key is
    refused), and meta-learning steps with a finite, non-zero gradient."""
    spec = PARAMETRIZATIONS[name]
    assert spec.doc and "\n" not in spec.doc
    for layer in ("output", "rnn"):
        for T in (1, 3):
            p = spec.init(layer, T, hidden=4, gen=torch.Generator().manual_seed(0), scale=0.7)
            q = spec.init(layer, T, hidden=4, gen=torch.Generator().manual_seed(0), scale=0.7)
            assert tuple(p) == spec.keys and all(torch.isfinite(v).all() for v in p.values())
            assert all(torch.equal(p[k], q[k]) for k in p)  # the generator is the only randomness
            table = spec.table(layer, T, p)
            assert tuple(table.shape) == table_shape(layer, T) and table.dtype == torch.float64
            assert table.abs().sum() > 0
            zero = spec.init(layer, T, hidden=4, gen=torch.Generator().manual_seed(0), scale=0.0)
            zero_table = torch.zeros(table_shape(layer, T), dtype=torch.float64)
            assert torch.equal(spec.table(layer, T, zero), zero_table), "scale 0: the zero table"
            other = spec.init(layer, T, hidden=4, gen=torch.Generator().manual_seed(1), scale=0.7)
            stacked = spec.table(layer, T, {k: torch.stack([p[k], other[k]]) for k in p})
            assert torch.allclose(stacked[0], table) and torch.allclose(
                stacked[1], spec.table(layer, T, other))
    # rule file round trip: params, tables, hidden exactly as saved
    T = 2
    gen = torch.Generator().manual_seed(3)
    rule = Rule(T, _layer_rule(name, "output", T, spec.init("output", T, hidden=4, gen=gen,
                                                              scale=0.7), 4),
                _layer_rule(name, "rnn", T, spec.init("rnn", T, hidden=4, gen=gen, scale=1.3), 4),
                provenance={"method": "test"})
    back = load_rule(save_rule(rule, tmp_path / "rule.json"))
    for la, lb in ((rule.output, back.output), (rule.rnn, back.rnn)):
        assert (lb.param, lb.hidden, tuple(lb.params)) == (name, la.hidden, spec.keys)
        assert all(torch.equal(la.params[k], lb.params[k]) for k in spec.keys)
        assert torch.equal(la.table(), lb.table())
    d = rule_to_dict(rule)
    d["output"]["params"]["bogus"] = [0.0]
    with pytest.raises(PlasticityError, match=re.escape(f"output.params must have keys {sorted(spec.keys)}")):
        rule_from_dict(d)
    # one meta-learning step by hand: a finite, non-zero gradient for every parameter tensor
    cfg = MetaConfig(**TINY_META, rule_param=name)
    params = RuleParams(cfg, "cpu")
    assert len(params.parameters()) == 2 * len(spec.keys)
    x, y, _, _ = run_tensors(cfg, data, "cpu")
    nets = run_networks(cfg, data, cfg.episodes, "cpu", key="meta-networks")
    idx = next(episode_batches(cfg, x.shape[0], "cpu"))
    rnn_t, out_t = params.tables(x.dtype)
    loss = episode_loss(nets, rnn_t, out_t, x[idx], y[idx], eta=cfg.eta, mode=cfg.mode,
                        scheme=Scheme())
    loss.backward()
    grads = [p.grad for p in params.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    # and the whole loop: steps of Adam move the rule, which comes back as this parametrization
    res = meta_train(cfg, data)
    assert res.skipped == 0 and len(res.history) == cfg.steps
    assert res.rule.output.param == res.rule.rnn.param == name
    start = RuleParams(cfg, "cpu").rule({})
    assert not torch.equal(res.rule.output.table(), start.output.table())
