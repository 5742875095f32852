"""Evolutionary searches over the rule space on one ask / evaluate / tell interface.

A strategy holds its state as plain numpy arrays (JSON-able, see ``state_dict``):

- ``ask(g) -> members [n, P]``: the rules to evaluate in generation g;
- (the driver evaluates their losses, anywhere: in process or on Ray actors);
- ``tell(g, members, losses [n])``: update the state from the losses (lower is better);
- ``center() -> [P]``: the strategy's current rule (genetic: the mean phenotype; GA: the best
  member so far kept as elite; ES: the search mean).

All randomness is drawn on the driver from ``numpy_rng(seed, "evolution", g, ...)``: keyed by the
generation, never by an actor, so scheduling cannot change a result. Strategies minimise losses;
only the genetic model turns them into a fitness (genetics.py).

``STRATEGIES`` (the registry, at the end) maps each ``strategy=`` name to a :class:`StrategySpec`:
the factory, the config fields it owns, the provenance method, a one-line doc
(docs/extending.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import PlasticityError
from ..seeding import numpy_rng
from .genetics import GeneticFinite, GeneticInfinite


class GA:
    """Simple GA: truncation selection, Gaussian mutation, elitism.

    Generation 0 is the start rule plus N - 1 mutants of it. Each next generation keeps the
    ``elites`` best members unchanged and fills the rest with mutants (std ``sigma``) of parents
    drawn uniformly from the best ``truncation`` fraction."""

    name = "ga"

    def __init__(self, cfg, start: np.ndarray):
        self.cfg = cfg
        rng = numpy_rng(cfg.seed, "evolution", "ga-init")
        noise = cfg.sigma * rng.standard_normal((cfg.population - 1, start.shape[0]))
        self.population = np.concatenate([start[None], start[None] + noise])
        self.best = start.copy()

    def ask(self, generation: int) -> np.ndarray:
        return self.population.copy()

    def tell(self, generation: int, members: np.ndarray, losses: np.ndarray) -> None:
        cfg = self.cfg
        order = np.argsort(losses, kind="stable")
        n_parents = max(1, int(round(cfg.truncation * cfg.population)))
        parents = members[order[:n_parents]]
        rng = numpy_rng(cfg.seed, "evolution", generation, "ga")
        pick = rng.integers(0, n_parents, size=cfg.population - cfg.elites)
        children = parents[pick] + cfg.sigma * rng.standard_normal((pick.shape[0], members.shape[1]))
        self.population = np.concatenate([members[order[:cfg.elites]], children])
        self.best = members[order[0]].copy()

    def center(self) -> np.ndarray:
        return self.best.copy()

    def stats(self) -> dict[str, float]:
        return {"rule_spread": float(self.population.std(0).mean())}

    def state_dict(self) -> dict:
        return {"population": self.population.tolist(), "best": self.best.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.population = np.asarray(state["population"], dtype=np.float64)
        self.best = np.asarray(state["best"], dtype=np.float64)


def centred_ranks(losses: np.ndarray) -> np.ndarray:
    """Ranks scaled to [-0.5, 0.5] (lowest loss -> -0.5); ties broken by position."""
    ranks = np.empty(losses.shape[0])
    ranks[np.argsort(losses, kind="stable")] = np.arange(losses.shape[0])
    return ranks / max(losses.shape[0] - 1, 1) - 0.5


class ES:
    """Evolution strategy (Salimans et al. 2017 style): antithetic pairs mean +- sigma z,
    centred ranks of the losses, gradient estimate sum_k (u_k+ - u_k-) z_k / (N sigma), and an
    Adam step of the mean with ``lr`` (the L2 term is inside the losses)."""

    name = "es"
    BETAS = (0.9, 0.999)

    def __init__(self, cfg, start: np.ndarray):
        self.cfg = cfg
        self.mean = start.copy()
        self.m1 = np.zeros_like(start)
        self.m2 = np.zeros_like(start)
        self.t = 0

    def _noise(self, generation: int) -> np.ndarray:
        rng = numpy_rng(self.cfg.seed, "evolution", generation, "es")
        return rng.standard_normal((self.cfg.population // 2, self.mean.shape[0]))

    def ask(self, generation: int) -> np.ndarray:
        z = self._noise(generation)
        s = self.cfg.sigma
        return np.concatenate([self.mean + s * z, self.mean - s * z])

    def tell(self, generation: int, members: np.ndarray, losses: np.ndarray) -> None:
        z = self._noise(generation)
        u = centred_ranks(np.asarray(losses))
        half = z.shape[0]
        grad = (u[:half] - u[half:]) @ z / (self.cfg.population * self.cfg.sigma)
        b1, b2 = self.BETAS
        self.t += 1
        self.m1 = b1 * self.m1 + (1 - b1) * grad
        self.m2 = b2 * self.m2 + (1 - b2) * grad**2
        step = (self.m1 / (1 - b1**self.t)) / (np.sqrt(self.m2 / (1 - b2**self.t)) + 1e-8)
        self.mean = self.mean - self.cfg.lr * step

    def center(self) -> np.ndarray:
        return self.mean.copy()

    def stats(self) -> dict[str, float]:
        return {"rule_norm": float(np.linalg.norm(self.mean))}

    def state_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "m1": self.m1.tolist(), "m2": self.m2.tolist(),
                "t": self.t}

    def load_state_dict(self, state: dict) -> None:
        self.mean = np.asarray(state["mean"], dtype=np.float64)
        self.m1 = np.asarray(state["m1"], dtype=np.float64)
        self.m2 = np.asarray(state["m2"], dtype=np.float64)
        self.t = int(state["t"])


class CMA:
    """CMA-ES through pycma (``cma.CMAEvolutionStrategy``, the reference implementation): a
    population of ``population`` members from N(mean, sigma^2 C), the mean, step size and
    covariance adapted by pycma from the ranked losses (``sigma``: the initial step size).

    Its normal draws come from ``numpy_rng(seed, "evolution", "cma")`` (pycma's ``randn``
    option), so a run is a pure function of the seed and the losses. The state is JSON without
    pickle: the start and the losses told so far; ``load_state_dict`` replays them (ask, tell) from the start,
    which rebuilds pycma's state exactly."""

    name = "cma"

    def __init__(self, cfg, start: np.ndarray):
        self.cfg, self.start = cfg, np.asarray(start, dtype=np.float64)
        self._reset()

    def _reset(self) -> None:
        import cma

        rng = numpy_rng(self.cfg.seed, "evolution", "cma")
        opts = {"popsize": self.cfg.population, "seed": 1, "verbose": -9, "CMA_diagonal": False,
                "randn": lambda *shape: rng.standard_normal(shape)}
        self.es = cma.CMAEvolutionStrategy(self.start.copy(), self.cfg.sigma, opts)
        self.told: list[list[float]] = []
        self._pending = None

    def ask(self, generation: int) -> np.ndarray:
        if self._pending is None:
            self._pending = np.asarray(self.es.ask(), dtype=np.float64)
        return self._pending.copy()

    def tell(self, generation: int, members: np.ndarray, losses: np.ndarray) -> None:
        losses = np.asarray(losses, dtype=np.float64)
        ok = np.isfinite(losses)  # an exploded member ranks last (CMA uses only the ranks)
        worst = losses[ok].max() + 1.0 if ok.any() else 1.0
        values = np.where(ok, losses, worst)
        self.es.tell(list(self.ask(generation)), values.tolist())
        self.told.append(values.tolist())
        self._pending = None

    def center(self) -> np.ndarray:
        return np.asarray(self.es.mean, dtype=np.float64).copy()

    def stats(self) -> dict[str, float]:
        return {"rule_norm": float(np.linalg.norm(self.es.mean)), "cma_sigma": float(self.es.sigma)}

    def state_dict(self) -> dict:
        return {"start": self.start.tolist(), "told": self.told}

    def load_state_dict(self, state: dict) -> None:
        self.start = np.asarray(state["start"], dtype=np.float64)
        self._reset()
        for values in state["told"]:
            self.tell(0, self.ask(0), np.asarray(values, dtype=np.float64))


@dataclass(frozen=True)
class StrategySpec:
    """One evolution strategy of ``EvolutionConfig.strategy``.

    ``factory(cfg, start [P]) -> strategy`` with the interface of the module doc (``ask``,
    ``tell``, ``center``, ``stats``, ``state_dict``, ``load_state_dict``); ``method(cfg)``: the
    provenance method of a run (None: the registry key); ``fields``: the ``EvolutionConfig``
    fields the strategy reads that other strategies ignore (``check_strategy_fields`` refuses
    them set away from their defaults under another strategy); ``doc``: one line."""

    factory: Callable[..., Any]
    fields: tuple[str, ...]
    doc: str
    method: Callable[..., str] | None = None


def _genetic(cfg, start: np.ndarray):
    return (GeneticInfinite if cfg.infinite else GeneticFinite)(cfg, start)


def _genetic_method(cfg) -> str:
    return "genetic-infinite" if cfg.infinite else "genetic"


# The registry: name -> StrategySpec. A new strategy is one entry here plus its class (and its
# knobs as EvolutionConfig fields); `strategy=` and tests/test_evolution.py's parametrised tests
# pick it up.
STRATEGIES: dict[str, StrategySpec] = {
    "genetic": StrategySpec(_genetic, ("infinite", "genes", "eps", "theta", "sharing"),
                            "the paper's allele model (docs/paper.md 6.6), finite or infinite "
                            "population", method=_genetic_method),
    "ga": StrategySpec(GA, ("sigma", "truncation", "elites"),
                       "truncation GA with Gaussian mutation and elitism"),
    "es": StrategySpec(ES, ("sigma",), "antithetic evolution strategy with centred ranks and Adam"),
    "cma": StrategySpec(CMA, ("sigma",), "CMA-ES by pycma (the reference implementation)"),
}


def make_strategy(cfg, start: np.ndarray):
    """The strategy of ``cfg.strategy`` started from rule c [P]."""
    return STRATEGIES[cfg.strategy].factory(cfg, start)


def method_name(cfg) -> str:
    """Provenance method: genetic | genetic-infinite | ga | es (the registry's ``method``)."""
    spec = STRATEGIES[cfg.strategy]
    return cfg.strategy if spec.method is None else spec.method(cfg)


def check_strategy_fields(cfg) -> None:
    """Refuse, in one line, a field that only other strategies read set away from its default
    (the active strategies: ``cfg.strategy``, or a comparison's ``strategy_list``)."""
    active = cfg.strategy_list if getattr(cfg, "strategies", "") else [cfg.strategy]
    for f in dataclasses.fields(cfg):
        users = [name for name, s in STRATEGIES.items() if f.name in s.fields]
        if not users or set(users) & set(active) or getattr(cfg, f.name) == f.default:
            continue
        raise PlasticityError(
            f"{f.name} applies to {', '.join(users)}; strategy={'|'.join(active)} does not use it: "
            f"drop it (default {_text(f.default)}) or choose strategy={'|'.join(users)}")


def _text(value) -> str:
    """A default as ``--set`` spells it (booleans lower-case)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def for_strategy(cfg, name: str):
    """``cfg`` for strategy ``name`` alone (a comparison's member): the fields only other
    strategies read go back to their defaults."""
    own = set(STRATEGIES[name].fields)
    reset = {f.name: f.default for f in dataclasses.fields(cfg)
             if f.name not in own and any(f.name in s.fields for s in STRATEGIES.values())}
    extra = {"strategies": ""} if hasattr(cfg, "strategies") else {}
    return dataclasses.replace(cfg, strategy=name, **reset, **extra)
