"""Backprop baselines on the same batched networks (docs/paper.md 5.1 Fig. 2, 5.4 "GD, T=3").

``method="output"``: A fixed, W = 0, only the readout U is trained (from U = 0) by Adam on
cross-entropy. A and W are fixed, so each network's hidden codes h_T [n, V] are computed once and
the readout is trained on them: the same maths as running the network every step, much faster.

``method="full"``: W (on graph edges only: the forward pass uses W * graph) and U trained by
backprop through the T rounds, A fixed. The cap is differentiable in the kept values; which neurons
are kept is a constant. Initialisation (measured on MNIST, |V| = 1000, k = 500, T = 3, seed 0,
batch 100, 10k examples, 2k test): the reference code's uniform[-0.5, 0.5] (W and U) makes h grow
about 4.5x per round (rms h_T ~ 95 against rms h_1 ~ 4.6) and the initial logits have std ~ 1000,
so the loss starts in the thousands and learning stalls. We scale W like PyTorch's Linear default,
W[j, i] ~ U(-1/sqrt(fan_in_j), 1/sqrt(fan_in_j)) on graph edges, fan_in_j = in-degree of neuron j:
with half the neurons capped each round W h is then ~0.4x the scale of h (rms h_T ~ 5.0), neither
exploding nor vanishing. U starts at 0, as in the output-only baseline (so the two differ only in
training W), which also learned faster than U ~ U(-1/sqrt(V), 1/sqrt(V)) (91.4% vs 89.6% after 10k
examples). Adam's step (about lr per weight) is large next to weights of size <= 0.045: use lr =
1e-3 for ``method="full"`` (lr = 1e-2: 87.6%, lr = 3e-4: 89.2% in the same test). ``cfg.lr`` is
used as given.

All N networks train as one computation. The loss is the SUM over networks of each network's mean
cross-entropy, so every network gets its own unscaled gradient, and Adam's state is per weight, so
the batch of N is exactly N independent trainings. Each network has its own example order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from . import PlasticityError
from .config import BaselineConfig
from .experiment import run_networks, run_tensors
from .learning import evaluate, example_orders, progress_bar
from .network import Networks
from .seeding import torch_generator

METHODS = ("output", "full")


@dataclass
class BaselineResult:
    """Accuracy against examples seen and optimizer steps, for each of N networks (conventions
    of ``learning.TrainResult``), and the trained weights."""

    examples: list[int]  # curve x: examples seen at each evaluation (0, ..., total)
    updates_at: list[int]  # optimizer steps taken at each evaluation (Fig. 2's x-axis)
    curve: np.ndarray  # [points, N] test accuracy (on the first eval_examples) at each point
    test_accuracy: np.ndarray  # [N] final accuracy on the (n_test-limited) test set
    train_loss: np.ndarray  # [points, N] mean minibatch CE since the previous point (NaN at 0)
    W: torch.Tensor = field(repr=False)  # [N, V, V] final recurrent weights (0 off the graph)
    U: torch.Tensor = field(repr=False)  # [N, l, V] final output weights


def init_weights(nets: Networks, method: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial (W [N, V, V], U [N, l, V]) for ``method``: zeros for "output"; for "full" U = 0 and
    W the scaled uniform init of the module docstring, network i drawn from ("baseline-init", i).
    """
    if method not in METHODS:
        raise PlasticityError(f"unknown baseline method '{method}': use one of {METHODS}")
    W = torch.zeros_like(nets.graph)
    U = nets.A.new_zeros(nets.n, nets.n_classes, nets.neurons)
    if method == "output":
        return W, U
    graph = nets.graph.cpu()
    for i in range(nets.n):
        gen = torch_generator(seed, "baseline-init", i)
        fan_in = graph[i].sum(-1, keepdim=True).clamp(min=1)
        w = torch.rand(graph.shape[1:], generator=gen, dtype=torch.float64) * 2 - 1
        W[i] = (w / fan_in.sqrt() * graph[i]).to(W)
    return W, U


@torch.no_grad()
def hidden_codes(nets: Networks, W: torch.Tensor, x: torch.Tensor, budget: int = 1 << 24
                 ) -> torch.Tensor:
    """h_T of every network for every example, in chunks. x: [n, d] -> [N, n, V]."""
    N, V = nets.n, nets.neurons
    out = x.new_empty(N, x.shape[0], V)
    step = max(1, budget // (N * V))
    for s in range(0, x.shape[0], step):
        out[:, s:s + step] = nets.hidden(x[s:s + step].expand(N, -1, -1), W)[0]
    return out


class _Readout:
    """Output-only GD on precomputed hidden codes (W = 0 fixed). Holds N * (n_train + n_test) * V
    floats: 2.8 GB in float32 for 10 networks of |V| = 1000 on all of MNIST."""

    def __init__(self, nets: Networks, W, U, x_tr, x_te):
        if nets.recurrence == "code" and nets.T > 1:
            raise PlasticityError("method=output with recurrence=code and T>1: with W = 0 the "
                                  "code's W (h + Ax) is 0, so h_T = 0; use T=1 or recurrence=paper")
        self.W, self.U = W, U.clone().requires_grad_(True)
        self.H_tr, self.H_te = hidden_codes(nets, W, x_tr), hidden_codes(nets, W, x_te)
        self.rows = torch.arange(nets.n, device=x_tr.device).unsqueeze(1)

    def params(self) -> list[torch.Tensor]:
        return [self.U]

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: [N, B] training indices -> [N, B, l]."""
        return torch.bmm(self.H_tr[self.rows, idx], self.U.transpose(1, 2))

    @torch.no_grad()
    def accuracy(self, y: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Accuracy on the first len(y) test examples -> [N] (float64)."""
        correct = torch.zeros(self.U.shape[0], dtype=torch.float64, device=y.device)
        for s in range(0, y.shape[0], chunk):
            logits = torch.bmm(self.H_te[:, s:min(s + chunk, y.shape[0])], self.U.transpose(1, 2))
            correct += (logits.argmax(-1) == y[s:s + chunk]).sum(-1)
        return correct / max(y.shape[0], 1)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.W, self.U.detach()


class _Full:
    """Full GD: W (masked by the graph) and U by backprop through the T rounds."""

    def __init__(self, nets: Networks, W, U, x_tr, x_te):
        self.nets, self.x_tr, self.x_te = nets, x_tr, x_te
        self.W, self.U = W.clone().requires_grad_(True), U.clone().requires_grad_(True)

    def params(self) -> list[torch.Tensor]:
        return [self.W, self.U]

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        return self.nets.forward(self.x_tr[idx], self.W * self.nets.graph, self.U)[0]

    def accuracy(self, y: torch.Tensor) -> torch.Tensor:
        W, U = self.weights()
        return evaluate(self.nets, W, U, self.x_te[:y.shape[0]], y)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.W * self.nets.graph).detach(), self.U.detach()


def train_gd(nets: Networks, x_train, y_train, x_test, y_test, *, order: torch.Tensor,
             method: str = "output", W: torch.Tensor | None = None, U: torch.Tensor | None = None,
             batch: int = 1, lr: float = 1e-2, eval_every: int = 500, eval_examples: int = 1000,
             seed: int = 0, progress: bool = False) -> BaselineResult:
    """Train N networks by Adam on the example streams ``order`` [N, L], cut into consecutive
    minibatches of ``batch`` (the last may be smaller). Initial W, U default to
    ``init_weights(nets, method, seed)``. Curve points are the steps at which ``0, eval_every,
    2 eval_every, ...`` examples are first reached, and the end; so training does not depend on
    ``eval_every``. x_*: [n, d], y_*: [n]."""
    if method not in METHODS:
        raise PlasticityError(f"unknown baseline method '{method}': use one of {METHODS}")
    if W is None or U is None:
        W, U = init_weights(nets, method, seed)
    model = (_Readout if method == "output" else _Full)(nets, W, U, x_train, x_test)
    opt = torch.optim.Adam(model.params(), lr=lr, fused=True)  # one kernel per step: faster
    N, L = order.shape
    steps = -(-L // batch)
    marks = sorted({-(-m // batch) for m in range(0, L, eval_every)} | {steps})
    ye = y_test[:eval_examples]
    curve, losses = [model.accuracy(ye).cpu().numpy()], [np.full(N, np.nan)]
    bar = progress_bar(L, progress, "GD baseline")
    for a, b in itertools.pairwise(marks):
        total = torch.zeros(N, dtype=torch.float64, device=order.device)
        for s in range(a, b):
            idx = order[:, s * batch:(s + 1) * batch]
            logits = model.logits(idx)
            per_net = F.cross_entropy(logits.flatten(0, 1), y_train[idx].flatten(),
                                      reduction="none").view(idx.shape).mean(1)
            opt.zero_grad(set_to_none=True)
            per_net.sum().backward()
            opt.step()
            total += per_net.detach()
        losses.append((total / (b - a)).cpu().numpy())
        curve.append(model.accuracy(ye).cpu().numpy())
        if bar is not None:
            bar.update(min(b * batch, L) - min(a * batch, L))
    if bar is not None:
        bar.close()
    final = model.accuracy(y_test).cpu().numpy()
    W_out, U_out = model.weights()
    return BaselineResult([min(m * batch, L) for m in marks], marks, np.stack(curve), final,
                          np.stack(losses), W_out, U_out)


def train_baseline(cfg: BaselineConfig, data, *, device="cpu", progress: bool = False
                   ) -> BaselineResult:
    """GD baseline of ``cfg`` on ``data`` (a plasticity.data.Dataset): the networks of rule-based
    training for the same seed (key "networks"), orders from ("baseline-order"), ``passes``
    passes over the first ``n_train`` examples, final accuracy on the first ``n_test``."""
    x_tr, y_tr, x_te, y_te = run_tensors(cfg, data, device)
    nets = run_networks(cfg, data, cfg.networks, device)
    order = example_orders(cfg.networks, x_tr.shape[0], cfg.passes,
                           torch_generator(cfg.seed, "baseline-order"), device)
    return train_gd(nets, x_tr, y_tr, x_te, y_te, order=order, method=cfg.method,
                    batch=cfg.batch, lr=cfg.lr, eval_every=cfg.eval_every,
                    eval_examples=cfg.eval_examples, seed=cfg.seed, progress=progress)

