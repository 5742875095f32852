"""Rule-based learning (PAPER.md 2.2-2.3): fresh networks trained by a frozen rule, no autograd.

The inner loop is exact per-example learning, made fast by speculation: with the default scheme a
weight changes only on a mistake, so every network runs a chunk of its upcoming examples through
its *current* weights as one batched forward pass, finds its first mistake, applies that one update
and continues right after it. Examples before the first mistake needed only that forward pass, and
the mistake's own forward pass is the one its update uses, so the result is identical to the slow
one-example-at-a-time loop (``tests/reference.py`` checks this).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .network import Networks
from .rules import Rule
from .rules.tables import apply_delta, output_delta, rnn_delta


@dataclass
class TrainResult:
    """Accuracy against examples seen, for each of N networks, and the trained weights."""

    examples: list[int]  # curve x: examples seen at each evaluation
    curve: np.ndarray  # [points, N] test accuracy (on the eval subset) at each point
    test_accuracy: np.ndarray  # [N] final accuracy on the test set
    updates: np.ndarray  # [N] number of updates applied (mistakes, with the default scheme)
    W: torch.Tensor = field(repr=False)  # [N, V, V] final recurrent weights
    U: torch.Tensor = field(repr=False)  # [N, l, V] final output weights
    diverged: np.ndarray | None = None  # [N] bool: weights became non-finite (learning stopped)


@torch.no_grad()
def evaluate(nets: Networks, W: torch.Tensor, U: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             batch: int = 1000) -> torch.Tensor:
    """Accuracy of every network on the same examples. x: [n, d], y: [n] -> [N] (float64)."""
    correct = torch.zeros(nets.n, dtype=torch.float64, device=x.device)
    for s in range(0, x.shape[0], batch):
        xb = x[s:s + batch].unsqueeze(0).expand(nets.n, -1, -1)
        logits, _, _ = nets.forward(xb, W, U)
        correct += (logits.argmax(-1) == y[s:s + batch]).sum(-1)
    return correct / max(x.shape[0], 1)


class RuleLearner:
    """Applies a frozen rule to N networks, in place, one example (or one mistake) at a time."""

    def __init__(self, nets: Networks, rule: Rule, eta: float, chunk: int = 0):
        rule.check_network(nets.T)
        self.nets, self.rule, self.eta, self.chunk = nets, rule, eta, chunk
        dtype, device = nets.A.dtype, nets.A.device
        self.rnn_table, self.out_table = rule.tables(dtype=dtype, device=device)
        self.W, self.U = nets.fresh_weights(rule.mode)
        self.updates = torch.zeros(nets.n, dtype=torch.int64, device=device)
        self.diverged = torch.zeros(nets.n, dtype=torch.bool, device=device)
        self.seen = 0
        self.triggered = 0

    def _chunk_size(self) -> int:
        if self.rule.scheme.update_on == "all":
            return 1
        if self.chunk > 0:
            return self.chunk
        rate = (self.triggered + 1) / (self.seen + 2)  # smoothed update rate per example
        return int(min(512, max(2, round(1.0 / rate))))

    def _update(self, sel: torch.Tensor | None, hist, y, pred) -> None:
        """Apply one update, in place, to the networks ``sel`` (None = all) from their
        histories [S, V]. A partial update works on views of each selected network (no copy of
        the others' weights)."""
        nets, mode = self.nets, self.rule.mode
        scale = torch.full((hist.shape[0],), self.eta, dtype=self.W.dtype, device=hist.device)
        dU = output_delta(self.out_table, hist, y, pred, scale, nets.n_classes,
                          self.rule.scheme.output_rows)
        dW = None if self.rnn_table is None else rnn_delta(self.rnn_table, hist, scale)
        if sel is None:
            apply_delta(self.U, dU, mode, inplace=True)
            if dW is not None:
                apply_delta(self.W, dW, mode, mask=nets.graph, inplace=True)
            return
        for i, n in enumerate(sel.tolist()):
            apply_delta(self.U[n], dU[i], mode, inplace=True)
            if dW is not None:
                apply_delta(self.W[n], dW[i], mode, mask=nets.graph[n], inplace=True)

    @torch.no_grad()
    def learn(self, x: torch.Tensor, y: torch.Tensor, order: torch.Tensor) -> None:
        """Learn from examples ``order[n, :]`` (indices into x [n_ex, d], y [n_ex]) in sequence."""
        N, L = order.shape
        device = x.device
        pos = torch.where(self.diverged, L, 0)  # a diverged network learns nothing more
        all_nets = torch.arange(N, device=device)
        on_all = self.rule.scheme.update_on == "all"
        while True:
            active = all_nets[pos < L]
            if active.numel() == 0:
                break
            full = active.numel() == N
            C = self._chunk_size()
            offs = pos[active].unsqueeze(1) + torch.arange(C, device=device)
            valid = offs < L
            idx = order[active].gather(1, offs.clamp(max=L - 1))
            xb, yb = x[idx], y[idx]
            nets = self.nets if full else self.nets.select(active)
            W = self.W if full else self.W[active]
            U = self.U if full else self.U[active]
            logits, _, hist = nets.forward(xb, W, U)
            pred = logits.argmax(-1)
            trigger = valid if on_all else (pred != yb) & valid
            has = trigger.any(1)
            first = torch.where(has, trigger.to(torch.int8).argmax(1), valid.sum(1))
            consumed = first + has.to(torch.int64)
            pos[active] += consumed
            self.seen += int(consumed.sum())
            n_trig = int(has.sum())
            self.triggered += n_trig
            if n_trig == 0:
                continue
            rows = has.nonzero().squeeze(1)
            f = first[rows]
            sel = None if (full and n_trig == N) else active[rows]
            self._update(sel, hist[rows, f], yb[rows, f], pred[rows, f])
            self.updates[active[rows]] += 1

    def check_finite(self) -> torch.Tensor:
        """Mark networks whose weights hold NaN or inf as diverged (they stop learning); [N]."""
        bad = ~(self.U.flatten(1).isfinite().all(1) & self.W.flatten(1).isfinite().all(1))
        self.diverged |= bad
        return self.diverged


def example_orders(n_networks: int, n_examples: int, passes: int, gen: torch.Generator,
                   device="cpu") -> torch.Tensor:
    """Each network's example order: ``passes`` fresh permutations, [N, passes * n_examples]."""
    perms = [torch.randperm(n_examples, generator=gen) for _ in range(n_networks * passes)]
    return torch.stack(perms).view(n_networks, passes * n_examples).to(device)


def train_with_rule(
    nets: Networks,
    rule: Rule,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    order: torch.Tensor,
    eta: float = 0.01,
    eval_every: int = 500,
    eval_examples: int = 1000,
    chunk: int = 0,
    progress: bool = False,
) -> TrainResult:
    """Train fresh networks (W = U = 0, or 1 if multiplicative) with a frozen rule on the example
    stream ``order`` [N, L]; test accuracy every ``eval_every`` examples on the first
    ``eval_examples`` test examples, and at the end on the whole given test set."""
    learner = RuleLearner(nets, rule, eta, chunk)
    L = order.shape[1]
    xe, ye = x_test[:eval_examples], y_test[:eval_examples]
    marks = list(range(0, L, eval_every)) + [L]
    curve = []
    bar = progress_bar(L, progress, "rule-based training")
    for a, b in zip(marks[:-1], marks[1:]):
        curve.append(evaluate(nets, learner.W, learner.U, xe, ye).cpu().numpy())
        learner.learn(x_train, y_train, order[:, a:b])
        learner.check_finite()  # an exploding rule is contained at the next curve point
        if bar is not None:
            bar.update(b - a)
    if bar is not None:
        bar.close()
    curve.append(evaluate(nets, learner.W, learner.U, xe, ye).cpu().numpy())
    final = evaluate(nets, learner.W, learner.U, x_test, y_test).cpu().numpy()
    return TrainResult(marks, np.stack(curve), final, learner.updates.cpu().numpy(),
                       learner.W, learner.U, learner.diverged.cpu().numpy())


def progress_bar(total: int, enabled: bool, desc: str, unit: str = "ex"):
    """A tqdm bar on stderr, or None when progress is off (tqdm imported only when used)."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
