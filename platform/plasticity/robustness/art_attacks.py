"""Reference attacks from IBM's adversarial-robustness-toolbox (ART) on the same frozen networks.

ART is a well-kept implementation of the attacks the literature uses to audit defences, so our
own attacks are cross-checked against it on the same networks and images (the robustness issue:
"their curves go in the report beside ours and into the worst case"):

- ``art_apgd_ce`` / ``art_apgd_dlr``: AutoPGD (Croce & Hein 2020) on the cross-entropy and on the
  difference-of-logits-ratio loss (DLR needs >= 3 classes; with 2 it falls back to CE, said in
  the result's budget line);
- ``art_square``: the Square attack (Andriushchenko et al. 2020), gradient-free (queries);
- ``art_hsj``: HopSkipJump (Chen et al. 2020), decision-based: it sees only predicted labels.

The frozen network is wrapped as a ``torch.nn.Module`` whose input is image-shaped
[B, 1, h, w] (Square needs images; a non-square input d is a 1 x d strip) and flattened before
the engine's own forward pass, so ART differentiates exactly what our gradient attacks do.
HopSkipJump minimises the distance rather than staying in a ball: its points beyond eps are
projected onto the ball and re-judged, so what it returns is a valid example at eps or not broken.
Every returned point is re-checked by the frozen network's own forward pass (``broken``). ART
draws from NumPy's global generator: it is seeded from ``gen`` before each run.
"""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import torch

from .frozen import FrozenNet, image_side, project

log = logging.getLogger(__name__)
for _name in ("art", "art.attacks", "art.estimators"):
    logging.getLogger(_name).setLevel(logging.ERROR)


# ART's HopSkipJump halves its step size until a step stays adversarial (``while not
# success``), with no bound: where no step does (seen on a T=1* Fashion-MNIST network, stuck
# for 30 min), it queries one point at a time for ever. A run of this many one-point queries
# cannot happen in a terminating HSJ here (its binary searches take ~20, its initial search at
# most ``init_size`` = 100, the halving underflows to 0 after ~1,075) and marks it stuck. Over a
# batch the count runs on across examples, so ~40 examples in a row whose initial search fails
# also reach it: harmless, the one-at-a-time rerun then finds none stuck.
STUCK_QUERIES = 5000


class Stuck(RuntimeError):
    """An ART attack made STUCK_QUERIES one-point queries in a row."""


class _Flat(torch.nn.Module):
    """[B, 1, h, w] -> the frozen network's logits [B, l]; counts one-point queries in a row."""

    def __init__(self, model: FrozenNet):
        super().__init__()
        self.model = model
        self.singles = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.singles = self.singles + 1 if x.shape[0] == 1 else 0
        if self.singles > STUCK_QUERIES:
            raise Stuck(f"{STUCK_QUERIES} one-point queries in a row")
        return self.model.logits(x.reshape(x.shape[0], -1).to(self.model.nets.A.dtype))


def _classifier(model: FrozenNet, x: torch.Tensor, eps: float, lo, hi):
    from art.estimators.classification import PyTorchClassifier

    h, w = image_side(x.shape[1])
    # unbounded inputs (synthetic sets): a box every point of the eps ball lies in, so ART's
    # clipping never binds
    clip = (float(lo), float(hi)) if lo is not None else (float(x.min()) - eps, float(x.max()) + eps)
    return PyTorchClassifier(model=_Flat(model), loss=torch.nn.CrossEntropyLoss(),
                             input_shape=(1, h, w), nb_classes=model.n_classes, clip_values=clip,
                             device_type="gpu" if x.is_cuda else "cpu"), (1, h, w)


def _generate(make_attack, model: FrozenNet, x, y, eps: float, norm: str, seed: int, lo, hi):
    clf, shape = _classifier(model, x, eps, lo, hi)
    attack = make_attack(clf, np.inf if norm == "linf" else 2)
    np.random.seed(seed)
    xs = x.detach().cpu().numpy().astype(np.float32).reshape(-1, *shape)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        adv = attack.generate(x=xs, y=y.cpu().numpy())
    return torch.from_numpy(np.asarray(adv, dtype=np.float32)).reshape(x.shape).to(x)


def _run(make_attack, model: FrozenNet, x, y, eps: float, norm: str, gen, lo, hi):
    """Build the ART attack on the wrapped network, run it, project onto the ball, re-judge.
    If the attack gets stuck (:class:`Stuck`), it runs again one example at a time (each seeded
    from the first seed and its index) and a stuck example keeps its clean point: not broken by
    this attack (the worst case still takes every other attack's)."""
    seed = 0 if gen is None else int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    try:
        x_adv = _generate(make_attack, model, x, y, eps, norm, seed, lo, hi)
    except Stuck:
        rows, stuck = [], 0
        for i in range(x.shape[0]):
            try:
                rows.append(_generate(make_attack, model, x[i:i + 1], y[i:i + 1], eps, norm,
                                      (seed + 7919 * (i + 1)) % 2**31, lo, hi))
            except Stuck:
                rows.append(x[i:i + 1])
                stuck += 1
        log.warning("ART attack made %d one-point queries in a row at eps %g: rerun one example "
                    "at a time, stuck on %d of %d examples (counted as not broken by it)",
                    STUCK_QUERIES, eps, stuck, x.shape[0])
        x_adv = torch.cat(rows)
    x_adv = project(x_adv, x, eps, norm, lo, hi)  # HSJ's far points; float32 rounding for all
    return x_adv, model.predict(x_adv) != y


def art_apgd(model: FrozenNet, x, y, eps: float, *, norm: str = "l2", steps: int = 50,
             restarts: int = 3, loss: str = "cross_entropy", gen=None, lo=0.0, hi=1.0, **_):
    """ART's AutoPGD, untargeted, ``steps`` iterations, ``restarts`` random starts."""
    from art.attacks.evasion import AutoProjectedGradientDescent

    loss = "cross_entropy" if model.n_classes < 3 else loss  # DLR is defined for >= 3 classes
    return _run(lambda clf, n: AutoProjectedGradientDescent(
        clf, norm=n, eps=eps, eps_step=2 * eps / max(steps, 1), max_iter=steps, targeted=False,
        nb_random_init=max(1, restarts), batch_size=max(1, x.shape[0]), loss_type=loss,
        verbose=False), model, x, y, eps, norm, gen, lo, hi)


def art_apgd_dlr(model: FrozenNet, x, y, eps: float, **kw):
    """AutoPGD on the DLR loss (scale-free in the logits, so large logits do not hide it)."""
    return art_apgd(model, x, y, eps, **{**kw, "loss": "difference_logits_ratio"})


def art_square(model: FrozenNet, x, y, eps: float, *, norm: str = "l2", queries: int = 1000,
               gen=None, lo=0.0, hi=1.0, **_):
    """ART's Square attack, ``queries`` iterations (one query each), one restart."""
    from art.attacks.evasion import SquareAttack

    return _run(lambda clf, n: SquareAttack(clf, norm=n, eps=eps, max_iter=queries, nb_restarts=1,
                                            batch_size=max(1, x.shape[0]), verbose=False),
                model, x, y, eps, norm, gen, lo, hi)


def art_hsj(model: FrozenNet, x, y, eps: float, *, norm: str = "l2", queries: int = 1000,
            gen=None, lo=0.0, hi=1.0, **_):
    """ART's HopSkipJump (labels only): ``queries`` // 100 iterations (at least 1, 10 at the
    default 1,000) of at most ``queries`` gradient-estimate evaluations each. ART runs it one
    example at a time, so it is the slowest attack of the suite."""
    from art.attacks.evasion import HopSkipJump

    return _run(lambda clf, n: HopSkipJump(clf, batch_size=max(1, x.shape[0]), targeted=False,
                                           norm=n, max_iter=max(1, queries // 100),
                                           max_eval=queries, init_eval=min(100, queries),
                                           init_size=min(100, queries), verbose=False),
                model, x, y, eps, norm, gen, lo, hi)
