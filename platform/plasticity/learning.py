"""Rule-based learning (docs/paper.md 2.2-2.3): fresh networks trained by a frozen rule, no autograd.

The inner loop is exact per-example learning, made fast by speculation: with the default scheme a
weight changes only on a mistake, so every network runs a chunk of its upcoming examples through
its *current* weights as one batched forward pass, finds its first mistake, applies that one update
and continues right after it. Examples before the first mistake needed only that forward pass, and
the mistake's own forward pass is the one its update uses, so the result is identical to the slow
one-example-at-a-time loop (``tests/reference.py`` checks this).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch

from . import kernels
from .network import Networks
from .rules import Rule, Scheme
from .rules.tables import apply_delta, output_delta


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


# Speculative chunks: the cost of one chunk of C examples through a network, in units of the
# chunk's fixed cost (streaming the weights once per round 2..T), is 1 + BETA * C; an update of
# one network costs UPSILON. Measured by bench/device_costs.py on the 2-core Xeon (1 thread,
# |V| = 1000, T = 3): a = 0.43 ms, b = 0.05 ms per example, an update 0.61 ms. On CUDA the fixed
# cost is kernel launches and an example is nearly free (BETA small): a guess until
# bench/device_check.sh has measured it (its JSON holds the suggested constants).
CHUNK_COSTS = {"cpu": (0.12, 1.4), "cuda": (0.02, 1.0)}  # device type -> (BETA, UPSILON)
MAX_CHUNK = 512
SEGMENT = 256  # examples whose first round (independent of W) is computed in one batch
GROUP_BYTES = 16 * 2**20  # CPU: networks learned together while their weights fit in this
SEGMENT_BYTES = 2**30  # any device: at most this much memory for a group's round-1 segment


@functools.lru_cache(maxsize=4096)
def best_chunk(rate: float, beta: float, upsilon: float, every_network_pays: bool) -> int:
    """The chunk size C minimising the expected cost per consumed example at update rate ``rate``:
    (1 + beta C + upsilon P(update)) / E[consumed], with mistakes independent at ``rate``:
    a chunk consumes up to its first mistake, E = (1 - (1 - rate)^C) / rate, and updates with
    probability 1 - (1 - rate)^C (or always, ``every_network_pays``: a batch of networks whose
    update is one batched product over all of them)."""
    c = np.arange(1, MAX_CHUNK + 1, dtype=np.float64)
    miss = (1.0 - rate) ** c
    consumed = (1.0 - miss) / rate
    update = 1.0 if every_network_pays else 1.0 - miss
    cost = (1.0 + beta * c + upsilon * update) / consumed
    return int(c[int(np.argmin(cost))])


class RuleLearner:
    """Applies a frozen rule to N networks, in place, one example (or one mistake) at a time.

    Networks are learned in groups (all N on CUDA; on CPU as many as fit ``GROUP_BYTES``, so
    16 networks of |V| = 1000 stream each one's weights from cache as one network alone does);
    the networks of a group run as one batched computation. Every update is exact: the RNN rule's
    change dW[j, i] = eta * r[h_i, h_j] is the rank-2^T product (eta r^T)[h_post] @ onehot(h_pre)^T
    added into W by one GEMM (each output entry sums one non-zero product, so it equals the
    table entry exactly), then W is masked by the graph; updates of some of a group's networks
    are the same batched product with the others' rows zero (W + 0 = W). On a CPU in float32
    with 2^T <= 8 the same arithmetic runs as one compiled pass over W instead
    (:mod:`plasticity.kernels`, bit-identical, skipping the networks that do not update)."""

    def __init__(self, nets: Networks, rule: Rule | None, eta: float, chunk: int = 0,
                 group: int = 0, tables: tuple | None = None, mode: str | None = None,
                 scheme: Scheme | None = None):
        """``tables``: per-network rule tables ``(RNN [N, S, S] or None, output [N, S, 2])`` that
        replace ``rule``'s (which still gives T, the mode and the update scheme): N members of a
        population, or members x networks, learn as one batch, each by its own rule. Without a
        rule, ``tables``, ``mode`` and ``scheme`` give it all (the meta-learning unroll).

        ``record``: set it to a list and every update appends (the group's first network, its
        histories [n, V] uint8, the networks that updated [n] bool or None for all, y [n],
        pred [n]): the trajectory the meta-gradient needs (:class:`plasticity.meta._Unrolled`)."""
        if rule is not None:
            rule.check_network(nets.T)
        elif tables is None or mode is None or scheme is None:
            raise ValueError("RuleLearner without a rule needs tables, mode and scheme")
        self.mode = mode or rule.mode
        self.scheme = scheme or rule.scheme
        self.record: list | None = None
        self.nets, self.rule, self.eta, self.chunk = nets, rule, eta, chunk
        dtype, device = nets.A.dtype, nets.A.device
        if tables is None:
            self.rnn_table, self.out_table = rule.tables(dtype=dtype, device=device)
        else:
            self.rnn_table, self.out_table = check_tables(tables, nets, dtype, device)
        # every update scales the tables by eta: the products fl(table * eta), once
        eta_t = torch.tensor(eta, dtype=dtype, device=device)
        self._out_eta = self.out_table * eta_t  # [S, 2] (or [N, S, 2]: one per network)
        self._rnn_eta_t = None  # [S_post, S_pre] (or [N, ...]): (eta r)^T; multiplicative: 1 + eta r
        if self.rnn_table is not None:
            t = (self.rnn_table * eta_t).transpose(-1, -2).contiguous()
            self._rnn_eta_t = t.add(1.0) if self.mode == "multiplicative" else t
        # the compiled one-pass update where it runs (CPU float32, 2^T <= 8): padded tables and
        # a uint8 copy of the graph; elsewhere the torch form (plasticity.kernels)
        self._kernel_tables = self._graph8 = None
        if self._rnn_eta_t is not None and kernels.usable(nets.A, 2**nets.T):
            self._kernel_tables = kernels.pad_tables(self._rnn_eta_t)
            self._graph8 = nets.graph.to(torch.uint8).contiguous()
        self.W, self.U = nets.fresh_weights(self.mode)
        self.updates = torch.zeros(nets.n, dtype=torch.int64, device=device)
        self.diverged = torch.zeros(nets.n, dtype=torch.bool, device=device)
        self.seen = 0
        self.triggered = 0
        self._rows = torch.arange(nets.n, device=device)
        self._states = torch.arange(2**nets.T, device=device).view(1, -1, 1)
        # the same chunk sizes with and without the compiled update: the float32 forward's last
        # bits depend on the chunk size, so other sizes could flip a near-tie decision
        self.costs = CHUNK_COSTS.get(device.type, CHUNK_COSTS["cpu"])
        if group <= 0:
            per_net = nets.A.element_size() * nets.neurons * (2 * nets.neurons + nets.A.shape[2])
            group = nets.n if device.type == "cuda" else max(1, GROUP_BYTES // per_net)
            # and a group's round-1 segment (A x, h_1, histories) stays within SEGMENT_BYTES
            seg = SEGMENT * nets.neurons * (2 * nets.A.element_size() + 1)
            group = max(1, min(group, SEGMENT_BYTES // seg))
        self.group = group

    @property
    def compiled_update(self) -> bool:
        """Whether the recurrent updates run the compiled one-pass kernel (plasticity.kernels)."""
        return self._graph8 is not None

    def _chunk_size(self, n: int) -> int:
        if self.scheme.update_on == "all":
            return 1
        if self.chunk > 0:
            return self.chunk
        rate = (self.triggered + 1) / (self.seen + 2)  # smoothed update rate per example
        return best_chunk(float(f"{rate:.3g}"), *self.costs, n > 1)

    def _rows_of(self, table: torch.Tensor, g: slice, hist: torch.Tensor) -> torch.Tensor:
        """table[hist] [n, V, ...]: one shared table, or each network's own row of [N, S, ...]."""
        if table.dim() == 2:
            return table[hist]
        return table[g][self._rows[:hist.shape[0]].unsqueeze(1), hist]

    def _update(self, g: slice, hist8, y, pred, live: torch.Tensor | None) -> None:
        """Apply one update, in place, to the networks of group ``g`` from their histories
        [n, V] (uint8); ``live`` [n] (None = all): the networks that update; the others' rows of
        the batched change are zero, which leaves their weights exactly as they were."""
        mode, dtype = self.mode, self.W.dtype
        n = hist8.shape[0]
        if self.record is not None:
            self.record.append((g.start, hist8, live, y, pred))
        hist = hist8.to(torch.int64)
        rows = self._rows[:n]
        U = self.U[g]
        if mode == "additive" and self.scheme.output_rows == "label_pred":
            # the true-label row + eta r_o[h, 0], the wrongly predicted row + eta r_o[h, 1]: the
            # two rows output_delta changes, each by the same single product
            r = self._rows_of(self._out_eta, g, hist)  # [n, V, 2]
            if live is not None:
                r = r * live.view(n, 1, 1)
            U.index_put_((rows, y), r[..., 0], accumulate=True)
            wrong = pred != y
            U.index_put_((rows, pred), r[..., 1] * wrong.view(n, 1) if live is not None or
                         self.scheme.update_on == "all" else r[..., 1], accumulate=True)
        else:
            m = torch.ones(n, dtype=dtype, device=hist.device) if live is None else live.to(dtype)
            table = self._out_eta if self._out_eta.dim() == 2 else self._out_eta[g]
            dU = output_delta(table, hist, y, pred, m, self.nets.n_classes,
                              self.scheme.output_rows)
            apply_delta(U, dU, mode, inplace=True)
        if self._rnn_eta_t is None:
            return
        W = self.W[g]
        if self._graph8 is not None and W.is_contiguous():
            tables = self._kernel_tables if self._kernel_tables.dim() == 2 else \
                self._kernel_tables[g]
            kernels.rule_update(W, self._graph8[g], tables, hist8.contiguous(),
                                None if live is None else live.to(torch.uint8),
                                mode == "multiplicative")
            return
        P = self._rows_of(self._rnn_eta_t, g, hist)  # [n, V_post, S_pre]
        Q = (hist.unsqueeze(1) == self._states).to(dtype)  # [n, S_pre, V_pre] one-hot
        if mode == "additive":
            if live is not None:
                P = P * live.view(n, 1, 1)
            W.baddbmm_(P, Q)  # W[j, i] + eta r[h_i, h_j]
            W.mul_(self.nets.graph[g])
        else:
            if live is not None:
                P = torch.where(live.view(n, 1, 1), P, 1.0)
            W.mul_(torch.bmm(P, Q))  # W[j, i] * (1 + eta r[h_i, h_j]); 0 off the graph stays 0

    @torch.no_grad()
    def learn(self, x: torch.Tensor, y: torch.Tensor, order: torch.Tensor) -> None:
        """Learn from examples ``order[n, :]`` (indices into x [n_ex, d], y [n_ex]) in sequence."""
        N = order.shape[0]
        for a in range(0, N, self.group):
            g = slice(a, min(N, a + self.group))
            for s in range(0, order.shape[1], SEGMENT):
                self._learn_segment(g, x, y, order[g, s:s + SEGMENT])

    def _learn_segment(self, g: slice, x, y, order) -> None:
        """One group of networks learns one segment of its streams: round 1 of every example at
        once, then speculative chunks through rounds 2..T and the output."""
        n, L = order.shape
        device = x.device
        nets = self.nets.select(g)
        W, U = self.W[g], self.U[g]
        pos = torch.where(self.diverged[g], L, 0)  # a diverged network learns nothing more
        if bool((pos >= L).all()):
            return
        ys = y[order]
        ax, h1, bits1 = nets.first_round(x[order])  # [n, L, V]
        scheme = self.scheme
        on_all = scheme.update_on == "all"
        if n == 1:
            self._learn_one(g, nets, W, U, ax, h1, bits1, ys, on_all)
            return
        rows_n = self._rows[:n]
        while True:
            C = self._chunk_size(n)
            offs = pos.unsqueeze(1) + torch.arange(C, device=device)
            valid = offs < L
            offs = offs.clamp_(max=L - 1)
            sel = (rows_n.unsqueeze(1), offs)
            h, bits = nets.later_rounds(ax[sel], h1[sel], bits1[sel], W)
            logits = torch.bmm(h, U.transpose(1, 2))
            yb = ys[sel]
            if on_all:
                pred, trigger = logits.argmax(-1), valid
            else:  # a mistake (or, under a margin scheme, a small margin); pred: the row it changes
                trigger, pred = scheme.triggers(logits, yb)
                trigger &= valid
            has = trigger.any(1)
            first = torch.where(has, trigger.to(torch.int8).argmax(1), valid.sum(1))
            consumed = first + has.to(torch.int64)
            pos += consumed
            n_trig, n_seen, n_left = torch.stack([has.sum(), consumed.sum(),
                                                  (pos < L).sum()]).tolist()
            self.seen += n_seen
            self.triggered += n_trig
            if n_trig:
                at = (rows_n, first.clamp(max=C - 1))
                self._update(g, bits[at], yb[at], pred[at],
                             None if n_trig == n else has)
                self.updates[g] += has
            if n_left == 0:
                break

    def _learn_one(self, g: slice, nets, W, U, ax, h1, bits1, ys, on_all: bool) -> None:
        """``_learn_segment`` for one network: chunks are slices (no gathers)."""
        L = ys.shape[1]
        p = 0
        ut = U.transpose(1, 2)
        while p < L:
            C = min(self._chunk_size(1), L - p)
            h, bits = nets.later_rounds(ax[:, p:p + C], h1[:, p:p + C], bits1[:, p:p + C], W)
            logits = torch.bmm(h, ut)[0]
            if on_all:
                f, pred = 0, logits.argmax(-1)
            else:
                trigger, pred = self.scheme.triggers(logits, ys[0, p:p + C])
                wrong = trigger.nonzero()
                if wrong.numel() == 0:
                    p += C
                    self.seen += C
                    continue
                f = int(wrong[0, 0])
            p += f + 1
            self.seen += f + 1
            self.triggered += 1
            self._update(g, bits[:, f], ys[:, p - 1], pred[f:f + 1], None)
            self.updates[g] += 1

    def check_finite(self) -> torch.Tensor:
        """Mark networks whose weights hold NaN or inf as diverged (they stop learning); [N]."""
        bad = ~(self.U.flatten(1).isfinite().all(1) & self.W.flatten(1).isfinite().all(1))
        self.diverged |= bad
        return self.diverged


def check_tables(tables: tuple, nets: Networks, dtype, device) -> tuple:
    """Per-network tables ``(RNN [N, S, S] or None, output [N, S, 2])`` for ``nets``, on its
    device and dtype; a wrong shape is a ValueError naming it."""
    rnn, out = tables
    S, N = 2**nets.T, nets.n
    if tuple(out.shape) != (N, S, 2):
        raise ValueError(f"output tables {tuple(out.shape)}: expected {(N, S, 2)}")
    if rnn is not None and tuple(rnn.shape) != (N, S, S):
        raise ValueError(f"RNN tables {tuple(rnn.shape)}: expected {(N, S, S)}")
    move = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return move(rnn), move(out)


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
