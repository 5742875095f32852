"""Distributed population evaluation on long-lived Ray actors: the only module importing ray.

Each actor builds its evaluator once (data, the E episode networks) and then evaluates one chunk
of every generation's population as one batched computation on its device. The driver splits the
population into one contiguous chunk per actor and concatenates the answers in member order.
An actor's losses are a pure function of (config, rules, example batch), so which actor
evaluates which chunk, and how many actors there are, cannot change a result. If an actor dies,
its chunk is evaluated again on a fresh replacement actor.

Works on an embedded local Ray (started here, stopped on ``close``) or on an existing cluster
(``address``, e.g. ``ray://head:10001`` or ``auto``), always with Ray's token authentication
(``plasticity.ray_cluster``: a missing or wrong token is a one-line error).
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import ray

from .. import PlasticityError, ray_cluster
from ..config import MetaConfig, field_names, from_dict, to_dict

RETRIES = 3  # replacement actors tried for one chunk before giving up


@ray.remote(max_restarts=0)
class _Worker:
    """One actor: an evaluator for the run's config on its device."""

    def __init__(self, spec: tuple[str, dict], device: str, threads: int, data_root: str | None):
        import torch

        from ..data import load_dataset
        from .lifetime import evaluator_for

        torch.set_num_threads(threads)
        cfg = config_of(spec)
        data = load_dataset(cfg.dataset, data_seed=cfg.data_seed, inputs=cfg.inputs,
                            root=data_root)
        self.evaluator = evaluator_for(cfg, data, device)

    def losses(self, coeffs: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return self.evaluator.losses(coeffs, idx)

    def pid(self) -> int:
        return os.getpid()

    def cpu_seconds(self) -> float:
        return time.process_time()


def spec_of(cfg) -> tuple[str, dict]:
    """What an actor needs to rebuild the objective: ("lifetime", EvolutionConfig fields) for the
    lifetime objective, else ("episodes", the MetaConfig of the episodes objective)."""
    from .config import EvolutionConfig

    if getattr(cfg, "objective", "episodes") == "lifetime":
        return "lifetime", {k: getattr(cfg, k) for k in field_names(EvolutionConfig)}
    meta = cfg.meta_config() if hasattr(cfg, "meta_config") else cfg
    return "episodes", to_dict(meta)


def config_of(spec: tuple[str, dict]):
    from .config import EvolutionConfig

    kind, d = spec
    return from_dict(EvolutionConfig if kind == "lifetime" else MetaConfig, d)


class RayPool:
    """``workers`` actors with ``cpus``/``gpus`` each; ``losses(coeffs, idx, generation)``.

    ``chaos`` is a fault-injection hook for tests and drills: {generation: actor index} kills
    that actor right after the generation's chunks are submitted."""

    def __init__(self, cfg, workers: int, cpus: float = 1.0, gpus: float = 0.0, *,
                 address: str | None = None, data_root: str | None = None):
        """``cfg``: a MetaConfig (the episodes objective) or an EvolutionConfig (its objective)."""
        self.started = False
        if not ray.is_initialized():
            if address:
                ray_cluster.init(address, log_to_driver=False)
            else:
                need = max(os.cpu_count() or 1, math.ceil(workers * cpus))
                ray_cluster.init(None, num_cpus=need, log_to_driver=False)
            self.started = True
        self.cpus, self.gpus = cpus, gpus
        device = "cuda" if gpus > 0 else "cpu"
        self.args = (spec_of(cfg), device, max(1, int(cpus)), data_root)
        self.actors = [self._new() for _ in range(workers)]
        self.pids = ray.get([a.pid.remote() for a in self.actors])  # wait until all are up
        self.chaos: dict[int, int] = {}
        self.replaced = 0

    def _new(self):
        # SPREAD: the actors go to different nodes where they can (a lost node then costs the
        # pool its share only; its actors are replaced wherever resources are left)
        return _Worker.options(num_cpus=self.cpus, num_gpus=self.gpus,
                               scheduling_strategy="SPREAD").remote(*self.args)

    def losses(self, coeffs: np.ndarray, idx: np.ndarray, generation: int = 0) -> np.ndarray:
        """Losses [n] of members coeffs [n, P] on batch idx [E, B]: one chunk per actor."""
        chunks = [c for c in np.array_split(np.arange(coeffs.shape[0]), len(self.actors)) if c.size]
        idx_ref = ray.put(np.asarray(idx))
        refs = [a.losses.remote(coeffs[c], idx_ref) for a, c in zip(self.actors, chunks)]
        if generation in self.chaos:
            ray.kill(self.actors[self.chaos.pop(generation)], no_restart=True)
        out = []
        for i, (c, ref) in enumerate(zip(chunks, refs)):
            for _ in range(RETRIES + 1):
                try:
                    out.append(ray.get(ref))
                    break
                except ray.exceptions.RayActorError:
                    self.actors[i] = self._new()
                    self.replaced += 1
                    ref = self.actors[i].losses.remote(coeffs[c], idx_ref)
            else:
                raise PlasticityError(f"actor {i} died {RETRIES + 1} times on one chunk: check the "
                                      "cluster's resources and logs")
        return np.concatenate(out)

    def cpu_seconds(self) -> float:
        """CPU time used so far by all actor processes (for benchmarks)."""
        return float(sum(ray.get([a.cpu_seconds.remote() for a in self.actors])))

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
        if self.started:
            ray.shutdown()
