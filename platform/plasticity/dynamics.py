"""Recurrence diagnostics: does rounds 2..T's recurrence change what a trained network computes?

Measured on trained networks (docs/dynamics.md): the fraction of examples whose last round differs
from the first (h_T != h_1: with W = 0 and the paper's recurrence every round repeats round 1),
how often a later round is silent (no neuron with a positive value), and the recurrent weights'
scale on the graph's edges against the input drive (||W h_{t-1}|| against ||A x||).
"""

from __future__ import annotations

import torch

from .network import Networks


@torch.no_grad()
def recurrence_diagnostics(nets: Networks, W: torch.Tensor, x: torch.Tensor,
                           batch: int = 500) -> dict[str, list[float]]:
    """Per-network diagnostics on the shared examples x [n, d]; every value is a list [N].

    - ``h_T_differs``: fraction of examples with h_T != h_1 (relative difference > 1e-6);
    - ``h_T_vs_h_1``: mean ||h_T - h_1|| / ||h_1||;
    - ``silent_rounds``: fraction of (example, round 2..T) with no positive value;
    - ``active_fraction``: mean fraction of neurons with a positive value in rounds 2..T;
    - ``W_mean`` / ``W_std``: recurrent weights on the graph's edges;
    - ``Wh_vs_Ax``: mean ||W h_{t-1}|| / ||A x|| over rounds 2..T (the recurrent drive);
    - ``active_by_round``: per network, the mean fraction of neurons with a positive value in
      each round 1..T (a list of T values).
    T = 1 networks have no recurrence: every value but ``active_by_round`` is 0.
    """
    N = nets.n
    edges = nets.graph.flatten(1).sum(1).clamp_min(1)
    Wf = (W * nets.graph).flatten(1)
    w_mean = Wf.sum(1) / edges
    w_var = ((Wf - w_mean[:, None]) ** 2 * nets.graph.flatten(1)).sum(1) / edges
    keys = ("h_T_differs", "h_T_vs_h_1", "silent_rounds", "active_fraction", "Wh_vs_Ax")
    sums = {k: torch.zeros(N, dtype=torch.float64, device=x.device) for k in keys}
    by_round = torch.zeros(N, nets.T, dtype=torch.float64, device=x.device)
    wt = W.transpose(1, 2)
    for s in range(0, x.shape[0], batch):
        xb = x[s:s + batch].unsqueeze(0).expand(N, -1, -1)
        trace: list = []
        nets.hidden(xb, W, trace)
        for t, (h, _) in enumerate(trace):
            by_round[:, t] += (h > 0).to(torch.float64).mean(-1).sum(1)
        if nets.T > 1:
            h1, hT = trace[0][0], trace[-1][0]
            n1 = h1.norm(dim=-1).clamp_min(1e-12)
            rel = (hT - h1).norm(dim=-1) / n1
            sums["h_T_differs"] += (rel > 1e-6).sum(1)
            sums["h_T_vs_h_1"] += rel.sum(1)
            for (h_prev, ax), (h, _) in zip(trace[:-1], trace[1:]):
                pos = (h > 0).to(torch.float64)
                sums["silent_rounds"] += (pos.sum(-1) == 0).sum(1) / (nets.T - 1)
                sums["active_fraction"] += pos.mean(-1).sum(1) / (nets.T - 1)
                wh = torch.bmm(h_prev, wt).norm(dim=-1)
                sums["Wh_vs_Ax"] += (wh / ax.norm(dim=-1).clamp_min(1e-12)).sum(1) / (nets.T - 1)
    out = {k: (v / x.shape[0]).tolist() for k, v in sums.items()}
    out["active_by_round"] = (by_round / x.shape[0]).tolist()
    out["W_mean"] = w_mean.double().tolist()
    out["W_std"] = w_var.sqrt().double().tolist()
    return out


def trained_diagnostics(cfg, data, W: torch.Tensor, device, examples: int = 1000) -> dict:
    """:func:`recurrence_diagnostics` of the networks a ``run_train(cfg, ...)`` trained (the same
    draw: ``run_networks(cfg, ...)``) with their final W, on the first ``examples`` test examples."""
    from .experiment import run_networks, run_tensors

    nets = run_networks(cfg, data, cfg.networks, device)
    return recurrence_diagnostics(nets, W, run_tensors(cfg, data, device)[2][:examples])
