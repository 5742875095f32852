"""The selectable dynamics (docs/dynamics.md): firing = positive | topk, recurrence = paper |
code, meta_loss = logits | softmax. Each is checked against the slow float64 reference
(tests/reference.py), through gradcheck, and for determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import reference as ref
import torch
from plasticity import PlasticityError
from plasticity.config import MetaConfig, TrainConfig
from plasticity.learning import example_orders, train_with_rule
from plasticity.meta import episode_loss, meta_loss, meta_train
from plasticity.network import make_networks, topk_mask
from plasticity.rules import LayerRule, Rule, Scheme
from plasticity.seeding import torch_generator

F64 = torch.float64
D, V, K, CLASSES, N = 10, 12, 6, 3, 3
N_EX, L = 300, 200


def _tables(T: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    S = 2**T
    return torch.randn(S, S, generator=g, dtype=F64), torch.randn(S, 2, generator=g, dtype=F64)


# ------------------------------------------------------------------ the cap's kept set


def test_topk_mask_keeps_exactly_k_with_ties_to_the_lowest_index():
    """Catches a kept set that depends on torch.topk's unspecified tie order (or is not k)."""
    g = torch.Generator().manual_seed(0)
    r = torch.relu(torch.randn(50, 40, generator=g, dtype=F64)).round(decimals=1)  # many ties
    r[0] = 0.0  # an all-zero row: the cap keeps indices 0..k-1
    for k in (1, 7, 20, 39):
        m = topk_mask(r, k)
        assert (m.sum(-1) == k).all()
        for row in range(r.shape[0]):
            np.testing.assert_array_equal(m[row].numpy(), ref.keep_mask(r[row].numpy(), k))
    assert topk_mask(r, 40).all()


def test_topk_firing_fires_exactly_k_every_round_and_keeps_the_same_values():
    """Catches topk firing changing h (only histories may differ) or firing != k per round."""
    T, k = 3, 10
    kw = dict(neurons=30, k=k, p=0.5, T=T, seed=2, dtype=F64, recurrence="code")
    pos = make_networks(2, D, CLASSES, firing="positive", **kw)
    top = make_networks(2, D, CLASSES, firing="topk", **kw)
    x = torch.randn(2, 16, D, generator=torch.Generator().manual_seed(1), dtype=F64)
    W = torch.randn(2, 30, 30, generator=torch.Generator().manual_seed(2), dtype=F64) * pos.graph
    W[1] = 0.0  # network 1: rounds 2..T see only zeros (the code's recurrence at W = 0)
    h_pos, hist_pos = pos.hidden(x, W)
    h_top, hist_top = top.hidden(x, W)
    assert torch.equal(h_pos, h_top)
    for t in range(T):
        bit = (hist_top >> (T - 1 - t)) & 1
        assert (bit.sum(-1) == k).all()
    # positive firing: at W = 0 rounds 2 and 3 fire nothing; topk: neurons 0..k-1 (tie order)
    assert ((hist_pos[1] & 3) == 0).all()
    assert ((hist_top[1] & 1)[:, :k] == 1).all() and ((hist_top[1] & 1)[:, k:] == 0).all()


# ------------------------------------------------------------------ engine == reference

CASES = list(itertools.product(("topk", "positive"), ("paper", "code"), (1, 3),
                               ("additive", "multiplicative")))


@pytest.mark.parametrize("firing,recurrence,T,mode", CASES)
def test_rule_training_matches_reference(task, firing, recurrence, T, mode):
    """Same final W, U and update counts as the one-example-at-a-time float64 loop, for every
    (firing, recurrence) pair; catches a firing or tie order that differs from the spec."""
    x, y = task
    neurons, k = (V, K) if mode == "additive" else (40, 20)
    rnn, out = _tables(T, seed=T + 10)
    rule = Rule(T, LayerRule.from_table("output", T, out), LayerRule.from_table("rnn", T, rnn),
                mode, Scheme())
    nets = make_networks(N, D, CLASSES, neurons=neurons, k=k, p=0.5, T=T, seed=5, dtype=F64,
                         recurrence=recurrence, firing=firing)
    order = example_orders(N, N_EX, 1, torch_generator(3, "order"))[:, :L]
    W_ref, U_ref, updates_ref, ties = ref.train_all(nets, rnn, out, x, y, order, eta=0.01,
                                                    mode=mode)
    assert ties.sum() == 0, "the reference hit a cap tie at a positive value: ill-posed"
    assert updates_ref.min() > 0
    for chunk in (0, 1, 7):
        res = train_with_rule(nets, rule, x, y, x[:10], y[:10], order=order, eval_every=L,
                              chunk=chunk)
        np.testing.assert_array_equal(res.updates, updates_ref)
        np.testing.assert_allclose(res.W.numpy(), W_ref, rtol=0, atol=1e-10)
        np.testing.assert_allclose(res.U.numpy(), U_ref, rtol=0, atol=1e-10)


def test_topk_firing_changes_what_is_learned(task):
    """The option is live: topk and positive firing give different weights (else the flag would
    be silently ignored somewhere between the config and the engine)."""
    x, y = task
    rnn, out = _tables(3, seed=1)
    rule = Rule(3, LayerRule.from_table("output", 3, out), LayerRule.from_table("rnn", 3, rnn))
    order = example_orders(N, N_EX, 1, torch_generator(0, "order"))[:, :L]
    res = {}
    for firing in ("positive", "topk"):
        nets = make_networks(N, D, CLASSES, neurons=V, k=K, p=0.5, T=3, seed=5, dtype=F64,
                             recurrence="code", firing=firing)
        res[firing] = train_with_rule(nets, rule, x, y, x[:10], y[:10], order=order,
                                      eval_every=L)
    assert not torch.allclose(res["positive"].W, res["topk"].W)


# ------------------------------------------------------------------ meta-learning gradients


def _tie_free(firing, recurrence, tables, loss, eta=0.05, margin=1e-5):
    """Networks and a batch whose discrete decisions sit >= margin from a tie (smooth loss)."""
    for s in range(60):
        nets = make_networks(2, D, CLASSES, neurons=8, k=4, p=0.5, T=3, seed=s, dtype=F64,
                             recurrence=recurrence, firing=firing)
        g = torch.Generator().manual_seed(s)
        xs = torch.randn(2, 5, D, generator=g, dtype=F64)
        ys = torch.randint(0, CLASSES, (2, 5), generator=g)
        margins: list = []
        with torch.no_grad():
            ref.meta_step_reference(nets, *tables, xs, ys, eta=eta, margins=margins, loss=loss)
        if min(margins) > margin:
            return nets, xs, ys
    raise AssertionError("no tie-free setup found")


@pytest.mark.parametrize("firing,recurrence,loss", [("topk", "code", "softmax"),
                                                    ("topk", "paper", "logits"),
                                                    ("positive", "code", "softmax")])
def test_episode_loss_matches_reference_and_gradcheck(firing, recurrence, loss):
    """Loss and gradient equal the per-example reference and pass gradcheck (T=3, 5 steps);
    catches a meta_loss that is not the double softmax, or a firing the unroll ignores."""
    rnn, out = _tables(3, seed=7)
    nets, xs, ys = _tie_free(firing, recurrence, (rnn, out), loss)

    def engine(r, o):
        return episode_loss(nets, r, o, xs, ys, eta=0.05, mode="additive", scheme=Scheme(),
                            loss=loss)

    r1, o1 = rnn.clone().requires_grad_(), out.clone().requires_grad_()
    r2, o2 = rnn.clone().requires_grad_(), out.clone().requires_grad_()
    le = engine(r1, o1)
    lr = ref.meta_step_reference(nets, r2, o2, xs, ys, eta=0.05, loss=loss)
    assert torch.allclose(le, lr, rtol=0, atol=1e-12)
    for a, b in zip(torch.autograd.grad(le, (r1, o1)), torch.autograd.grad(lr, (r2, o2)),
                    strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(engine, (r1, o1), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_softmax_meta_loss_is_bounded_and_differs_from_logits():
    """CE on softmax outputs lies in [log(l-1+e) - 1, log(l-1+e)]; CE on logits is unbounded."""
    logits = torch.tensor([[50.0, 0.0, 0.0], [0.0, 50.0, 0.0]], dtype=F64)
    y = torch.tensor([0, 0])
    lo, hi = np.log(CLASSES - 1 + np.e) - 1, np.log(CLASSES - 1 + np.e)
    s = meta_loss(logits, y, "softmax")
    assert torch.allclose(s, torch.tensor([lo, hi], dtype=F64), atol=1e-12)
    assert meta_loss(logits, y, "logits")[1] > 49
    with pytest.raises(PlasticityError, match="meta_loss"):
        meta_loss(logits, y, "mse")


# ------------------------------------------------------------------ determinism and config


def test_meta_training_with_reference_dynamics_is_deterministic(relu1_data):
    """Two runs of the same seed give the same rule bit for bit (topk ties are index-broken)."""
    cfg = MetaConfig(dataset="relu1", neurons=20, k=10, T=3, learn="both", episodes=2, batch=10,
                     steps=3, eval_every=3, eval_train=50, eval_examples=50, recurrence="code",
                     firing="topk", meta_loss="softmax", n_train=200, n_test=100)
    a = meta_train(cfg, relu1_data)
    b = meta_train(cfg, relu1_data)
    assert torch.equal(a.rule.rnn.table(), b.rule.rnn.table())
    assert torch.equal(a.rule.output.table(), b.rule.output.table())
    assert a.history[0]["loss"] != pytest.approx(a.history[-1]["loss"], abs=0)  # it moved


@pytest.fixture(scope="module")
def relu1_data():
    from plasticity.data import load_dataset

    return load_dataset("relu1", data_seed=0)


@pytest.mark.parametrize("field,bad", [("firing", "spikes"), ("recurrence", "rnn")])
def test_unknown_dynamics_is_one_line(field, bad):
    with pytest.raises(PlasticityError, match=field) as err:
        TrainConfig(**{field: bad})
    assert "\n" not in str(err.value)
    with pytest.raises(PlasticityError, match="meta_loss"):
        MetaConfig(meta_loss="mse")


# ------------------------------------------------------------------ restarts after a collapse


def _restart_cfg(**kw) -> MetaConfig:
    base = dict(dataset="halfspace", neurons=20, k=10, T=1, episodes=2, batch=20, steps=6,
                eval_every=6, eval_train=100, eval_examples=200, n_train=400, n_test=200,
                restarts=2, restart_after=3)
    return MetaConfig(**{**base, **kw})


def test_a_collapsed_start_is_restarted():
    """A start that cannot learn (zero output table, lr = 1e-60 underflows to 0 in float32: every
    prediction is class 0, at most the majority) is abandoned at restart_after, `restarts`
    times; catches a restart that never fires or never stops. The last start runs to the end,
    and trackers see steps counting on (an abandoned start's checked step is not reported)."""
    from plasticity.data import load_dataset

    hs = load_dataset("halfspace")
    seen = []
    res = meta_train(_restart_cfg(lr=1e-60), hs, on_step=seen.append)
    assert [c["attempt"] for c in res.collapsed_starts] == [0, 1]
    assert len(res.history) == 6 and res.history[-1]["step"] == 6
    assert [r["step"] for r in seen] == [1, 2, 4, 5, 7, 8, 9, 10, 11, 12]
    assert [r["start"] for r in seen] == [0, 0, 1, 1, 2, 2, 2, 2, 2, 2]


def test_a_learning_start_is_not_restarted():
    """A start that learns (from zero, Adam's first steps follow the gradient's sign: the
    perceptron pattern, Theorem 1) keeps going: no restart, the same rule as restarts=0."""
    from plasticity.data import load_dataset

    hs = load_dataset("halfspace")
    a = meta_train(_restart_cfg(lr=0.1), hs)
    b = meta_train(_restart_cfg(lr=0.1, restarts=0), hs)
    assert a.collapsed_starts == []
    assert torch.equal(a.rule.output.table(), b.rule.output.table())


def test_training_under_other_dynamics_than_learned_is_named():
    """A rule learned under code/topk trained under the defaults is flagged (the CLI warns);
    catches a mismatch check that compares the wrong fields or flags classic rules."""
    from plasticity.rules.classic import perceptron
    from plasticity.transfer import dynamics_mismatch

    out = LayerRule.from_table("output", 1, [[-1.0, 1.0], [1.0, -1.0]])
    learned = Rule(1, out, provenance={"config": {"recurrence": "code", "firing": "topk"}})
    msg = dynamics_mismatch(learned, TrainConfig())
    assert "recurrence=code (this run: paper)" in msg and "firing=topk (this run: positive)" in msg
    assert dynamics_mismatch(learned, TrainConfig(recurrence="code", firing="topk")) is None
    old = Rule(1, out, provenance={"config": {"seed": 0}})  # learned before the fields existed
    assert dynamics_mismatch(old, TrainConfig()) is None
    assert "firing=positive" in dynamics_mismatch(old, TrainConfig(firing="topk"))
    assert dynamics_mismatch(Rule(1, perceptron(1)), TrainConfig(firing="topk")) is None


def test_recurrence_diagnostics_tell_silent_copied_and_live_rounds():
    """W = 0: the paper's rounds repeat round 1 (h_T = h_1), the code's are silent; a random W
    makes every round differ. Catches diagnostics that read the wrong round or the wrong W."""
    from plasticity.dynamics import recurrence_diagnostics

    x = torch.randn(40, D, generator=torch.Generator().manual_seed(0), dtype=F64)
    kw = dict(neurons=30, k=15, p=0.5, T=3, seed=1, dtype=F64)
    paper = make_networks(2, D, CLASSES, recurrence="paper", **kw)
    code = make_networks(2, D, CLASSES, recurrence="code", **kw)
    zero = torch.zeros(2, 30, 30, dtype=F64)
    d = recurrence_diagnostics(paper, zero, x)
    assert d["h_T_differs"] == [0.0, 0.0] and d["silent_rounds"] == [0.0, 0.0]
    d = recurrence_diagnostics(code, zero, x)
    assert d["h_T_differs"] == [1.0, 1.0] and d["silent_rounds"] == [1.0, 1.0]
    assert all(r[1] == r[2] == 0.0 < r[0] for r in d["active_by_round"])
    W = torch.randn(2, 30, 30, generator=torch.Generator().manual_seed(2), dtype=F64) * paper.graph
    d = recurrence_diagnostics(paper, W, x)
    assert min(d["h_T_differs"]) == 1.0 and min(d["Wh_vs_Ax"]) > 0.1
    np.testing.assert_allclose(d["W_std"], [W[n][paper.graph[n] > 0].std(unbiased=False)
                                            for n in range(2)], rtol=1e-6)
