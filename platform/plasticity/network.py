"""The paper's "simple RNN" (docs/paper.md 1.1), batched over a leading dimension of networks.

A batch holds ``N`` independent networks, each with its own random graph, input weights and
(plastic) recurrent and output weights, so a population of rules or a batch of meta-learning
episodes is one tensor computation.

Shapes: ``N`` networks, ``B`` examples per network, ``V`` neurons, ``d`` input dims, ``l`` classes.
Conventions (docs/paper.md 1.3): ``W[n, j, i]`` is the weight of the edge from presynaptic ``i`` to
postsynaptic ``j``; ``U[n, c, i]`` is the weight from hidden neuron ``i`` to output ``c``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from . import PlasticityError
from .seeding import torch_generator

RECURRENCES = ("paper", "code")
FIRINGS = ("positive", "topk")
INPUT_WEIGHTS = ("normal", "ones")


def cap(z: torch.Tensor, k: int) -> torch.Tensor:
    """k-cap: keep the k largest entries of the last dimension, zero the rest. [..., V] -> [..., V].

    Gradients flow through the kept values only; which entries are kept is a constant.
    """
    if k >= z.shape[-1]:
        return z
    values, idx = torch.topk(z, k, dim=-1, sorted=False)
    return torch.zeros_like(z).scatter_(-1, idx, values)


def topk_mask(r: torch.Tensor, k: int) -> torch.Tensor:
    """The cap's kept set as a 0/1 mask with ties broken by index: exactly k entries of the last
    dimension, the largest values, and among equal values the lowest indices. [..., V] -> bool.

    ``torch.topk`` leaves ties unspecified (on CPU an all-zero row of 1,000 keeps indices
    500-999, a mixed row an implementation-dependent subset of its zeros), so the kept set is
    built explicitly: every entry above the k-th largest value, then the tied entries in index
    order until k are kept. The same on every device.
    """
    V = r.shape[-1]
    if k >= V:
        return torch.ones_like(r, dtype=torch.bool)
    kth = torch.topk(r, k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
    above = r > kth
    tied = r == kth
    room = k - above.sum(-1, keepdim=True)
    return above | (tied & (tied.cumsum(-1) <= room))


@dataclass
class Networks:
    """The fixed (non-plastic) part of N simple RNNs: input weights, graph and the dynamics.

    ``A``: [N, V, d] input weights, already multiplied by the input mask.
    ``graph``: [N, V, V] 0/1 mask of the directed graph (no self-loops), row = post, col = pre.
    """

    A: torch.Tensor
    graph: torch.Tensor
    k: int
    T: int
    n_classes: int
    recurrence: str = "paper"
    firing: str = "positive"
    # > 0: a straight-through surrogate gradient for the cap (BPDA, attacks only; the forward is
    # unchanged): see :meth:`_fire`. 0: the exact gradient (through the kept units only)
    relax: float = 0.0

    @property
    def n(self) -> int:
        return self.A.shape[0]

    @property
    def neurons(self) -> int:
        return self.A.shape[1]

    def fresh_weights(self, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Plastic weights at the start of rule-based learning: W, U = 0 (additive) or 1 (mult.).

        Returns W [N, V, V] (zero off the graph) and U [N, l, V].
        """
        N, V = self.n, self.neurons
        if mode == "additive":
            W = torch.zeros_like(self.graph)
            U = self.A.new_zeros(N, self.n_classes, V)
        elif mode == "multiplicative":
            W = self.graph.clone()
            U = self.A.new_ones(N, self.n_classes, V)
        else:
            raise PlasticityError(f"unknown rule mode '{mode}': use additive or multiplicative")
        return W, U

    def select(self, index: torch.Tensor | slice) -> Networks:
        """The sub-batch of networks at ``index``."""
        return dataclasses.replace(self, A=self.A[index], graph=self.graph[index])

    def hidden(self, x: torch.Tensor, W: torch.Tensor, trace: list | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run T rounds. x: [N, B, d], W: [N, V, V] -> (h_T [N, B, V], histories [N, B, V] int64).
        ``trace`` (a list), if given, receives (h_t, A x) of every round t = 1..T.

        Round 1: h = cap(ReLU(A x)); then h <- cap(ReLU(W h + A x)) (``recurrence="paper"``) or
        cap(ReLU(W (h + A x))) (``"code"``, the reference code's form). With
        ``firing="positive"`` a neuron fires in a round when it is kept by the cap and its value
        is > 0; with ``"topk"`` (the reference code) when it is kept by the cap, even at value 0
        (ties broken by index, :func:`topk_mask`), so exactly k neurons fire every round. The
        values h are the same under both; only the histories differ. Histories are T-bit codes
        with the first round as the most significant bit.

        The same computation as :meth:`first_round` then :meth:`later_rounds` (rule-based
        learning calls them apart: round 1 does not depend on W).
        """
        ax, h, bits = self.first_round(x, trace)
        h, bits = self.later_rounds(ax, h, bits, W, trace)
        return h, bits.to(torch.int64)

    def _fire(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ReLU and the cap of one round: (h, fired) from the pre-activation z.

        With ``relax`` > 0 the values are the same, but the gradient is that of the smooth
        z * sigmoid((z - theta) / (relax * s)), theta midway between the k-th and (k+1)-th
        largest ReLU(z) of the row and s the row's std of z: units just outside the cap, or
        below 0, get a gradient (a straight-through / BPDA surrogate, Athalye et al. 2018, for
        attacks that must see past the cap's selection)."""
        r = torch.relu(z)
        if self.firing == "topk":
            kept = topk_mask(r, self.k)
            h = r * kept
        else:
            h = cap(r, self.k)
            kept = h > 0
        if self.relax > 0:
            with torch.no_grad():
                top = torch.topk(r, min(self.k + 1, r.shape[-1]), dim=-1).values
                theta = top[..., -2:].mean(-1, keepdim=True) if self.k < r.shape[-1] else \
                    top[..., -1:] - 1.0
                s = z.std(-1, keepdim=True).clamp_min(1e-12) * self.relax
            soft = z * torch.sigmoid((z - theta) / s)
            h = h + (soft - soft.detach())
        return h, kept

    def first_round(self, x: torch.Tensor, trace: list | None = None):
        """Round 1, which does not depend on W: x [N, B, d] -> (A x, h_1, histories so far as
        uint8 [N, B, V])."""
        ax = torch.matmul(x, self.A.transpose(1, 2))
        h, fired = self._fire(ax)
        if trace is not None:
            trace.append((h, ax))
        return ax, h, fired.to(torch.uint8)

    def later_rounds(self, ax: torch.Tensor, h: torch.Tensor, bits: torch.Tensor, W: torch.Tensor,
                     trace: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rounds 2..T from :meth:`first_round`'s output -> (h_T, histories uint8 [N, B, V])."""
        if self.T == 1:
            return h, bits
        wt = W.transpose(1, 2)
        for _ in range(1, self.T):
            if self.recurrence == "paper":
                z = torch.baddbmm(ax, h, wt)
            else:
                z = torch.bmm(h + ax, wt)
            h, fired = self._fire(z)
            if trace is not None:
                trace.append((h, ax))
            bits = torch.add(fired, bits, alpha=2)  # 2 * bits + fired, in uint8 (T <= 8)
        return h, bits

    def forward(self, x: torch.Tensor, W: torch.Tensor, U: torch.Tensor):
        """x: [N, B, d] -> (logits [N, B, l], h_T [N, B, V], histories [N, B, V])."""
        h, hist = self.hidden(x, W)
        return torch.bmm(h, U.transpose(1, 2)), h, hist


def make_networks(
    n: int,
    dim: int,
    n_classes: int,
    *,
    neurons: int,
    k: int,
    p: float,
    T: int,
    seed: int,
    recurrence: str = "paper",
    firing: str = "positive",
    input_weights: str = "normal",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    key: object = "networks",
) -> Networks:
    """Draw N independent networks (docs/paper.md 1.1): graph and input masks Bernoulli(p), no
    self-loops, input weights A ~ N(0, 1) (or all ones) times the input mask.

    Network ``i`` is drawn from ``derive_seed(seed, key, i)``, so it does not depend on ``n``.
    """
    check_network_shape(neurons=neurons, k=k, p=p, T=T)
    if recurrence not in RECURRENCES:
        raise PlasticityError(f"unknown recurrence '{recurrence}': use one of {RECURRENCES}")
    if firing not in FIRINGS:
        raise PlasticityError(f"unknown firing '{firing}': use one of {FIRINGS}")
    if input_weights not in INPUT_WEIGHTS:
        raise PlasticityError(f"unknown input_weights '{input_weights}': use {INPUT_WEIGHTS}")
    As, graphs = [], []
    eye = torch.eye(neurons, dtype=torch.bool)
    for i in range(n):
        gen = torch_generator(seed, key, i)
        in_mask = torch.rand(neurons, dim, generator=gen) < p
        graph = (torch.rand(neurons, neurons, generator=gen) < p) & ~eye
        a = torch.randn(neurons, dim, generator=gen, dtype=torch.float64)
        if input_weights == "ones":
            a = torch.ones_like(a)
        As.append(a * in_mask)
        graphs.append(graph)
    A = torch.stack(As).to(device=device, dtype=dtype)
    G = torch.stack(graphs).to(device=device, dtype=dtype)
    return Networks(A, G, k, T, n_classes, recurrence, firing)


def check_network_shape(*, neurons: int, k: int, p: float, T: int) -> None:
    """Refuse impossible network shapes with a one-line PlasticityError."""
    if neurons < 1:
        raise PlasticityError(f"neurons must be >= 1, got {neurons}")
    if not 1 <= k <= neurons:
        raise PlasticityError(f"cap k={k} must lie in [1, neurons={neurons}]: lower k")
    if not 0.0 < p <= 1.0:
        raise PlasticityError(f"edge probability p={p} must lie in (0, 1]")
    if T < 1:
        raise PlasticityError(f"rounds T={T} must be >= 1")
    if T > 8:
        raise PlasticityError(f"rounds T={T} is too large: a rule table has 4^T entries; use T <= 8")


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction correct per network. logits: [N, B, l], y: [N, B] or [B] -> [N]."""
    return (logits.argmax(-1) == y).to(torch.float64).mean(-1)
