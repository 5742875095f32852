"""Meta-learning: GD on the T=1 output rule finds the perceptron (the paper's central claim), and
the options beyond the paper's default: truncated long episodes (horizon), a fixed output rule."""

from __future__ import annotations

import pytest
import torch
from plasticity import PlasticityError
from plasticity.commands.meta_train import PRESETS as META_PRESETS
from plasticity.config import MetaConfig
from plasticity.data import load_dataset
from plasticity.meta import Lives, RuleParams, evaluate_rule, meta_train
from plasticity.network import make_networks
from plasticity.rules.classic import perceptron
from plasticity.theory import sign_pattern


def tiny(**kw) -> MetaConfig:
    base = dict(dataset="relu1", neurons=20, k=10, T=3, learn="both", episodes=4, batch=10,
                steps=6, n_train=400, eval_every=6, eval_train=200, eval_examples=200)
    return MetaConfig(**{**base, **kw})


def test_gd_turns_the_anti_perceptron_output_rule_into_the_perceptron():
    """docs/paper.md 6 / results/README.md "The last layer": meta-learning the T=1 output rule on
    Halfspace from a
    fixed start whose column differences d[a] = r[a,0] - r[a,1] have the wrong signs (the
    anti-perceptron [+,-;-,+]) lowers the meta-loss and ends with d[0] < 0 < d[1], the part of the
    table the loss sees (with two classes the common part of each row cancels). About 1 s."""
    # Catches: no optimizer step, a gradient of the wrong sign, an unroll that cuts the gradient
    # to the rule, an output rule applied to the wrong rows (the target is the perceptron).
    smoke = META_PRESETS["smoke"]
    cfg = MetaConfig(**{**smoke, "steps": 40, "eval_every": 40, "lr": 0.1, "output_init": 1.0,
                        "seed": 4, "dataset": "halfspace", "T": 1, "learn": "output"})
    data = load_dataset("halfspace")
    start = RuleParams(cfg, "cpu").rule({})
    s = start.output.table()
    assert sign_pattern(s) == "[+,-;-,+]" and s[0, 0] - s[0, 1] > 0 > s[1, 0] - s[1, 1]
    res = meta_train(cfg, data)
    assert res.skipped == 0
    losses = [h["loss"] for h in res.history]
    assert len(losses) == cfg.steps
    assert sum(losses[-5:]) < 0.3 * sum(losses[:5]), losses  # measured: 3.4 -> 0.45
    out = res.rule.output.table()
    d = out[:, 0] - out[:, 1]
    assert d[0] < 0 < d[1], out  # the perceptron pattern in its identifiable form
    assert d[1] > -d[0]  # the fired row's difference is the larger (README: in all 30 runs)
    # and the rule it found trains networks better than the start did (measured 0.86 vs ~0.5)
    acc = {name: evaluate_rule(cfg, rule, data, "cpu", n_train=cfg.eval_train,
                               n_test=cfg.eval_examples) for name, rule in
           (("start", start), ("learned", res.rule))}
    assert acc["learned"] > max(0.75, acc["start"] + 0.2), acc


def test_lives_keep_learning_and_restart_staggered():
    cfg = tiny(horizon=30)  # 3 steps of 10 examples per life
    nets = make_networks(4, 10, 2, neurons=20, k=10, p=0.5, T=3, seed=0)
    lives = Lives(cfg, nets)
    assert lives.age == [0, 0, 1, 2]  # staggered: every step sees networks of several ages
    W, U = lives.start(nets)
    assert torch.all(W == 0) and torch.all(U == 0)
    lives.keep((W + 1.0, U + 1.0))
    assert lives.age == [1, 1, 2, 0]
    W2, U2 = lives.start(nets)
    # slot 3 restarted from fresh weights; the others carry their learned weights on
    assert torch.all(W2[3] == 0) and torch.all(U2[3] == 0)
    assert torch.all(W2[:3] == 1) and torch.all(U2[:3] == 1)
    assert not W2.requires_grad  # the gradient is truncated at the step boundary


def test_horizon_changes_training_and_is_deterministic():
    data = load_dataset("relu1")
    a = meta_train(tiny(horizon=40), data)
    b = meta_train(tiny(horizon=40), data)
    c = meta_train(tiny(horizon=0), data)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert torch.equal(a.rule.rnn.table(), b.rule.rnn.table())
    assert [h["loss"] for h in a.history] != [h["loss"] for h in c.history]
    assert a.skipped == 0


def test_horizon_refuses_resampled_networks():
    with pytest.raises(PlasticityError, match="resample_networks"):
        tiny(horizon=100, resample_networks=True)


def test_learn_rnn_keeps_the_perceptron_output_rule():
    """learn=rnn: only the RNN rule is trained; the output rule is the T=3 perceptron, entry for
    entry, and the RNN rule moved from its start."""
    cfg = tiny(learn="rnn", steps=2)
    res = meta_train(cfg, load_dataset("relu1"))
    # Catches: an output rule that is trained too, or a wrong fixed table (a sign or a row off).
    assert torch.equal(res.rule.output.table(), perceptron(3).table())
    assert res.rule.rnn is not None
    start = RuleParams(cfg, "cpu").rule({}).rnn.table()
    assert not torch.equal(res.rule.rnn.table(), start)  # catches: the RNN rule not learned


def test_best_of_starts_is_selected_on_held_out_training_examples():
    """select_starts=3: three starts learn on the pool minus 100 held-out examples, each rule is
    scored on those, the best is kept; start 0 is the plain run on that pool."""
    data = load_dataset("relu1")
    res = meta_train(tiny(select_starts=3, select_examples=100), data)
    scores = [s["validation_accuracy"] for s in res.selection]
    assert [s["start"] for s in res.selection] == [0, 1, 2]
    chosen = [s["start"] for s in res.selection if s["selected"]]
    assert chosen == [scores.index(max(scores))]
    assert res.rule.provenance["selected_start"] == chosen[0]
    assert len(set(scores)) > 1  # the starts differ
    plain = meta_train(tiny(n_train=300), data)  # start 0 alone on the same 300-example pool
    held = (data.x_train[300:400], data.y_train[300:400])
    assert evaluate_rule(tiny(n_train=300), plain.rule, data, "cpu", n_train=200, n_test=0,
                         networks=3, test=held) == scores[0]
    again = meta_train(tiny(select_starts=2, select_examples=100), data)
    assert again.selection[0]["validation_accuracy"] == res.selection[0]["validation_accuracy"]
    with pytest.raises(PlasticityError, match="select_examples=390 leaves 10"):
        meta_train(tiny(select_starts=2, select_examples=390, batch=20), data)
