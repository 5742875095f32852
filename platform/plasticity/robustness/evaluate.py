"""Robust accuracy against eps: every attack at every radius, and the per-example worst case.

The threat model is one ball: L2 (the paper's, default) or L-inf, of radius eps. Each attack runs
in its own norm at the largest radius whose ball fits inside the threat ball: in an L2 threat an
L-inf attack gets eps / sqrt(d) (the inscribed cube), in an L-inf threat an L2 attack gets eps.
So every adversarial example of every attack is a valid one for the threat (checked on each run).

Two kinds of numbers:
- raw: each attack run on its own at each eps (never altered, so a non-monotone raw curve is
  visible and flagged in ``non_monotone``);
- worst case: an example counts as robust at eps only if it is classified correctly and no attack
  broke it at any radius <= eps (a perturbation found at a smaller eps lies inside every larger
  ball), so the worst-case curve never rises with eps, by construction.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import torch

from .. import PlasticityError
from .attacks import ATTACKS, NORMS, FrozenNet


@dataclass(frozen=True)
class Budget:
    """Attack budgets (stated with every result)."""

    steps: int = 50  # PGD steps per restart
    step_scale: float = 2.5  # PGD step = step_scale * eps / steps (Madry et al.)
    restarts: int = 3  # PGD restarts (restart 0 from the FGSM point / from x)
    paper_steps: int = 50  # steps of the paper's targeted attack (per target)
    paper_alpha: float = 0.1  # its raw-gradient step size (docs/paper.md 5.4: not given by the paper)
    queries: int = 1000  # queries of the gradient-free random search (ART Square, HSJ: per iteration)
    relax: float = 0.5  # BPDA: the cap surrogate's temperature (x the row's std of z)
    es_samples: int = 32  # ES attack: antithetic pairs per step (2 x this queries per step)
    es_sigma: float = 0.5  # ES attack: probe scale, x the radius per coordinate


def attack_radius(attack: str, threat: str, eps: float, dim: int) -> tuple[str, float]:
    """(norm the attack runs in, its radius) inside the ``threat`` ball of radius eps."""
    norm = ATTACKS[attack].norm
    norm = threat if norm == "threat" else norm
    if norm == threat:
        return norm, eps
    return norm, (eps / math.sqrt(dim) if threat == "l2" else eps)


def check_attacks(attacks: list[str], threat: str) -> None:
    """Refuse unknown attack names and norms with a one-line PlasticityError."""
    if threat not in NORMS:
        raise PlasticityError(f"norm='{threat}' is not one of {', '.join(NORMS)}")
    for a in attacks:
        if a not in ATTACKS:
            raise PlasticityError(f"unknown attack '{a}' in attacks: use {', '.join(ATTACKS)}")


def inside(x_adv, x, eps: float, norm: str, lo, hi, tol: float = 1e-4) -> bool:
    """Every row of x_adv within the ``norm`` ball of radius eps around x and in [lo, hi]."""
    d = x_adv - x
    dist = d.norm(dim=1) if norm == "l2" else d.abs().amax(1)
    ok = bool((dist <= eps * (1 + tol) + tol).all())
    if lo is not None:
        ok &= bool((x_adv >= lo - 1e-6).all() and (x_adv <= hi + 1e-6).all())
    return ok


def robustness_curves(model: FrozenNet, x: torch.Tensor, y: torch.Tensor, eps_list: list[float],
                      attacks: list[str], *, threat: str = "l2", budget: Budget = Budget(),
                      gen: torch.Generator | None = None, lo=0.0, hi=1.0,
                      surrogate: FrozenNet | None = None, keep: int = 0,
                      log: bool = False) -> dict:
    """Attack ``model`` on x [B, d], y [B] at every eps (sorted ascending) with every attack.

    Returns accuracies in [0, 1]: ``clean``, ``raw[attack]`` and ``worst`` / ``worst_raw`` (per
    eps), ``broken_at`` (per example: smallest eps at which it was broken, None if never; 0.0 if
    misclassified clean), ``broken_by`` (the attack that did it), wall ``attack_seconds`` per attack,
    ``non_monotone`` raw curves, and up to ``keep`` adversarial examples per eps (``examples``).
    ``log``: one line per (eps, attack) on stderr."""
    check_attacks(attacks, threat)
    for a in attacks:
        if ATTACKS[a].needs == "surrogate" and surrogate is None:
            raise PlasticityError(f"attack '{a}' needs a surrogate network: set surrogate=PATH "
                                  "(the network.pt of another attack run)")
    eps_list = sorted(eps_list)
    B, dim = x.shape
    ok = model.predict(x) == y
    idx = ok.nonzero().squeeze(1)
    broken_at: list = [None if bool(o) else 0.0 for o in ok.tolist()]
    broken_by: list = [None if bool(o) else "clean" for o in ok.tolist()]
    running = ~ok
    raw = {a: [] for a in attacks}
    seconds = {a: 0.0 for a in attacks}
    worst, worst_raw, examples = [], [], []
    kw = dict(steps=budget.steps, step_scale=budget.step_scale, restarts=budget.restarts,
              queries=budget.queries, gen=gen, lo=lo, hi=hi, surrogate=surrogate)
    for eps in eps_list:
        broken_eps = ~ok
        shown = {}
        for a in attacks:
            norm, r = attack_radius(a, threat, eps, dim)
            b = ~ok
            if r > 0 and idx.numel() > 0:
                t0 = time.time()
                attack = ATTACKS[a]
                extra = attack.budget(budget) if attack.budget is not None else {}
                xa, bc = attack.fn(model, x[idx], y[idx], r, norm=norm, **{**kw, **extra})
                seconds[a] += time.time() - t0
                if log:
                    print(f"  eps {eps:g} {a}: {int(bc.sum())}/{idx.numel()} broken "
                          f"({time.time() - t0:.1f}s)", file=sys.stderr, flush=True)
                if not (inside(xa, x[idx], r, norm, lo, hi) and inside(xa, x[idx], eps, threat, lo, hi)):
                    raise AssertionError(f"attack {a} left its eps ball at eps={eps}")  # a bug
                b = b.clone()
                b[idx] = bc
                for j in bc.nonzero().squeeze(1).tolist():
                    e = int(idx[j])
                    if broken_at[e] is None:
                        broken_at[e], broken_by[e] = eps, a
                    if len(shown) < keep and e not in shown:
                        shown[e] = (a, xa[j])
            raw[a].append(1.0 - b.double().mean().item())
            broken_eps = broken_eps | b
        running = running | broken_eps
        worst_raw.append(1.0 - broken_eps.double().mean().item())
        worst.append(1.0 - running.double().mean().item())
        if keep:
            examples.append(_examples(model, x, y, shown))
    non_monotone = {a: [eps_list[i + 1] for i in range(len(v) - 1) if v[i + 1] > v[i]]
                    for a, v in raw.items()}
    return {"eps": eps_list, "clean": ok.double().mean().item(), "raw": raw, "worst": worst,
            "worst_raw": worst_raw, "broken_at": broken_at, "broken_by": broken_by,
            "attack_seconds": seconds, "non_monotone": {a: v for a, v in non_monotone.items() if v},
            "examples": examples, "n": B, "threat": threat}


def _examples(model: FrozenNet, x, y, shown: dict) -> list[dict]:
    """Adversarial examples for a plot: index, attack, original and adversarial input and labels."""
    out = []
    for e, (a, xa) in shown.items():
        pred = int(model.predict(xa[None])[0])
        out.append({"index": e, "attack": a, "label": int(y[e]), "adv_pred": pred,
                    "l2": float((xa - x[e]).norm()), "linf": float((xa - x[e]).abs().max()),
                    "x": x[e].tolist(), "x_adv": xa.tolist()})
    return out


def diagnostics(model: FrozenNet, x: torch.Tensor, y: torch.Tensor) -> dict:
    """What explains a network's curves: logit scale, how often CE's input gradient is exactly 0
    (softmax saturated in float32) among correct examples, and whether the recurrence is active
    (relative |h_T - h_1| and mean recurrent weight on the graph's edges)."""
    import torch.nn.functional as F

    from ..network import cap

    xg = x.detach().clone().requires_grad_(True)
    logits = model.logits(xg)
    (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xg)
    ok = logits.argmax(-1) == y
    n = model.nets
    with torch.no_grad():
        h1 = cap(torch.relu(x @ n.A[0].T), n.k)
        hT = n.hidden(x.unsqueeze(0), model.W)[0][0]
        rel = ((hT - h1).norm(dim=1) / h1.norm(dim=1).clamp_min(1e-12)).mean().item()
        edges = n.graph[0].sum().clamp_min(1)
    return {"logit_std": logits.detach().std().item(),
            "zero_ce_gradient": int((~(g != 0).any(1) & ok).sum()), "correct": int(ok.sum()),
            "h_T_vs_h_1": rel, "mean_W_on_edges": (model.W[0].sum() / edges).item(),
            **first_order_distance(model, x, y)}


def first_order_distance(model: FrozenNet, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The linearised L2 distance to the decision boundary, margin / ||grad_x margin|| (the
    margin z_y - max_{j != y} z_j, its gradient through the kept units), over the correctly
    classified examples: median and quartiles. It separates a large margin from a small input
    gradient: where the first-order distance is large but attacks still break the example, the
    boundary is close through the cap's switching, not along the gradient."""
    from .frozen import margin

    xg = x.detach().clone().requires_grad_(True)
    m = margin(model.logits(xg), y)
    (g,) = torch.autograd.grad(m.sum(), xg)
    ok = m.detach() > 0
    if not bool(ok.any()):
        return {"first_order_distance": None}
    d = (m.detach()[ok] / g[ok].norm(dim=1).clamp_min(1e-30)).double()
    q = torch.quantile(d, torch.tensor([0.25, 0.5, 0.75], dtype=d.dtype)).tolist()
    return {"first_order_distance": {"q25": q[0], "median": q[1], "q75": q[2]}}
