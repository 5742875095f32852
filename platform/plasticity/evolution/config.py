"""Configs of ``plasticity evolve``, ``compare`` and ``evolve-theory`` (docs/paper.md 6.6).

Evolution searches the same rule space from the same start as meta-learning GD (``MetaConfig``):
the trainable rule tables, drawn by ``RuleParams`` from ``seed`` and ``output_init`` /
``rnn_init``. A member's loss is the meta-learning loss of its rule: E episodes of B examples,
the same networks and the same example batches GD sees at the same step (generation g uses GD's
batch g), plus ``weight_decay / 2 * ||rule||^2`` (Adam's L2 term, so both minimise one objective).
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import PlasticityError
from ..checks import check_choice, check_positive
from ..config import MetaConfig, RuleSpaceConfig
from .strategies import STRATEGIES, check_strategy_fields, for_strategy

SHARING = ("none", "random")
OBJECTIVES = ("episodes", "lifetime")
LIFETIME_FIELDS = ("lifetime_examples", "lifetime_networks", "validation", "lifetime_loss")
LIFETIME_LOSSES = ("error", "ce")


@dataclass(frozen=True)
class EvolutionConfig(RuleSpaceConfig):
    """Evolution of plasticity rules: the paper's allele model, a GA or an ES."""

    strategy: str = "genetic"  # genetic: allele model (6.6) | ga: truncation GA | es: antithetic ES
    population: int = 32  # N organisms / members per generation (genetic infinite: unused)
    generations: int = 40  # generations to run
    infinite: bool = False  # genetic: deterministic infinite-population allele dynamics
    genes: int = 20  # genetic: genes per rule coefficient (alleles +eps / -eps)
    eps: float = 0.25  # genetic: allele effect size
    theta: float = 0.05  # genetic: selection strength, fitness = 1 - theta * loss (weak: theta * loss << 1)
    sharing: str = "none"  # genetic: none | random (each coefficient a random +-1 sum of `genes`
    #                        genes drawn from a pool shared by all coefficients)
    sigma: float = 0.1  # ga: mutation std | es: perturbation std
    truncation: float = 0.25  # ga: fraction of the population kept as parents
    elites: int = 1  # ga: best members copied unchanged into the next generation
    output_init: float = 1.0  # std of the initial output rule table, the common start of
    #                           evolution and GD (a zero table gives every member the same loss)
    episodes: int = 4  # E: episodes (networks) per member, the same for every member
    workers: int = 0  # Ray actors evaluating chunks of the population (0 = in-process, no Ray)
    cpus_per_worker: float = 1.0  # CPUs per actor (also its torch threads, at least 1)
    gpus_per_worker: float = 0.0  # GPUs per actor (> 0: the actor evaluates on CUDA)
    objective: str = "episodes"  # episodes: the meta-learning loss of E x B-example episodes |
    #                              lifetime: validation CE after fresh networks learn L examples
    lifetime_examples: int = 10000  # objective=lifetime: L, examples each network learns
    lifetime_networks: int = 2  # objective=lifetime: M networks (and orders) per member
    validation: int = 1000  # objective=lifetime: held-out training examples the score is on
    lifetime_loss: str = "error"  # objective=lifetime: the loss minimised, error (1 - validation
    #                               accuracy) | ce (validation cross-entropy)

    def __post_init__(self):
        super().__post_init__()
        check_choice("strategy", self.strategy, STRATEGIES)
        check_strategy_fields(self)
        check_choice("sharing", self.sharing, SHARING)
        check_choice("objective", self.objective, OBJECTIVES)
        check_choice("lifetime_loss", self.lifetime_loss, LIFETIME_LOSSES)
        check_positive(self, "lifetime_examples", "lifetime_networks", "validation")
        if self.objective != "lifetime":
            for f in LIFETIME_FIELDS:
                if getattr(self, f) != type(self).__dataclass_fields__[f].default:
                    raise PlasticityError(f"{f} applies to objective=lifetime: set "
                                          "objective=lifetime or drop it")
        if self.population < 2:
            raise PlasticityError(f"population={self.population} must be >= 2")
        check_positive(self, "generations", "genes", "eps", "theta", "sigma")
        check_positive(self, "workers", "cpus_per_worker", "gpus_per_worker", "elites",
                       allow_zero=True)
        if not 0.0 < self.truncation <= 1.0:
            raise PlasticityError(f"truncation={self.truncation} must lie in (0, 1]")
        if self.strategy == "ga" and self.elites >= self.population:
            raise PlasticityError(f"elites={self.elites} must be < population={self.population}")
        if self.strategy == "es" and self.population % 2:
            raise PlasticityError(f"population={self.population}: es samples antithetic pairs, "
                                  "use an even population")
        if self.workers > 0 and self.cpus_per_worker <= 0 and self.gpus_per_worker <= 0:
            raise PlasticityError("cpus_per_worker=0 and gpus_per_worker=0: give each actor a "
                                  "resource")
        self.meta_config()  # the rule space must be one GD can learn (e.g. learn=both needs T>=2)

    def meta_config(self, **over) -> MetaConfig:
        """The meta-learning GD config of the same task, rule space, start and episodes."""
        return MetaConfig(**{**self.rule_space(), "rule_param": "table", **over})


@dataclass(frozen=True)
class CompareConfig(EvolutionConfig):
    """Evolution against meta-learning GD on the same task, rule space, start and data."""

    gd_steps: int = 0  # GD steps (0 = as many inner-loop examples as the evolution run used)
    meta_loss: str = "logits"  # GD's loss: logits (CE on logits) | softmax (CE on the softmax
    #                            outputs, the authors' code; --dynamics reference sets it)
    seeds: int = 1  # runs with seeds seed .. seed + seeds - 1
    eval_train: int = 2000  # training examples of the final-rule evaluation (fresh networks)
    eval_examples: int = 2000  # test examples of that evaluation
    eval_networks: int = 3  # fresh networks in that evaluation
    eval_neurons: int = 0  # |V| of those networks (k = |V| / 2; 0 = the run's neurons and k)
    strategies: str = ""  # objective=lifetime: the outer loops run beside GD, comma-separated
    #                       (STRATEGIES names; '' = strategy alone)
    curve_points: int = 8  # objective=lifetime: validation-accuracy points per method's curve

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "seeds", "eval_train", "eval_examples", "eval_networks", "curve_points")
        check_positive(self, "gd_steps", "eval_neurons", allow_zero=True)
        check_choice("meta_loss", self.meta_loss, ("logits", "softmax"))
        for name in self.strategy_list if self.strategies else ():
            check_choice("strategies", name, STRATEGIES)
            for_strategy(self, name)  # each member's own config must build
        if self.strategies and self.objective != "lifetime":
            raise PlasticityError("strategies applies to objective=lifetime: set "
                                  "objective=lifetime, or one strategy= per compare run")

    @property
    def strategy_list(self) -> list[str]:
        return [s.strip() for s in self.strategies.split(",") if s.strip()] or [self.strategy]


@dataclass(frozen=True)
class TheoryConfig(EvolutionConfig):
    """The 6.6 check: infinite-population allele dynamics against the two predicted GD forms."""

    thetas: str = "0.03,0.1,0.2"  # selection strengths to run (comma-separated; theta * loss < 1)
    epss: str = "0.25"  # allele effect sizes to run (comma-separated; genes grow so that
    #                     genes * eps stays >= the configured genes * eps)

    def __post_init__(self):
        super().__post_init__()
        for name in ("thetas", "epss"):
            values = parse_floats(name, getattr(self, name))
            if any(v <= 0 for v in values):
                raise PlasticityError(f"{name}={getattr(self, name)}: every value must be > 0")


def parse_floats(name: str, text: str) -> list[float]:
    """'0.1,0.3' -> [0.1, 0.3]; anything else is a one-line error naming ``name``."""
    try:
        out = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise PlasticityError(f"{name}='{text}' must be comma-separated numbers") from None
    if not out:
        raise PlasticityError(f"{name}='{text}' must list at least one number")
    return out
