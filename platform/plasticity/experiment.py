"""From a config to what a run needs: data tensors on the device, and the run's networks.

Rule-based training, GD baselines and meta-learning all draw their networks here, so for the same
seed and key they share graphs and input weights (a fair comparison).
"""

from __future__ import annotations

import torch

from .network import Networks, make_networks


def run_tensors(cfg, data, device) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_test, y_test) limited to ``cfg.n_train`` / ``cfg.n_test`` (0 = all),
    on ``device`` in ``cfg.dtype``."""
    dtype = getattr(torch, cfg.dtype)
    n_tr = cfg.n_train or data.x_train.shape[0]
    n_te = cfg.n_test or data.x_test.shape[0]
    return (data.x_train[:n_tr].to(device, dtype), data.y_train[:n_tr].to(device),
            data.x_test[:n_te].to(device, dtype), data.y_test[:n_te].to(device))


def run_networks(cfg, data, n: int, device, key: object = "networks") -> Networks:
    """``n`` networks of ``cfg``'s shape for ``data``, drawn from ``(cfg.seed, key, i)``."""
    return make_networks(n, data.dim, data.n_classes, neurons=cfg.neurons, k=cfg.k, p=cfg.p,
                         T=cfg.T, seed=cfg.seed, recurrence=cfg.recurrence,
                         firing=cfg.firing,
                         input_weights=cfg.input_weights, dtype=getattr(torch, cfg.dtype),
                         device=device, key=key)
