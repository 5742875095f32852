"""docs/paper.md 6.6: the GD trajectory that selection should follow, against the measured one.

With Y = M g (genetics.py), dYbar/dx_i = 2 eps M[:, i], so the gradient of the loss in the allele
frequencies is dL/dx = 2 eps M^T dL/dY, with dL/dY the meta-gradient GD uses (autograd through
the same unrolled episodes, same networks, same batch). Two first-order predictions of one
generation of selection:

- replicator (the standard weak-selection derivation):  x' = x - theta * x (1 - x) * dL/dx
- the paper's printed form:                              x' = x - theta * (2 - 2x) * dL/dx

The measured trajectory is the deterministic infinite-population dynamics (``GeneticInfinite``).
Both are O(theta^2 + eps^2 |L''|) approximations at best; the check reports, for each theta and
eps, the one-step error from the measured state and the error of the free-running predicted
trajectory, and which form is closer.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .config import parse_floats
from .evaluate import PopulationEvaluator, RuleSpace, generation_batches
from .genetics import GeneticInfinite

FORMS = {
    "replicator": lambda x: x * (1.0 - x),
    "paper": lambda x: 2.0 - 2.0 * x,
}


def allele_gradient(strategy: GeneticInfinite, dL_dY: np.ndarray) -> np.ndarray:
    """dL/dx [G] = 2 eps M^T dL/dY."""
    return 2.0 * strategy.eps * strategy.M.T @ dL_dY


def predicted_step(x: np.ndarray, grad_x: np.ndarray, theta: float, form: str) -> np.ndarray:
    """One generation of the predicted GD form, kept in [0, 1]."""
    return np.clip(x - theta * FORMS[form](x) * grad_x, 0.0, 1.0)


def per_coefficient(strategy: GeneticInfinite, x: np.ndarray) -> np.ndarray:
    """Mean frequency of the genes of each coefficient [P] (weights |M|)."""
    w = np.abs(strategy.M)
    return (w @ x) / w.sum(1)


def trajectory_check(cfg, data, device="cpu") -> dict:
    """Run ``cfg.generations`` of infinite-population selection from GD's start, and the two
    predictions alongside (one-step from the measured state, and free-running).

    Errors: ``step_error[form]`` = sum_t |dx_t - dx_t^pred| / sum_t |dx_t| (L2 over genes);
    ``trajectory_error[form]`` = max_t |x_t - xhat_t|_inf / max_t |x_t - x_0|_inf."""
    meta = cfg.meta_config()
    ev = PopulationEvaluator(meta, data, device)
    start = RuleSpace(meta).initial()
    strat = GeneticInfinite(cfg, start)
    batches = generation_batches(meta, cfg.n_train or data.x_train.shape[0])
    x0 = strat.x.copy()
    free = {f: x0.copy() for f in FORMS}
    num = {f: 0.0 for f in FORMS}
    den = 0.0
    measured, predicted = [per_coefficient(strat, x0)], {f: [per_coefficient(strat, x0)] for f in FORMS}
    dev = {f: 0.0 for f in FORMS}
    moved, losses = 0.0, []
    for g in range(1, cfg.generations + 1):
        idx = next(batches).numpy()
        x = strat.x.copy()
        loss, dY = ev.gradient(strat.center(), idx)
        losses.append(loss)
        grad_x = allele_gradient(strat, dY)
        members = strat.ask(g)
        strat.tell(g, members, ev.losses(members, idx))
        dx = strat.x - x
        den += float(np.linalg.norm(dx))
        for f in FORMS:
            num[f] += float(np.linalg.norm(dx - (predicted_step(x, grad_x, cfg.theta, f) - x)))
            y_hat = strat.M @ (strat.eps * (2.0 * free[f] - 1.0))
            _, dY_hat = ev.gradient(y_hat, idx)
            free[f] = predicted_step(free[f], allele_gradient(strat, dY_hat), cfg.theta, f)
            dev[f] = max(dev[f], float(np.abs(strat.x - free[f]).max()))
            predicted[f].append(per_coefficient(strat, free[f]))
        moved = max(moved, float(np.abs(strat.x - x0).max()))
        measured.append(per_coefficient(strat, strat.x))
    step_error = {f: num[f] / max(den, 1e-300) for f in FORMS}
    traj_error = {f: dev[f] / max(moved, 1e-300) for f in FORMS}
    return {
        "theta": cfg.theta, "eps": cfg.eps, "genes": cfg.genes, "generations": cfg.generations,
        "step_error": step_error, "trajectory_error": traj_error,
        "closer": min(FORMS, key=lambda f: (step_error[f], traj_error[f])),
        "moved": moved, "loss_first": losses[0], "loss_last": losses[-1],
        "start_error": strat.start_error,
        "measured": np.stack(measured).tolist(),
        "predicted": {f: np.stack(v).tolist() for f, v in predicted.items()},
    }


def theory_sweep(cfg, data, device="cpu", progress=None) -> list[dict]:
    """``trajectory_check`` for every (theta, eps) of ``cfg.thetas`` x ``cfg.epss``. For an eps
    below ``cfg.eps`` the gene count grows so that genes * eps stays at least
    ``cfg.genes * cfg.eps``: the phenotype range, hence the exact start rule, is kept."""
    rows = []
    for eps in parse_floats("epss", cfg.epss):
        genes = max(cfg.genes, math.ceil(cfg.genes * cfg.eps / eps - 1e-9))
        for theta in parse_floats("thetas", cfg.thetas):
            run = dataclasses.replace(cfg, theta=theta, eps=eps, genes=genes, strategy="genetic",
                                      infinite=True)
            rows.append(trajectory_check(run, data, device))
            if progress is not None:
                progress(rows[-1])
    return rows
