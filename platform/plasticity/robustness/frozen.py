"""The frozen network an attack sees, and the geometry every attack shares: the logit margin,
projection onto an eps ball, the image shape of an input (plasticity.robustness.attacks and
art_attacks build on it)."""

from __future__ import annotations

import math

import torch

from ..network import Networks


class FrozenNet:
    """Network ``index`` of ``nets`` with its trained weights frozen: x [B, d] -> logits [B, l]."""

    def __init__(self, nets: Networks, W: torch.Tensor, U: torch.Tensor, index: int = 0):
        self.nets = nets.select(slice(index, index + 1))
        self.W = W[index:index + 1].detach()
        self.U = U[index:index + 1].detach()

    @property
    def n_classes(self) -> int:
        return self.nets.n_classes

    def relaxed(self, relax: float) -> FrozenNet:
        """The same network (same forward values, same verdicts) whose gradient goes through a
        straight-through surrogate of the cap (``Networks.relax``, BPDA)."""
        import copy
        import dataclasses

        twin = copy.copy(self)  # the same class (and whatever it overrides)
        twin.nets = dataclasses.replace(self.nets, relax=relax)
        return twin

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable in x. x: [B, d] -> [B, l]."""
        return self.nets.forward(x.unsqueeze(0), self.W, self.U)[0][0]

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
        """Predicted classes [B]."""
        return torch.cat([self.logits(x[s:s + batch]).argmax(-1)
                          for s in range(0, x.shape[0], batch)])


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{j != y} z_j per row [B]: < 0 means misclassified (ties aside)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, lo, hi) -> torch.Tensor:
    """Project x_adv onto the ``norm`` ball of radius eps around x, then clip to [lo, hi].
    Clipping moves each coordinate towards x (x itself is in range), so the result stays in the
    ball."""
    d = x_adv - x
    if norm == "l2":
        n = d.norm(dim=1, keepdim=True)
        d = d * torch.clamp(eps / n.clamp_min(1e-12), max=1.0)
    else:
        d = d.clamp(-eps, eps)
    out = x + d
    return out if lo is None else out.clamp(lo, hi)


def image_side(d: int) -> tuple[int, int]:
    """(height, width) of an input: square images (MNIST 28 x 28), else a 1 x d strip."""
    h = math.isqrt(d)
    return (h, h) if h * h == d else (1, d)
