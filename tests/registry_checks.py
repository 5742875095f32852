"""The checks every registry entry must pass (docs/extending.md): one function per registry.

``tests/test_robustness.py``, ``test_evolution.py`` and ``test_rules.py`` run them over every
entry of ``ATTACKS``, ``STRATEGIES`` and ``PARAMETRIZATIONS`` (parametrised by the registry's
keys, so a new entry is checked without a new test); ``tests/test_extending.py`` runs them on the
worked examples of docs/extending.md, registered for the test only."""

from __future__ import annotations

import pytest
import torch
from plasticity import PlasticityError
from plasticity.config import TrainConfig
from plasticity.experiment import run_networks
from plasticity.robustness.attacks import ATTACKS, NORMS, FrozenNet
from plasticity.robustness.evaluate import Budget, attack_radius, inside, robustness_curves
from plasticity.rules.classic import classic_rule
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
        assert int((broken & ~clean_wrong).sum()) > 0, (name, threat)
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
