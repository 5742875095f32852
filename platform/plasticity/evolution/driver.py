"""The evolution loop: ask, evaluate (in process or on Ray actors), tell, checkpoint.

Generation g (1-based) evaluates the strategy's members and its current rule (``center``, the
rule comparable to GD's rule at step g) on GD's example batch g. After every generation the run
state is written atomically to ``<out>/checkpoint.json`` (JSON only: the strategy's arrays as
lists, the history); ``resume=True`` reloads it, checks the config, and continues with the next
generation, ending in exactly the state of an uninterrupted run (all randomness is keyed by
(seed, generation), and the batch stream is replayed to generation g).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import PlasticityError
from ..config import to_dict
from ..events import Sink
from ..files import write_json
from .evaluate import PopulationEvaluator, RuleSpace, generation_batches
from .lifetime import evaluator_for, lifetime_split
from .strategies import make_strategy, method_name

CHECKPOINT = "checkpoint.json"
FORMAT = "plasticity-evolution-checkpoint"
# Fields that may differ on --resume: they change where the work runs, never its result.
RESUMABLE = ("generations", "workers", "cpus_per_worker", "gpus_per_worker")
MAX_RULE_METRICS = 8  # rules with at most this many coefficients log each as a metric


class LocalPool:
    """In-process evaluation (``workers = 0``): the whole population as one batched computation."""

    def __init__(self, evaluator: PopulationEvaluator):
        self.evaluator = evaluator
        self.replaced = 0

    def losses(self, coeffs: np.ndarray, idx: np.ndarray, generation: int = 0) -> np.ndarray:
        return self.evaluator.losses(coeffs, idx)

    def cpu_seconds(self) -> float:
        """CPU time used so far by this process (for benchmarks)."""
        return time.process_time()

    def close(self) -> None:
        pass


def make_pool(cfg, data, device, address: str | None = None):
    """LocalPool for ``workers = 0``, else a RayPool (Ray is imported only then); the evaluator
    of ``cfg.objective`` (episodes: the meta-learning loss; lifetime: evolution/lifetime.py)."""
    if cfg.workers == 0:
        return LocalPool(evaluator_for(cfg, data, device))
    from ..data import default_data_root
    from .ray_pool import RayPool

    return RayPool(cfg, cfg.workers, cfg.cpus_per_worker, cfg.gpus_per_worker, address=address,
                   data_root=str(default_data_root()))


@dataclass
class EvolutionRun:
    """What a run produced: the strategy (final state), per-generation history, the rules."""

    strategy: object
    history: list[dict]
    start: np.ndarray  # the start rule c [P] (GD's start for the same seed)
    final: np.ndarray  # the strategy's rule c [P] after the last generation
    rule: object  # final rule as a plasticity.rules.Rule
    replaced_actors: int = 0
    extra: dict = field(default_factory=dict)
    resumed_from: int = 0  # the checkpointed generation a --resume continued after (0: fresh)


def _check_resume(cfg, saved: dict, path: Path) -> None:
    now = to_dict(cfg)
    for key in sorted(set(now) | set(saved)):
        if key not in RESUMABLE and now.get(key) != saved.get(key):
            raise PlasticityError(
                f"--resume: {path} was run with {key}={saved.get(key)!r}, not {now.get(key)!r}: "
                "use the same settings or a new --out")


def load_checkpoint(out: Path, cfg) -> dict:
    """The checkpoint in ``out`` after checking it belongs to ``cfg`` (one-line errors)."""
    path = Path(out) / CHECKPOINT
    if not path.is_file():
        raise PlasticityError(f"--resume: no {CHECKPOINT} in {out}: start without --resume")
    try:
        ck = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PlasticityError(f"--resume: {path} is not readable JSON ({exc})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise PlasticityError(f"--resume: {path} is not an evolution checkpoint")
    _check_resume(cfg, ck["config"], path)
    return ck


def contain(losses: np.ndarray, generation: int) -> np.ndarray:
    """Non-finite losses (a member whose rule exploded) become +inf: the worst loss for every
    strategy (fitness 0 in the genetic model, last in every ranking). If the current rule or
    every member is non-finite the run stops with a one-line error instead of saving it."""
    losses = np.asarray(losses, dtype=np.float64)
    bad = ~np.isfinite(losses)
    if bad[-1] or bad[:-1].all():
        raise PlasticityError(f"evolution: non-finite losses at generation {generation} "
                              f"({int(bad.sum())} of {bad.shape[0]}, the current rule included: "
                              f"{bool(bad[-1])}): lower eta, eps or sigma")
    return np.where(bad, np.inf, losses)


def _record(g, members, losses, center, center_loss, l2, strategy, examples, elapsed,
            eval_s, accuracy: np.ndarray | None = None) -> dict:
    """One generation's summary. ``loss_center``: the loss (with the L2 term) of the rule the
    strategy held when the generation was evaluated; ``loss_task``: the same without L2 (what
    meta-learning GD logs as its step loss); ``rule``: the rule after selection."""
    ok = losses[np.isfinite(losses)]  # an exploding member never becomes "best" or a mean
    return {"generation": g, "loss_best": float(ok.min()), "loss_mean": float(ok.mean()),
            "loss_std": float(ok.std()), "nonfinite": int(losses.shape[0] - ok.shape[0]),
            "loss_center": float(center_loss),
            "loss_task": float(center_loss - 0.5 * l2 * (center**2).sum()),
            "members": int(members.shape[0]), "examples": int(examples),
            "seconds": float(elapsed), "eval_seconds": float(eval_s), **strategy.stats(),
            **({} if accuracy is None else {  # lifetime: validation accuracy of the networks
                "accuracy_center": float(accuracy[-1]), "accuracy_best": float(accuracy[:-1].max()),
                "accuracy_mean": float(accuracy[:-1].mean())}),
            "rule": strategy.center().tolist()}


def _metrics(rec: dict, prefix: str) -> dict:
    out = {f"{prefix}/{k}": v for k, v in rec.items() if k not in ("generation", "rule")}
    if len(rec["rule"]) <= MAX_RULE_METRICS:
        out.update({f"{prefix}/rule_{i}": v for i, v in enumerate(rec["rule"])})
    return out


def run_evolution(cfg, data, *, device="cpu", out: Path | None = None, resume: bool = False,
                  sink: Sink | None = None, pool=None, address: str | None = None,
                  stop_after: int | None = None, prefix: str = "evolution") -> EvolutionRun:
    """Evolve the rule of ``cfg`` (an EvolutionConfig) on ``data``.

    ``pool``: an object with ``losses(coeffs, idx, generation)`` (default: ``make_pool``);
    ``stop_after``: stop after that generation as if interrupted (the checkpoint stays);
    ``prefix``: the metric family of the per-generation events."""
    sink = sink or Sink()
    meta = cfg.meta_config()
    space = RuleSpace(meta)
    start = space.initial()
    strategy = make_strategy(cfg, start)
    history: list[dict] = []
    first = 1
    if resume:
        ck = load_checkpoint(out, cfg)
        strategy.load_state_dict(ck["state"])
        history = ck["history"]
        first = ck["generation"] + 1
        # exactly-once across a kill: the sinks drop or skip what the killed run logged past
        # the checkpoint, and log the checkpoint's generations they lack
        sink.rewind(ck["generation"], [(_metrics(rec, prefix), rec["generation"])
                                       for rec in history], prefix=prefix + "/")
    own_pool = pool is None
    pool = make_pool(cfg, data, device, address) if own_pool else pool
    n_train = cfg.n_train or data.x_train.shape[0]
    lifetime = getattr(cfg, "objective", "episodes") == "lifetime"
    if lifetime:
        lifetime_split(cfg, n_train)  # a validation set larger than the pool: one line, now
    batches = None if lifetime else generation_batches(meta, n_train, first)
    per_member = cfg.lifetime_examples * cfg.lifetime_networks if lifetime else cfg.episodes * cfg.batch
    examples = history[-1]["examples"] if history else 0
    elapsed0 = history[-1]["seconds"] if history else 0.0
    t_start = time.perf_counter()
    try:
        for g in range(first, cfg.generations + 1):
            idx = np.array([g]) if lifetime else next(batches).numpy()
            members, center = strategy.ask(g), strategy.center()
            t0 = time.perf_counter()
            scores = np.asarray(pool.losses(np.concatenate([members, center[None]]), idx, g))
            accuracy = scores[:, 1] if scores.ndim == 2 else None  # lifetime: (loss, acc, CE)
            losses = contain(scores[:, 0] if scores.ndim == 2 else scores, g)
            eval_s = time.perf_counter() - t0
            strategy.tell(g, members, losses[:-1])
            examples += losses.shape[0] * per_member
            rec = _record(g, members, losses[:-1], center, losses[-1],
                          0.0 if lifetime else cfg.weight_decay, strategy, examples,
                          elapsed0 + time.perf_counter() - t_start, eval_s, accuracy)
            if lifetime:
                rec["ce_center"] = float(scores[-1, 2])
            history.append(rec)
            sink.metrics(_metrics(rec, prefix), step=g)
            if out is not None:
                write_json(Path(out) / CHECKPOINT, {
                    "format": FORMAT, "version": 1, "config": to_dict(cfg), "generation": g,
                    "method": method_name(cfg), "state": strategy.state_dict(),
                    "history": history})
            if stop_after is not None and g >= stop_after:
                break
    finally:
        if own_pool:
            pool.close()
    final = strategy.center()
    provenance = {"method": method_name(cfg), "seed": cfg.seed, "dataset": cfg.dataset,
                  "network": {"neurons": cfg.neurons, "k": cfg.k, "p": cfg.p, "T": cfg.T},
                  "generations": len(history), "config": to_dict(cfg)}
    return EvolutionRun(strategy, history, start, final, space.rule(final, provenance),
                        getattr(pool, "replaced", 0), resumed_from=first - 1)
