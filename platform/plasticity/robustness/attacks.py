"""Adversarial attacks on a frozen network (docs/paper.md 5.4): no plasticity at test time.

Every attack takes clean inputs x [B, d] with labels y [B] and a radius ``eps`` in its own norm,
and returns ``(x_adv [B, d], broken [B] bool)``: ``broken[b]`` is True when some iterate the attack
visited was misclassified, and then ``x_adv[b]`` is that iterate (else the last one). Every
iterate lies in the eps ball around x and in the pixel range [lo, hi] (``None``: unbounded, for
the synthetic sets), so "broken" is a valid adversarial example, found at any step.

Gradients come from :meth:`FrozenNet.logits`, the engine's own forward pass: the k-cap is a top-k
selection, so gradients flow through the kept units only (which units are kept is a constant);
ReLU passes gradients where its input is > 0. Both can hide gradients, hence the gradient-free
:func:`square` (random search on the margin) and the surrogate :func:`transfer` attack.

Batched over examples (and over targets for the paper's attack); no Python loop per example.
``ATTACKS`` (the registry, at the end) maps each name to an :class:`Attack` record: the function,
its norm, what it needs of the attacked network, a one-line doc (docs/extending.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .frozen import FrozenNet, image_side, margin, project

NORMS = ("l2", "linf")


def _grad(model: FrozenNet, x: torch.Tensor, loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, l] at x, d sum(loss) / dx [B, d]); rows are independent."""
    x = x.detach().requires_grad_(True)
    logits = model.logits(x)
    (g,) = torch.autograd.grad(loss_fn(logits).sum(), x)
    return logits.detach(), g


def double_softmax_ce(logits: torch.Tensor, target: torch.Tensor, reduction="none"):
    """The reference code's loss (docs/paper.md 8.3): cross-entropy applied to softmax outputs, so
    softmax twice. Its gradient vanishes when the first softmax saturates (large logits)."""
    return F.cross_entropy(torch.softmax(logits, -1), target, reduction=reduction)


def paper_l2(model: FrozenNet, x, y, eps: float, *, steps: int = 50, alpha: float = 1.0,
             loss: str = "ce", lo=0.0, hi=1.0, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's attack (docs/paper.md 5.4): targeted, for every wrong target y' one run of
    x <- Proj_{L2(x, eps)}(x - alpha * grad_x CE(f(x), y')) along the RAW gradient, pixels clipped;
    the example is broken if any of its l - 1 runs is misclassified at some step. ``loss``:
    "ce" (on logits) or "double_softmax" (the reference code's loss, see double_softmax_ce)."""
    ce = F.cross_entropy if loss == "ce" else double_softmax_ce
    B, d = x.shape
    L = model.n_classes
    tgt = torch.arange(L, device=y.device).expand(B, L)[tgt_mask(y, L)].view(B, L - 1)
    xr, yr, tr = x.repeat_interleave(L - 1, 0), y.repeat_interleave(L - 1), tgt.reshape(-1)
    ex = torch.arange(B, device=x.device).repeat_interleave(L - 1)
    broken = torch.zeros(B, dtype=torch.bool, device=x.device)
    best = x.clone()
    cur = xr.clone()
    for step in range(steps + 1):
        act = (~broken[ex]).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        logits, g = _grad(model, cur[act],
                          lambda z, t=tr[act]: ce(z, t, reduction="none"))
        hit = logits.argmax(-1) != yr[act]
        if hit.any():
            rows = act[hit]
            best[ex[rows]] = cur[rows]  # any hit of that example will do
            broken[ex[rows]] = True
        if step < steps:
            cur[act] = project(cur[act] - alpha * g, xr[act], eps, "l2", lo, hi)
    return best, broken


def tgt_mask(y: torch.Tensor, L: int) -> torch.Tensor:
    """[B, L] True where the class is not the label (the wrong targets)."""
    return torch.arange(L, device=y.device)[None, :] != y[:, None]


def fgsm(model: FrozenNet, x, y, eps: float, *, lo=0.0, hi=1.0, **_):
    """L-inf FGSM (Goodfellow et al.): one step x + eps * sign(grad CE), untargeted."""
    _, g = _grad(model, x, lambda z: F.cross_entropy(z, y, reduction="none"))
    x_adv = project(x + eps * g.sign(), x, eps, "linf", lo, hi)
    broken = model.predict(x_adv) != y
    return x_adv, broken


def pgd(model: FrozenNet, x, y, eps: float, *, norm: str = "linf", steps: int = 20,
        step_scale: float = 2.5, restarts: int = 1, gen: torch.Generator | None = None,
        lo=0.0, hi=1.0, **_):
    """Untargeted PGD (Madry et al.) in ``norm`` on the margin loss z_y - max_{j!=y} z_j (the
    cross-entropy saturates at the large logits of rule-trained networks), step
    ``step_scale * eps / steps`` along sign(g) (linf) or g / |g| (l2), ``restarts`` runs.
    Restart 0 starts at the FGSM point (linf) or at x (l2); the others at a uniform random point
    of the ball. An example is broken if any iterate of any restart is misclassified, so PGD-linf
    is never weaker than FGSM at the same eps."""
    alpha = step_scale * eps / max(steps, 1)
    broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    best = x.clone()
    for r in range(restarts):
        if r == 0:
            cur = fgsm(model, x, y, eps, lo=lo, hi=hi)[0] if norm == "linf" else x.clone()
        else:
            cur = project(x + random_in_ball(x.shape, eps, norm, gen).to(x), x, eps, norm, lo, hi)
        for step in range(steps + 1):
            act = (~broken).nonzero().squeeze(1)
            if act.numel() == 0:
                return best, broken
            logits, g = _grad(model, cur[act], lambda z, a=act: margin(z, y[a]))
            new = torch.zeros_like(broken)
            new[act] = logits.argmax(-1) != y[act]
            best[new] = cur[new]
            broken |= new
            if step == steps:
                break
            if norm == "linf":
                s = g.sign()
            else:
                s = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
            cur[act] = project(cur[act] - alpha * s, x[act], eps, norm, lo, hi)
    return best, broken


def random_in_ball(shape, eps: float, norm: str, gen) -> torch.Tensor:
    """Uniform random points of the ``norm`` ball of radius eps (float32, CPU)."""
    B, d = shape
    if norm == "linf":
        return (torch.rand(B, d, generator=gen) * 2 - 1) * eps
    v = torch.randn(B, d, generator=gen)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return v * eps * torch.rand(B, 1, generator=gen) ** (1.0 / d)


def square(model: FrozenNet, x, y, eps: float, *, norm: str = "linf", queries: int = 1000,
           p_init: float = 0.1, gen: torch.Generator | None = None, lo=0.0, hi=1.0, **_):
    """Gradient-free random search in the spirit of the Square attack (Andriushchenko et al.
    2020): each query changes the perturbation in one random square window (side shrinking with
    the query count) and keeps the change if the margin z_y - max z_j went down. L-inf: the
    window is set to +-eps (one random sign), from a start of random +-eps columns. L2
    (simplified, not the paper's Square-L2): a Gaussian window of norm ~ sqrt(p) * eps is added,
    then the sum is projected onto the ball. One forward pass per query for all examples."""
    B, d = x.shape
    h, w = image_side(d)
    if norm == "linf":
        cols = torch.randint(0, 2, (B, 1, w), generator=gen).float() * 2 - 1
        delta = (cols.expand(B, h, w).reshape(B, d) * eps).to(x)
    else:
        delta = _unit(torch.randn(B, d, generator=gen)).to(x) * eps
    cur = project(x + delta, x, eps, norm, lo, hi)
    with torch.no_grad():
        loss = margin(model.logits(cur), y)
    broken = loss < 0
    best = torch.where(broken[:, None], cur, x)
    rr = torch.arange(h, device=x.device)[None, :, None]
    cc = torch.arange(w, device=x.device)[None, None, :]
    for q in range(queries):
        act = (~broken).nonzero().squeeze(1)
        if act.numel() == 0 or eps == 0:
            break
        p = p_init * 0.5 ** (8 * q // max(queries, 1))  # halve the window area 8 times
        s = max(1, round(math.sqrt(p * h * w))) if h > 1 else max(1, round(p * w))
        sh = min(s, h)
        r0 = torch.randint(0, h - sh + 1, (act.numel(), 1, 1), generator=gen).to(x.device)
        c0 = torch.randint(0, w - s + 1, (act.numel(), 1, 1), generator=gen).to(x.device)
        win = ((rr >= r0) & (rr < r0 + sh) & (cc >= c0) & (cc < c0 + s)).reshape(-1, d).to(x)
        xa, ca = x[act], cur[act]
        if norm == "linf":
            sign = (torch.randint(0, 2, (act.numel(), 1), generator=gen).float() * 2 - 1).to(x)
            prop = ca * (1 - win) + (xa + sign * eps) * win
        else:
            bump = torch.randn(act.numel(), d, generator=gen).to(x) * win
            prop = ca + _unit(bump) * eps * 2 * math.sqrt(p)
        prop = project(prop, xa, eps, norm, lo, hi)
        with torch.no_grad():
            new_loss = margin(model.logits(prop), y[act])
        better = new_loss < loss[act]
        idx = act[better]
        cur[idx], loss[idx] = prop[better], new_loss[better]
        hit = idx[new_loss[better] < 0]
        best[hit] = cur[hit]
        broken[hit] = True
    return best, broken


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


def bpda(model: FrozenNet, x, y, eps: float, *, relax: float = 0.5, **kw):
    """PGD on the margin with the cap's gradient replaced by a straight-through surrogate
    (``FrozenNet.relaxed``): units just outside the cap, which the exact gradient ignores, steer
    the steps. The forward pass, and so every verdict, is the exact network's."""
    return pgd(model.relaxed(relax), x, y, eps, **kw)


def es_margin(model: FrozenNet, x, y, eps: float, *, norm: str = "l2", steps: int = 50,
              step_scale: float = 2.5, samples: int = 32, sigma: float = 0.5,
              gen: torch.Generator | None = None, lo=0.0, hi=1.0, **_):
    """Gradient-free PGD: the margin's gradient estimated from its values only, by antithetic
    Gaussian sampling (NES, Ilyas et al. 2018; the estimator Tramer et al. 2020 use against
    k-winners-take-all): g = sum_i (m(x + s u_i) - m(x - s u_i)) u_i / (2 n s), n = ``samples``
    pairs, s = ``sigma`` x the radius per coordinate (eps / sqrt(d) in L2, eps in L-inf), so the
    probes cross the cap's discontinuities that hide the exact gradient. Steps as :func:`pgd`;
    2 n queries per step; an example is broken if an iterate is misclassified."""
    B, d = x.shape
    s = sigma * (eps / math.sqrt(d) if norm == "l2" else eps)
    alpha = step_scale * eps / max(steps, 1)
    cur, best = x.clone(), x.clone()
    broken = torch.zeros(B, dtype=torch.bool, device=x.device)
    for step in range(steps + 1):
        act = (~broken).nonzero().squeeze(1)
        if act.numel() == 0 or eps == 0:
            break
        with torch.no_grad():
            hit = model.logits(cur[act]).argmax(-1) != y[act]
        best[act[hit]] = cur[act[hit]]
        broken[act[hit]] = True
        act = act[~hit]
        if step == steps or act.numel() == 0:
            break
        n = act.numel()
        u = torch.randn(n, samples, d, generator=gen).to(x)
        probes = torch.cat([cur[act, None] + s * u, cur[act, None] - s * u], 1)
        if lo is not None:
            probes = probes.clamp(lo, hi)
        with torch.no_grad():
            m = margin(model.logits(probes.reshape(-1, d)), y[act].repeat_interleave(2 * samples))
        m = m.view(n, 2, samples)
        g = ((m[:, 0] - m[:, 1])[..., None] * u).sum(1) / (2 * samples * s)
        step_dir = g.sign() if norm == "linf" else g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
        cur[act] = project(cur[act] - alpha * step_dir, x[act], eps, norm, lo, hi)
    return best, broken


def _art(name: str):
    """An attack of plasticity.robustness.art_attacks, imported when first run (ART is heavy)."""
    def run(*args, **kw):
        from . import art_attacks

        return getattr(art_attacks, name)(*args, **kw)

    run.__name__ = name
    return run


def transfer(model: FrozenNet, x, y, eps: float, *, surrogate: FrozenNet, norm: str = "l2",
             **kw):
    """Transfer attack: PGD crafted on ``surrogate`` (e.g. the GD-trained network), judged on
    ``model`` (never queried for gradients)."""
    x_adv, _ = pgd(surrogate, x, y, eps, norm=norm, **kw)
    return x_adv, model.predict(x_adv) != y


def paper_double_softmax(model: FrozenNet, x, y, eps: float, **kw):
    """The paper's attack on the reference code's double-softmax loss (a gradient-masking probe)."""
    return paper_l2(model, x, y, eps, **{**kw, "loss": "double_softmax"})


def _paper_budget(budget) -> dict:
    """The paper's attack takes its own step count and raw-gradient step size from the budget."""
    return {"steps": budget.paper_steps, "alpha": budget.paper_alpha}


def _bpda_budget(budget) -> dict:
    return {"relax": budget.relax}


def _es_budget(budget) -> dict:
    return {"samples": budget.es_samples, "sigma": budget.es_sigma}


# What an attack needs of the attacked network: its input gradients, only its outputs (queries),
# or nothing but its outputs while the gradients come from a surrogate network (``surrogate=``).
NEEDS = ("gradients", "queries", "surrogate")


@dataclass(frozen=True)
class Attack:
    """One attack: the function, the norm it works in, what it needs, a one-line doc.

    ``fn(model, x, y, eps, *, norm, steps, step_scale, restarts, queries, gen, lo, hi, surrogate,
    **_) -> (x_adv [B, d], broken [B])`` (see the module doc); it takes the keywords it uses and
    ignores the rest. ``norm``: "l2" | "linf", or "threat" for an attack that runs in the run's
    threat norm. ``budget(Budget) -> dict``: keywords that replace the shared budget ones (the
    paper's attack: its own steps and step size); None: the shared ones only."""

    fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    norm: str
    needs: str
    doc: str
    budget: Callable[..., dict] | None = None

    def __post_init__(self):
        if self.norm not in (*NORMS, "threat"):
            raise ValueError(f"attack norm '{self.norm}' is not one of {', '.join(NORMS)}, threat")
        if self.needs not in NEEDS:
            raise ValueError(f"attack needs '{self.needs}' is not one of {', '.join(NEEDS)}")
        if not self.doc or "\n" in self.doc:
            raise ValueError("an attack's doc is one non-empty line")


# The registry: name -> Attack. A new attack is one entry here plus its function; `attacks=` of
# `plasticity attack` and tests/test_robustness.py's parametrised tests pick it up.
ATTACKS: dict[str, Attack] = {
    "paper": Attack(paper_l2, "l2", "gradients",
                    "the paper's targeted L2 attack along the raw CE gradient (docs/paper.md 5.4)",
                    budget=_paper_budget),
    "paper_ds": Attack(paper_double_softmax, "l2", "gradients",
                       "the paper's attack on the reference code's double-softmax loss",
                       budget=_paper_budget),
    "fgsm": Attack(fgsm, "linf", "gradients", "one-step L-inf FGSM on the cross-entropy"),
    "pgd_linf": Attack(pgd, "linf", "gradients", "L-inf PGD on the margin loss, with restarts"),
    "pgd_l2": Attack(pgd, "l2", "gradients", "L2 PGD on the margin loss, with restarts"),
    "square": Attack(square, "threat", "queries",
                     "gradient-free random search on the margin (Square-attack style)"),
    "transfer": Attack(transfer, "threat", "surrogate",
                       "PGD crafted on a surrogate network, judged on the attacked one"),
    # adaptive attacks for the k-cap (Tramer et al. 2020 on k-winners-take-all)
    "bpda": Attack(bpda, "threat", "gradients",
                   "PGD on the margin through a straight-through (BPDA) surrogate of the cap",
                   budget=_bpda_budget),
    "es": Attack(es_margin, "threat", "queries",
                 "PGD along an antithetic ES estimate of the margin gradient (values only)",
                 budget=_es_budget),
    # reference implementations from IBM's adversarial-robustness-toolbox (art_attacks.py)
    "art_apgd_ce": Attack(_art("art_apgd"), "threat", "gradients",
                          "ART AutoPGD on the cross-entropy"),
    "art_apgd_dlr": Attack(_art("art_apgd_dlr"), "threat", "gradients",
                           "ART AutoPGD on the DLR loss (CE with 2 classes)"),
    "art_square": Attack(_art("art_square"), "threat", "queries", "ART Square attack (queries)"),
    "art_hsj": Attack(_art("art_hsj"), "threat", "queries",
                      "ART HopSkipJump, decision-based (labels only)"),
}
