"""Tests for plasticity.baselines: GD on the readout alone, and full GD through T rounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from plasticity import PlasticityError
from plasticity.baselines import init_weights, train_baseline, train_gd
from plasticity.config import BaselineConfig
from plasticity.data import load_dataset
from plasticity.learning import evaluate, example_orders
from plasticity.network import make_networks
from plasticity.seeding import torch_generator

TINY = {"neurons": 50, "k": 25, "n_test": 500, "eval_every": 500, "eval_examples": 500}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(dataset: str = "halfspace", **kw):
    cfg = BaselineConfig(dataset=dataset, **{**TINY, **kw})
    return train_baseline(cfg, load_dataset(dataset))


def _setup(dataset: str, n: int, n_train: int, T: int, seed: int = 0):
    data = load_dataset(dataset)
    nets = make_networks(n, data.dim, data.n_classes, neurons=50, k=25, p=0.5, T=T, seed=seed)
    order = example_orders(n, n_train, 1, torch_generator(seed, "test-order"))
    xy = (data.x_train[:n_train], data.y_train[:n_train], data.x_test[:300], data.y_test[:300])
    return nets, order, xy


def test_output_learns_halfspace():
    res = _run(T=1, n_train=2000, networks=2)
    assert res.curve.shape == (len(res.examples), 2)
    assert res.examples == res.updates_at == [0, 500, 1000, 1500, 2000]
    assert (res.test_accuracy > 0.8).all()
    assert np.isnan(res.train_loss[0]).all() and res.train_loss.shape == res.curve.shape
    assert (res.W == 0).all() and res.U.shape == (2, 2, 50) and not res.U.requires_grad


def test_output_learns_mnist_slice():
    try:
        data = load_dataset("mnist")
    except PlasticityError as exc:
        pytest.skip(f"MNIST data root not prepared: {exc}")
    cfg = BaselineConfig(dataset="mnist", neurons=200, k=100, n_train=3000, n_test=1000,
                         batch=20, passes=2, eval_every=3000, eval_examples=1000)
    res = train_baseline(cfg, data)
    assert res.curve[0, 0] < 0.2  # U = 0: every logit equal, argmax is class 0
    assert res.test_accuracy[0] > 0.75


def test_full_gd_learns_relu1_t3():
    res = _run("relu1", method="full", T=3, n_train=2000, batch=20, passes=3, networks=2)
    assert (res.train_loss[-1] < res.train_loss[1] - 0.1).all()
    assert (res.test_accuracy > 0.7).all()
    graph = make_networks(2, 10, 2, neurons=50, k=25, p=0.5, T=3, seed=0).graph
    assert (res.W[graph == 0] == 0).all()  # gradients (and weights) only on edges
    assert (res.W[graph == 1] != 0).float().mean() > 0.99


def test_init_is_scaled_and_keyed_per_network():
    nets = make_networks(3, 10, 2, neurons=200, k=100, p=0.5, T=3, seed=0)
    W, U = init_weights(nets, "full", seed=0)
    fan_in = nets.graph.sum(-1, keepdim=True)
    assert (W.abs() <= 1 / fan_in.sqrt() + 1e-7).all() and (W[nets.graph == 0] == 0).all()
    assert (U == 0).all() and W.abs().max() > 0.5 / fan_in.float().sqrt().max()
    W1, U1 = init_weights(nets.select(slice(0, 1)), "full", seed=0)
    assert torch.equal(W1, W[:1]) and torch.equal(U1, U[:1])
    W0, U0 = init_weights(nets, "output", seed=0)
    assert (W0 == 0).all() and (U0 == 0).all()


def test_same_seed_identical_other_seed_differs():
    kw = {"method": "full", "T": 3, "n_train": 600, "batch": 10, "eval_every": 300, "networks": 2}
    a, b, c = _run("relu1", **kw), _run("relu1", **kw), _run("relu1", seed=1, **kw)
    assert np.array_equal(a.curve, b.curve)
    assert np.array_equal(a.train_loss, b.train_loss, equal_nan=True)
    assert torch.equal(a.W, b.W) and torch.equal(a.U, b.U)
    assert not torch.equal(a.U, c.U)


@pytest.mark.parametrize("batch", [1, 200, 7])
def test_updates_at_follow_batch_size(batch):
    res = _run(T=1, n_train=1000, batch=batch, eval_every=300)
    L = 1000
    assert res.updates_at[0] == 0 and res.updates_at[-1] == math.ceil(L / batch)
    assert res.examples == [min(u * batch, L) for u in res.updates_at]
    assert res.updates_at == sorted(set(res.updates_at))
    # a point at each first step that reaches 0, 300, 600, 900 examples, and at the end
    assert res.updates_at == sorted({math.ceil(m / batch) for m in (0, 300, 600, 900)}
                                    | {math.ceil(L / batch)})
    if batch == 1:
        assert res.examples == [0, 300, 600, 900, 1000]


@pytest.mark.parametrize("method,T", [("output", 1), ("output", 3), ("full", 3)])
def test_batched_networks_equal_separate_runs(method, T):
    """Adam's state is per weight and the loss is a sum of per-network losses, so one batched run
    of 3 networks is exactly 3 separate runs (given the same networks, orders and inits)."""
    nets, order, xy = _setup("relu1", 3, 400, T)
    kw = {"order": order, "method": method, "batch": 10, "eval_every": 200}
    W, U = init_weights(nets, method, seed=0)
    whole = train_gd(nets, *xy, W=W, U=U, **kw)
    for i in range(3):
        s = slice(i, i + 1)
        one = train_gd(nets.select(s), *xy, W=W[s], U=U[s], **{**kw, "order": order[s]})
        np.testing.assert_allclose(one.curve[:, 0], whole.curve[:, i])
        np.testing.assert_allclose(one.train_loss[:, 0], whole.train_loss[:, i], rtol=1e-5)
        torch.testing.assert_close(one.U, whole.U[s])
        torch.testing.assert_close(one.W, whole.W[s])


def test_networks_1_is_network_0_of_3():
    kw = {"method": "full", "T": 3, "n_train": 400, "batch": 10, "eval_every": 200}
    one, three = _run("relu1", networks=1, **kw), _run("relu1", networks=3, **kw)
    torch.testing.assert_close(one.U[0], three.U[0])
    np.testing.assert_allclose(one.test_accuracy[0], three.test_accuracy[0])


@pytest.mark.parametrize("T", [1, 3])
def test_readout_on_cached_codes_matches_running_the_network(T):
    """Fast path (codes computed once) vs the obvious reference: Adam on U with the network run
    every step, and the returned weights evaluated by learning.evaluate."""
    nets, order, xy = _setup("halfspace", 2, 150, T)
    x_tr, y_tr, x_te, y_te = xy
    res = train_gd(nets, *xy, order=order, method="output", batch=5, eval_every=150,
                   eval_examples=300)
    W = torch.zeros_like(nets.graph)
    U = torch.zeros(2, 2, 50, requires_grad=True)
    opt = torch.optim.Adam([U], lr=1e-2)
    for s in range(0, 150, 5):
        idx = order[:, s:s + 5]
        logits = nets.forward(x_tr[idx], W, U)[0]
        loss = sum(F.cross_entropy(logits[n], y_tr[idx[n]]) for n in range(2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(res.U, U.detach(), rtol=1e-4, atol=1e-5)
    ref = evaluate(nets, W, res.U, x_te, y_te).numpy()
    np.testing.assert_allclose(res.test_accuracy, ref)
    np.testing.assert_allclose(res.curve[-1], ref)


def test_output_with_code_recurrence_and_t3_is_refused():
    with pytest.raises(PlasticityError, match="recurrence=code"):
        _run(T=3, recurrence="code", n_train=100)


def test_unknown_method_is_refused():
    nets, order, xy = _setup("halfspace", 1, 50, 1)
    with pytest.raises(PlasticityError, match="unknown baseline method"):
        train_gd(nets, *xy, order=order, method="hebb")
