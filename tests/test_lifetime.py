"""Per-network rule tables (the lifetime objective's batch: members x networks, each network
learning by its own member's rule) are exact: the batch equals each network learned alone."""

from __future__ import annotations

import pytest
import torch
from plasticity.learning import RuleLearner
from plasticity.network import make_networks
from plasticity.rules import LayerRule, Rule, Scheme


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
