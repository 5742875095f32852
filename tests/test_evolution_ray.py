"""Evolution on Ray actors: results never depend on scheduling, and a killed actor is replaced
without changing the result (uses the session's local Ray, tests/conftest.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from plasticity.data import load_dataset
from plasticity.evolution.config import EvolutionConfig
from plasticity.evolution.driver import run_evolution

CFG = EvolutionConfig(n_train=300, n_test=200, neurons=20, k=10, episodes=2, batch=10,
                      population=7, generations=3, genes=8, strategy="genetic")


def strip(history):
    return [{k: v for k, v in h.items() if "seconds" not in k} for h in history]


@pytest.fixture(scope="module")
def reference():
    data = load_dataset("halfspace")
    return data, run_evolution(CFG, data)


def test_two_actors_equal_in_process_and_a_killed_actor_changes_nothing(ray_local, reference):
    from plasticity.evolution.ray_pool import RayPool

    data, local = reference
    cfg = dataclasses.replace(CFG, workers=2, cpus_per_worker=1.0)
    pool = RayPool(cfg.meta_config(), 2, 1.0)
    try:
        assert len(set(pool.pids)) == 2
        remote = run_evolution(cfg, data, pool=pool)
        np.testing.assert_array_equal(local.final, remote.final)
        assert strip(local.history) == strip(remote.history)
        pool.chaos = {2: 0}  # kill actor 0 right after generation 2's chunks are submitted
        killed = run_evolution(cfg, data, pool=pool)
        assert pool.replaced == 1 and not pool.chaos
        np.testing.assert_array_equal(local.final, killed.final)
        assert strip(local.history) == strip(killed.history)
    finally:
        pool.close()


@pytest.mark.slow
def test_four_actors_equal_in_process(ray_local, reference):
    data, local = reference
    cfg = dataclasses.replace(CFG, workers=4, cpus_per_worker=0.5)
    remote = run_evolution(cfg, data)  # the driver builds and closes its own pool
    np.testing.assert_array_equal(local.final, remote.final)
    assert strip(local.history) == strip(remote.history)
