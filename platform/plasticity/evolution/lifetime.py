"""The lifetime objective: what a rule does over a whole lifetime, not after one short episode.

A member (coefficient vector c of the rule space, as in ``evaluate.RuleSpace``) is scored by
fresh networks (W = U = 0, or 1 if multiplicative) that learn ``lifetime_examples`` (L) training
examples with its rule by rule-based learning (no autograd), then by the cross-entropy and the
accuracy of those networks on ``validation`` held-out examples, averaged over
``lifetime_networks`` (M) networks, each with its own example order. The loss the strategies
minimise is ``lifetime_loss``: ``error`` (1 - validation accuracy, the default: scale-free) or
``ce``. Rule-trained networks' logits grow with every update (a perceptron-like rule has no
reason to stop), so their CE measures the logit scale as much as the mistakes: measured, the GD
start of a T=3 rule on ReLU1 at |V|=400 has a validation CE of 19,000 at 54% accuracy. No L2
term: the score is the lifetime's alone (GD keeps Adam's weight decay as its own regulariser).

Held out: the validation examples are the LAST ``validation`` examples of the training set
(after ``n_train``); the lifetimes learn from the examples before them; the test set is never
read. Common random numbers: generation g draws its M networks from ``(seed, "lifetime", g, m)``
and its M orders from ``(seed, "lifetime-orders", g)``; every member of generation g sees them
(and the same validation examples), a new generation draws new ones, and nothing depends on
which actor evaluates which member.

One batched computation per chunk: members x networks are N = n * M networks (member-major),
each learning by its member's tables (``RuleLearner(..., tables=...)``), in blocks of at most
``MAX_NETWORKS`` networks.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .. import PlasticityError
from ..learning import RuleLearner
from ..network import Networks, make_networks
from ..seeding import torch_generator
from .evaluate import PopulationEvaluator, RuleSpace

MAX_NETWORKS = 64  # networks per batched lifetime (|V| = 1000: 64 x 4 MB of W)


def lifetime_split(cfg, n_train: int) -> tuple[int, int]:
    """(examples the lifetimes learn from, validation examples) of a training set of n_train;
    a validation set as large as the pool is a one-line error."""
    n = cfg.n_train or n_train
    if cfg.validation >= n:
        raise PlasticityError(f"validation={cfg.validation} leaves no training examples of the "
                              f"{n} available: lower validation (or raise n_train)")
    return n - cfg.validation, cfg.validation


class LifetimeEvaluator:
    """Lifetime scores of rules (validation error or CE, accuracy, CE), on one device."""

    def __init__(self, cfg, data, device="cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        self.meta = cfg.meta_config()
        self.dtype = getattr(torch, cfg.dtype)
        self.space = RuleSpace(self.meta)
        pool, n_val = lifetime_split(cfg, data.x_train.shape[0])
        self.pool = pool
        x = data.x_train[:pool + n_val].to(self.device, self.dtype)
        y = data.y_train[:pool + n_val].to(self.device)
        self.x, self.y = x[:pool], y[:pool]
        self.xv, self.yv = x[pool:], y[pool:]
        self.dim, self.n_classes = data.dim, data.n_classes
        self.rule = self.space.rule(self.space.initial(), {})  # T, mode and scheme of the space
        self.scheme = self.meta.scheme()

    def networks(self, generation: int) -> Networks:
        """Generation ``generation``'s M networks (the same for every member)."""
        c = self.cfg
        return make_networks(c.lifetime_networks, self.dim, self.n_classes, neurons=c.neurons,
                             k=c.k, p=c.p, T=c.T, seed=c.seed, recurrence=c.recurrence,
                             firing=c.firing, input_weights=c.input_weights, dtype=self.dtype,
                             device=self.device, key=f"lifetime/{generation}")

    def orders(self, generation: int) -> torch.Tensor:
        """[M, L] example indices into the pool: fresh permutations, concatenated past one pass."""
        gen = torch_generator(self.cfg.seed, "lifetime-orders", generation)
        L, out = self.cfg.lifetime_examples, []
        for _ in range(self.cfg.lifetime_networks):
            perm = torch.cat([torch.randperm(self.pool, generator=gen)
                              for _ in range(-(-L // self.pool))])
            out.append(perm[:L])
        return torch.stack(out).to(self.device)

    def scores(self, coeffs: np.ndarray, generation: int) -> np.ndarray:
        """[n, 3]: (loss, validation accuracy, validation CE) per member; the loss is
        ``lifetime_loss``: error = 1 - accuracy (default) or ce."""
        c = torch.as_tensor(np.asarray(coeffs, dtype=np.float64), dtype=self.dtype,
                            device=self.device)
        nets, order = self.networks(generation), self.orders(generation)
        M = nets.n
        block = max(1, MAX_NETWORKS // M)
        out = []
        for s in range(0, c.shape[0], block):
            out.append(self._block(c[s:s + block], nets, order))
        acc, ce = torch.cat(out).to(torch.float64).cpu().numpy().T
        loss = np.where(np.isfinite(ce), 1.0 - acc, np.inf) if self.cfg.lifetime_loss == "error" \
            else ce
        return np.stack([loss, acc, ce], 1)

    @torch.no_grad()
    def _block(self, c: torch.Tensor, nets: Networks, order: torch.Tensor) -> torch.Tensor:
        n, M = c.shape[0], nets.n
        rnn, out = self.space.tables(c)
        tables = (None if rnn is None else rnn.repeat_interleave(M, 0), out.repeat_interleave(M, 0))
        big = dataclasses.replace(nets, A=nets.A.repeat(n, 1, 1), graph=nets.graph.repeat(n, 1, 1))
        learner = RuleLearner(big, self.rule, self.cfg.eta, tables=tables)
        learner.learn(self.x, self.y, order.repeat(n, 1))
        learner.check_finite()
        ce = torch.zeros(n * M, dtype=torch.float64, device=self.device)
        correct = torch.zeros_like(ce)
        for s in range(0, self.xv.shape[0], 500):
            xb = self.xv[s:s + 500].unsqueeze(0).expand(n * M, -1, -1)
            yb = self.yv[s:s + 500]
            logits, _, _ = big.forward(xb, learner.W, learner.U)
            logp = torch.log_softmax(logits.to(torch.float64), -1)
            ce -= logp.gather(-1, yb.view(1, -1, 1).expand(n * M, -1, 1)).squeeze(-1).sum(-1)
            correct += (logits.argmax(-1) == yb).sum(-1)
        ce, acc = ce / self.xv.shape[0], correct / self.xv.shape[0]
        ce = torch.where(learner.diverged | ~torch.isfinite(ce), torch.inf, ce)
        return torch.stack([acc.view(n, M).mean(1), ce.view(n, M).mean(1)], 1)

    def losses(self, coeffs: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """The pool interface: ``idx`` = [generation] -> [n, 3] (loss, accuracy, CE)."""
        return self.scores(coeffs, int(np.asarray(idx).reshape(-1)[0]))


def evaluator_for(cfg, data, device="cpu"):
    """The evaluator of ``cfg``'s objective: LifetimeEvaluator for an EvolutionConfig with
    ``objective=lifetime``, else the episodes objective's PopulationEvaluator (of its MetaConfig)."""
    if getattr(cfg, "objective", "episodes") == "lifetime":
        return LifetimeEvaluator(cfg, data, device)
    return PopulationEvaluator(cfg.meta_config() if hasattr(cfg, "meta_config") else cfg, data,
                               device)
