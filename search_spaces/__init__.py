"""Named Ray Tune search spaces: dicts of tune domains keyed by the real config fields.

Each :class:`Space` names the ``plasticity`` command its trials run (``meta-train``, ``train``,
``attack``, ``compare``, ...), the command preset the sampled fields override, the metric Tune
optimises, and the PBT mutations. ``plasticity sweep SPACE`` runs one; ``tests/test_sweep.py``
samples every space and builds the command's config from each sample, so a typo in a field name
fails in CI, not on a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from plasticity import PlasticityError
from plasticity.evolution.strategies import STRATEGIES
from ray import tune

IMAGES = ("mnist", "fashion_mnist")
SIX = ("halfspace", "relu1", "relu2", "rnn", *IMAGES)
# The Fig. 3 rules are shipped with the package (rules/data, meta-learned by GD, results/README.md
# "Fig. 3") and named fig3_T1 / fig3_T3: no path, so Tune trials find them from any directory.


@dataclass(frozen=True)
class Space:
    """A search space over one command's config."""

    command: str  # the plasticity command a trial runs (its Command.handler)
    preset: str  # the command preset the sampled fields override
    params: dict  # config field -> tune domain (or a constant)
    metric: str  # the metric Tune optimises (a name the command reports)
    mode: str  # "min" or "max"
    help: str
    pbt: dict = field(default_factory=dict)  # field -> tune domain, for --scheduler pbt
    gpus: float = 0.0  # GPUs per trial when the cluster has them (0: CPU trials)


def _half(config: dict) -> int:
    return max(1, int(config["neurons"]) // 2)


def _fig3_rule(config: dict) -> str:
    return f"fig3_T{int(config['T'])}"  # a rule shipped with the package (rules/data)


def _infinite(config: dict) -> bool:
    """The compare preset's infinite-population model for genetic trials; the other strategies
    do not read ``infinite`` (and refuse it set)."""
    return config["strategy"] == "genetic"


SPACES: dict[str, Space] = {
    "smoke": Space(
        "meta-train", "smoke",
        {"lr": tune.loguniform(1e-3, 3e-1), "output_init": tune.uniform(0.0, 0.5),
         "seed": tune.randint(0, 10_000)},
        metric="meta/loss", mode="min",
        help="seconds per trial: the T=1 output rule meta-learned on Halfspace, lr and init varied",
        pbt={"lr": tune.loguniform(1e-3, 3e-1)}),
    "meta_gd": Space(
        "meta-train", "quick",
        {"lr": tune.loguniform(1e-3, 1e-1), "weight_decay": tune.loguniform(1e-4, 1e-1),
         "batch": tune.choice([25, 50, 100]), "episodes": tune.choice([4, 8, 16]),
         "seed": tune.randint(0, 10_000)},
        metric="meta/loss", mode="min",
        help="meta-learning hyperparameters of the T=1 output rule (Halfspace, |V|=100)",
        pbt={"lr": tune.loguniform(1e-3, 1e-1), "weight_decay": tune.loguniform(1e-4, 1e-1)},
        gpus=1.0),
    "fig3_transfer": Space(
        "train", "quick",
        {"dataset": tune.grid_search(list(SIX)), "neurons": tune.grid_search([100, 1000]),
         "k": tune.sample_from(_half), "T": tune.grid_search([1, 3]),
         "rule": tune.sample_from(_fig3_rule)},
        metric="train/test_accuracy_mean", mode="max",
        help="Fig. 3: the shipped Fig. 3 rules (GD on Halfspace / ReLU1) trained on six data sets, "
             "small and large networks, T=1 and T=3 (24 trials per sample)", gpus=1.0),
    "robustness": Space(
        "attack", "quick",
        {"dataset": tune.grid_search(list(IMAGES)), "train": tune.grid_search(["rule", "gd"]),
         "T": 3, "rule": "fig3_T3", "seed": tune.randint(0, 10_000)},
        metric="attack/clean_test_accuracy", mode="max",
        help="Table 2 / Fig. 5: networks trained by a plasticity rule vs by GD, attacked at every "
             "eps (worst case over attacks logged per eps)", gpus=1.0),
    "evolution_vs_gd": Space(
        "compare", "quick",
        {"strategy": tune.grid_search(list(STRATEGIES)), "infinite": tune.sample_from(_infinite),
         "seed": tune.randint(0, 10_000)},
        metric="compare/evolution_test_accuracy_mean", mode="max",
        help="evolution (allele model, GA, ES) vs GD on the same rules, same inner loop", gpus=1.0),
    "lifetime_rules": Space(
        "evolve", "lifetime",
        {"strategy": tune.grid_search(list(STRATEGIES)), "seed": tune.randint(0, 10_000)},
        metric="evolution/accuracy_center", mode="max",
        help="T=3 rules evolved on the lifetime objective (ReLU1, |V|=400, L=10,000) by every "
             "strategy; --preset lifetime-smoke for seconds", gpus=1.0),
}


def get_space(name: str) -> Space:
    """The named space; an unknown name is a one-line error listing the known ones."""
    if name not in SPACES:
        raise PlasticityError(f"unknown search space '{name}': use one of {', '.join(SPACES)}")
    return SPACES[name]


def sample(space: Space, n: int = 1, seed: int | None = None) -> list[dict]:
    """``n`` resolved configs of ``space`` (grids expanded, ``sample_from`` evaluated): with a
    seed, exactly the configs ``plasticity sweep --samples n --seed seed`` runs, in order."""
    import numpy as np
    from ray.tune.search.variant_generator import generate_variants

    # what BasicVariantGenerator(random_state=seed), the sweep's search algorithm, draws from:
    # numpy's Generator for an integer seed, numpy's global state for None
    rng = None if seed is None else np.random.default_rng(seed)
    out = []
    for _ in range(n):
        out += [cfg for _, cfg in generate_variants(dict(space.params), random_state=rng)]
    return out
