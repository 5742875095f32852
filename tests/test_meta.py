"""Meta-learning options beyond the paper's default: truncated long episodes (horizon)."""

from __future__ import annotations

import pytest
import torch
from plasticity import PlasticityError
from plasticity.config import MetaConfig
from plasticity.data import load_dataset
from plasticity.meta import _Lives, meta_train
from plasticity.network import make_networks


def tiny(**kw) -> MetaConfig:
    base = dict(dataset="relu1", neurons=20, k=10, T=3, learn="both", episodes=4, batch=10,
                steps=6, n_train=400, eval_every=6, eval_train=200, eval_examples=200)
    return MetaConfig(**{**base, **kw})


def test_lives_keep_learning_and_restart_staggered():
    cfg = tiny(horizon=30)  # 3 steps of 10 examples per life
    nets = make_networks(4, 10, 2, neurons=20, k=10, p=0.5, T=3, seed=0)
    lives = _Lives(cfg, nets)
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
    res = meta_train(tiny(learn="rnn", steps=2), load_dataset("relu1"))
    out = res.rule.output.table()
    assert torch.equal(torch.sign(out[:, 0]), torch.tensor([-1.0, 1.0] * 4, dtype=out.dtype))
    assert res.rule.rnn is not None
