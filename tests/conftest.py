"""Shared test setup: one intra-op thread (the test machines are small and shared), one local
Ray per test session (started on first use, with no dashboard, with Ray's token), and
MLflow tracking off unless a test turns it on."""

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray's token authentication on, as in the CLI
# CLI runs in tests track nothing unless a test asks for a store (tests/test_tracking.py does):
# no mlflow.db appears in the working directory, and no test pays for MLflow it does not check.
os.environ["PLASTICITY_TRACKING_URI"] = "none"  # also over a developer's own setting


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 2 CPUs for the whole test session (not local_mode: pickling is real)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def task():
    """x [300, 10] float64 and 3-class labels from a random linear teacher (the engine-vs-reference
    tests' data: test_engine.py, test_dynamics.py)."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(300, 10, generator=g, dtype=torch.float64)
    y = (x @ torch.randn(10, 3, generator=g, dtype=torch.float64)).argmax(1)
    return x, y
