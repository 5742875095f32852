"""The worked examples of docs/extending.md: each registered for one test only (monkeypatch), then
put through the same check the parametrised tests run on every registry entry. The examples'
code is the docs' code: a test fails when the two differ. And the checks catch broken entries."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from plasticity import PlasticityError
from plasticity.config import MetaConfig
from plasticity.data import load_dataset
from plasticity.evolution.config import EvolutionConfig
from plasticity.evolution.strategies import STRATEGIES, StrategySpec
from plasticity.robustness.attacks import ATTACKS, Attack, FrozenNet, fgsm, project, random_in_ball
from plasticity.rules.tables import PARAMETRIZATIONS, Parametrization, table_shape
from plasticity.seeding import numpy_rng
from registry_checks import (
    TINY_EVOLUTION,
    check_attack,
    check_parametrization,
    check_strategy,
    frozen_net,
)

DOCS = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text()

# ------------------------------------------------------------------ a new attack


def noise(model: FrozenNet, x, y, eps: float, *, norm: str = "linf", queries: int = 1000,
          gen: torch.Generator | None = None, lo=0.0, hi=1.0, **_):
    """Random search with no model of the loss: up to ``queries`` uniform points of the ball per
    example; an example is broken by the first one that is misclassified (a floor for the
    other attacks: one that breaks less than this is not searching)."""
    broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    best = x.clone()
    for _ in range(queries):
        act = (~broken).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        step = random_in_ball((act.numel(), x.shape[1]), eps, norm, gen).to(x)
        cand = project(x[act] + step, x[act], eps, norm, lo, hi)
        hit = model.predict(cand) != y[act]
        best[act[hit]] = cand[hit]
        broken[act[hit]] = True
    return best, broken


NOISE = Attack(noise, "threat", "queries", "uniform random points of the ball (a baseline)")

# ------------------------------------------------------------------ a new evolution strategy


class OnePlusLambda:
    """(1+lambda)-ES: ``population`` Gaussian mutants (std ``sigma``) of the parent; the best
    one replaces the parent when its loss is lower than the parent's."""

    name = "one_plus_lambda"

    def __init__(self, cfg, start: np.ndarray):
        self.cfg = cfg
        self.parent = start.copy()
        self.parent_loss = None  # not evaluated yet

    def ask(self, generation: int) -> np.ndarray:
        rng = numpy_rng(self.cfg.seed, "evolution", generation, "one_plus_lambda")
        noise = rng.standard_normal((self.cfg.population, self.parent.shape[0]))
        return self.parent + self.cfg.sigma * noise

    def tell(self, generation: int, members: np.ndarray, losses: np.ndarray) -> None:
        best = int(np.argmin(losses))
        if self.parent_loss is None or losses[best] < self.parent_loss:
            self.parent, self.parent_loss = members[best].copy(), float(losses[best])

    def center(self) -> np.ndarray:
        return self.parent.copy()

    def stats(self) -> dict[str, float]:
        return {"rule_norm": float(np.linalg.norm(self.parent))}

    def state_dict(self) -> dict:
        return {"parent": self.parent.tolist(), "parent_loss": self.parent_loss}

    def load_state_dict(self, state: dict) -> None:
        self.parent = np.asarray(state["parent"], dtype=np.float64)
        self.parent_loss = state["parent_loss"]


ONE_PLUS_LAMBDA = StrategySpec(OnePlusLambda, ("sigma",),
                               "(1+lambda)-ES: the best mutant replaces the parent if better")

# ------------------------------------------------------------------ a new rule parametrization


def _outer_init(layer: str, T: int, *, hidden: int, gen: torch.Generator, scale: float,
                dtype=torch.float64) -> dict[str, torch.Tensor]:
    """A rank-1 table u v^T: u ~ N(0, scale^2) over the rows, v ~ N(0, 1) over the columns."""
    rows, cols = table_shape(layer, T)
    return {"u": torch.randn(rows, generator=gen, dtype=dtype) * scale,
            "v": torch.randn(cols, generator=gen, dtype=dtype)}


def _outer_table(layer: str, T: int, params: dict[str, torch.Tensor]) -> torch.Tensor:
    return params["u"].unsqueeze(-1) * params["v"].unsqueeze(-2)  # [..., R] x [..., C]


OUTER = Parametrization(_outer_init, _outer_table, ("u", "v"),
                        "a rank-1 table u v^T: one number per row and one per column")


# ------------------------------------------------------------------ the docs show this code


def _entry(name: str, record, *fields) -> str:
    """The registry entry as docs/extending.md writes it (one line)."""
    def show(v):
        return v.__name__ if callable(v) else repr(v).replace("'", '"')
    return f'"{name}": {type(record).__name__}({", ".join(show(getattr(record, f)) for f in fields)}),'


@pytest.mark.parametrize("code", [
    inspect.getsource(noise), inspect.getsource(OnePlusLambda), inspect.getsource(_outer_init),
    inspect.getsource(_outer_table),
    _entry("noise", NOISE, "fn", "norm", "needs", "doc"),
    _entry("one_plus_lambda", ONE_PLUS_LAMBDA, "factory", "fields", "doc"),
    _entry("outer", OUTER, "init", "table", "keys", "doc"),
], ids=["attack", "strategy", "init", "table", "attack-entry", "strategy-entry", "param-entry"])
def test_the_docs_show_the_tested_code(code):
    assert code in DOCS, code


# ------------------------------------------------------------------ registered, then checked


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


def test_worked_example_attack(monkeypatch, mnist):
    monkeypatch.setitem(ATTACKS, "noise", NOISE)
    net = frozen_net(mnist, 1)
    check_attack("noise", net, mnist.x_test[:40], mnist.y_test[:40], frozen_net(mnist, 1, seed=1))


def test_worked_example_strategy(monkeypatch, tmp_path):
    monkeypatch.setitem(STRATEGIES, "one_plus_lambda", ONE_PLUS_LAMBDA)
    check_strategy("one_plus_lambda", load_dataset("halfspace"), tmp_path)
    # its own knob is taken; the knob it shares now names it among its users
    assert EvolutionConfig(**TINY_EVOLUTION, strategy="one_plus_lambda", sigma=0.3).sigma == 0.3
    users = [n for n, spec in STRATEGIES.items() if "sigma" in spec.fields]
    assert users[-1] == "one_plus_lambda"
    with pytest.raises(PlasticityError, match=rf"sigma applies to {', '.join(users)}; "
                                              rf"strategy=genetic .* strategy={re.escape('|'.join(users))}"):
        EvolutionConfig(**TINY_EVOLUTION, sigma=0.3)


def test_worked_example_parametrization(monkeypatch, tmp_path):
    monkeypatch.setitem(PARAMETRIZATIONS, "outer", OUTER)
    check_parametrization("outer", load_dataset("halfspace"), tmp_path)
    assert MetaConfig(rule_param="outer").rule_param == "outer"


# ------------------------------------------------------------------ the checks catch bad entries


def _identity(model, x, y, eps, **_):
    return x.clone(), model.predict(x) != y


class _DeafGA(OnePlusLambda):
    """Ignores the losses: keeps the first member."""

    def tell(self, generation, members, losses):
        self.parent = members[0].copy()


def _unscaled_init(layer, T, *, hidden, gen, scale, dtype=torch.float64):
    return _outer_init(layer, T, hidden=hidden, gen=gen, scale=1.0, dtype=dtype)


@pytest.mark.parametrize("registry, name, record, reason", [
    ("attack", "identity", Attack(_identity, "threat", "queries", "returns x"),
     "breaks nothing in a large ball"),
    ("attack", "fgsm_q", Attack(fgsm, "linf", "queries", "FGSM said to need no gradient"),
     "asked for a gradient"),
    ("strategy", "deaf", StrategySpec(_DeafGA, ("sigma",), "ignores the losses"),
     "tell must use the losses"),
    ("param", "unscaled", Parametrization(_unscaled_init, _outer_table, ("u", "v"),
                                          "ignores the init scale"), "scale 0: the zero table"),
], ids=["attack-that-never-moves", "attack-needs-mislabelled", "strategy-deaf-to-losses",
        "param-ignores-scale"])
def test_the_checks_refuse_a_broken_entry(monkeypatch, tmp_path, mnist, registry, name, record,
                                          reason):
    table = {"attack": ATTACKS, "strategy": STRATEGIES, "param": PARAMETRIZATIONS}[registry]
    monkeypatch.setitem(table, name, record)
    with pytest.raises(AssertionError, match=reason):
        if registry == "attack":
            check_attack(name, frozen_net(mnist, 1), mnist.x_test[:40], mnist.y_test[:40],
                         frozen_net(mnist, 1, seed=1))
        elif registry == "strategy":
            check_strategy(name, load_dataset("halfspace"), tmp_path)
        else:
            check_parametrization(name, load_dataset("halfspace"), tmp_path)
