"""The engine on a CUDA device (marker ``cuda``): rule-based learning and the meta-learning step
against the float64 reference and the CPU, batched groups of networks against networks learned one
at a time, and the ``train`` / ``meta-train`` / ``attack`` commands with ``--device``.

The device is ``PLASTICITY_TEST_DEVICE`` (default ``cuda``); without CUDA these tests skip, and
``bench/device_check.sh --cpu`` runs them with ``PLASTICITY_TEST_DEVICE=cpu`` (the dry run)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import reference as ref
import torch
from plasticity.cli import run
from plasticity.learning import RuleLearner, example_orders, train_with_rule
from plasticity.meta import episode_loss
from plasticity.network import make_networks
from plasticity.rules import LayerRule, Rule, Scheme
from plasticity.seeding import torch_generator

DEVICE = os.environ.get("PLASTICITY_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                       reason="no CUDA device"),
]
F64 = torch.float64
D, CLASSES = 10, 3


def _task(n=300, seed=1234):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=F64)
    y = (x @ torch.randn(D, CLASSES, generator=g, dtype=F64)).argmax(1)
    return x, y


def _rule(T, mode="additive", update_on="mistakes", output_rows="label_pred", seed=0):
    g = torch.Generator().manual_seed(seed)
    S = 2**T
    return Rule(T, LayerRule.from_table("output", T, torch.randn(S, 2, generator=g, dtype=F64)),
                LayerRule.from_table("rnn", T, torch.randn(S, S, generator=g, dtype=F64)), mode,
                Scheme(update_on, output_rows))


@pytest.mark.parametrize("mode,update_on,output_rows", [
    ("additive", "mistakes", "label_pred"), ("multiplicative", "mistakes", "all"),
    ("additive", "all", "label_pred")])
def test_rule_training_on_device_matches_reference(mode, update_on, output_rows):
    x, y = _task()
    rule = _rule(3, mode, update_on, output_rows, seed=3)
    nets = make_networks(3, D, CLASSES, neurons=12, k=6, p=0.5, T=3, seed=7, dtype=F64,
                         device=DEVICE)
    order = example_orders(3, 300, 1, torch_generator(0, "order"))[:, :200]
    rnn, out = rule.tables(dtype=F64)
    cpu_nets = make_networks(3, D, CLASSES, neurons=12, k=6, p=0.5, T=3, seed=7, dtype=F64)
    W_ref, U_ref, updates_ref, ties = ref.train_all(cpu_nets, rnn, out, x, y, order, eta=0.01,
                                                    mode=mode, update_on=update_on,
                                                    output_rows=output_rows)
    assert ties.sum() == 0
    res = train_with_rule(nets, rule, x.to(DEVICE), y.to(DEVICE), x[200:].to(DEVICE),
                          y[200:].to(DEVICE), order=order.to(DEVICE), eval_every=70)
    np.testing.assert_array_equal(res.updates, updates_ref)
    np.testing.assert_allclose(res.W.cpu().numpy(), W_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(res.U.cpu().numpy(), U_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", ["additive", "multiplicative"])
def test_a_batched_group_learns_what_each_network_learns_alone(mode):
    """Networks learned together (one group, partial updates as one batched product with zero
    rows) end exactly where each one learned alone ends (float64, same examples)."""
    x, y = _task(400, seed=5)
    rule = _rule(3, mode, seed=4)
    nets = make_networks(5, D, CLASSES, neurons=16, k=8, p=0.5, T=3, seed=2, dtype=F64,
                         device=DEVICE)
    order = example_orders(5, 400, 1, torch_generator(1, "order")).to(DEVICE)
    xd, yd = x.to(DEVICE), y.to(DEVICE)
    together = RuleLearner(nets, rule, 0.01, group=5)
    together.learn(xd, yd, order)
    for n in range(5):
        alone = RuleLearner(nets.select(slice(n, n + 1)), rule, 0.01)
        alone.learn(xd, yd, order[n:n + 1])
        assert int(alone.updates[0]) == int(together.updates[n])
        torch.testing.assert_close(alone.W[0], together.W[n], rtol=0, atol=1e-12)
        torch.testing.assert_close(alone.U[0], together.U[n], rtol=0, atol=1e-12)


def test_episode_loss_on_device_matches_cpu():
    """Loss and gradient of a meta-learning step (E = 3, T = 3, 8 steps) equal the CPU's."""
    x, y = _task(24, seed=9)
    xs, ys = x.view(3, 8, D), y.view(3, 8)
    g = torch.Generator().manual_seed(3)
    tables = (torch.randn(8, 8, generator=g, dtype=F64), torch.randn(8, 2, generator=g, dtype=F64))
    grads = []
    for dev in ("cpu", DEVICE):
        nets = make_networks(3, D, CLASSES, neurons=10, k=5, p=0.5, T=3, seed=4, dtype=F64,
                             device=dev)
        r, o = (t.to(dev).requires_grad_() for t in tables)
        loss = episode_loss(nets, r, o, xs.to(dev), ys.to(dev), eta=0.05, mode="additive",
                            scheme=Scheme())
        grads.append([loss.detach().cpu(), *(t.cpu() for t in torch.autograd.grad(loss, (r, o)))])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_commands_run_on_the_device(tmp_path, capsys):
    """meta-train, train with the learned rule, and attack of a trained network, --device."""
    assert run(["meta-train", "--preset", "smoke", "--out", str(tmp_path / "mt"), "--no-progress",
                "--json", "--device", DEVICE]) == 0
    meta = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert meta["skipped_steps"] == 0
    assert run(["train", "--preset", "smoke", "--rule", meta["rule"], "--out",
                str(tmp_path / "tr"), "--no-progress", "--json", "--device", DEVICE]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.6 < res["test_accuracy_mean"] <= 1.0
    assert run(["attack", "--preset", "smoke", "--out", str(tmp_path / "at"), "--no-progress",
                "--json", "--device", DEVICE]) == 0
    att = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert att["command"] == "attack"
