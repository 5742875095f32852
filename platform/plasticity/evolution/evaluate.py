"""A population's losses through the core engine: the meta-learning loss of every member's rule.

A member is a coefficient vector c [P] of the rule space (the trainable tables of
``MetaConfig``/``RuleParams``, flattened: output table, then RNN table). Its loss is exactly what
meta-learning GD minimises at the same step: ``meta.episode_loss`` of fresh networks learning E
episodes of B examples, plus ``weight_decay / 2 * ||c||^2``.

Common random numbers: every member of generation g is evaluated on the same E networks (the
meta-learning networks, ``key="meta-networks"``) and the same [E, B] example batch (GD's batch g,
from ``meta.episode_batches``). Differences between members are then differences between rules,
not between networks or examples drawn, which lowers selection noise; and nothing depends on
which actor evaluates which member. A chunk of n members is ONE batched computation over n x E
networks (member-major), in blocks of at most ``MAX_NETWORKS`` networks to bound memory (results
do not depend on the block size: every network's arithmetic is independent of the others').
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..config import MetaConfig
from ..experiment import run_networks, run_tensors
from ..meta import RuleParams, episode_batches, episode_loss
from ..network import Networks
from ..rules import LayerRule, Rule
from ..rules.classic import perceptron
from ..rules.tables import table_shape

MAX_NETWORKS = 2048  # networks per batched pass (member x episode)


class RuleSpace:
    """Coefficient vectors [P] <-> rule tables, for the tables ``cfg.learn`` makes trainable."""

    def __init__(self, cfg: MetaConfig):
        self.cfg = cfg
        S = 2**cfg.T
        self.out_shape = table_shape("output", cfg.T)
        self.rnn_shape = table_shape("rnn", cfg.T)
        self.n_out = 0 if cfg.learn == "rnn" else S * 2
        self.n_rnn = S * S if cfg.learn in ("both", "rnn") else 0
        self.size = self.n_out + self.n_rnn
        self.fixed_output = perceptron(cfg.T) if cfg.learn == "rnn" else None

    def initial(self) -> np.ndarray:
        """The start rule of meta-learning GD for ``cfg.seed`` (``RuleParams``), as c [P]."""
        rnn, out = RuleParams(self.cfg, "cpu").tables(torch.float64)
        parts = [] if self.n_out == 0 else [out.detach().reshape(-1)]
        if self.n_rnn:
            parts.append(rnn.detach().reshape(-1))
        return torch.cat(parts).numpy().astype(np.float64)

    def tables(self, coeffs: torch.Tensor):
        """c [n, P] -> (RNN tables [n, S, S] or None, output tables [n, S, 2])."""
        n = coeffs.shape[0]
        if self.n_out:
            out = coeffs[:, :self.n_out].reshape(n, *self.out_shape)
        else:
            out = self.fixed_output.table().to(coeffs).expand(n, *self.out_shape)
        rnn = coeffs[:, self.n_out:].reshape(n, *self.rnn_shape) if self.n_rnn else None
        return rnn, out

    def coeffs(self, rule: Rule) -> np.ndarray:
        """The inverse of :meth:`rule`: c [P] of a rule of this space (e.g. GD's snapshots)."""
        parts = [] if self.n_out == 0 else [rule.output.table().reshape(-1)]
        if self.n_rnn:
            parts.append(rule.rnn.table().reshape(-1))
        return torch.cat(parts).to(torch.float64).numpy()

    def rule(self, coeffs, provenance: dict) -> Rule:
        """A frozen rule from c [P]."""
        c = torch.as_tensor(np.asarray(coeffs, dtype=np.float64)).unsqueeze(0)
        rnn, out = self.tables(c)
        cfg = self.cfg
        out_rule = (self.fixed_output if self.fixed_output is not None
                    else LayerRule.from_table("output", cfg.T, out[0].clone()))
        rnn_rule = None if rnn is None else LayerRule.from_table("rnn", cfg.T, rnn[0].clone())
        return Rule(cfg.T, out_rule, rnn_rule, cfg.mode, cfg.scheme(),
                    provenance)


def generation_batches(cfg: MetaConfig, n_train: int, start: int = 1):
    """Endless [E, B] index batches; the first one is GD's batch ``start`` (1-based), so
    generation g sees exactly the examples meta-learning sees at step g."""
    batches = episode_batches(cfg, n_train, "cpu")
    for _ in range(start - 1):
        next(batches)
    yield from batches


class PopulationEvaluator:
    """Losses of rules on one device: built once (data, networks), then called per chunk."""

    def __init__(self, cfg: MetaConfig, data, device="cpu"):
        self.cfg, self.device = cfg, device
        self.dtype = getattr(torch, cfg.dtype)
        self.space = RuleSpace(cfg)
        self.x, self.y, _, _ = run_tensors(cfg, data, device)
        self.nets = run_networks(cfg, data, cfg.episodes, device, key="meta-networks")
        self.scheme = cfg.scheme()
        self._big: dict[int, Networks] = {}

    def _repeated(self, n: int) -> Networks:
        """The E episode networks repeated for n members, [n * E, ...] member-major (cached)."""
        if n not in self._big:
            nets = self.nets
            self._big = {n: dataclasses.replace(nets, A=nets.A.repeat(n, 1, 1),
                                                graph=nets.graph.repeat(n, 1, 1))}
        return self._big[n]

    def _loss(self, c: torch.Tensor, idx: torch.Tensor, per_member: bool = True) -> torch.Tensor:
        """c [n, P] (device, dtype), idx [E, B] -> losses [n] (differentiable in c)."""
        n, E = c.shape[0], self.cfg.episodes
        rnn, out = self.space.tables(c)
        rnn = None if rnn is None else rnn.repeat_interleave(E, 0)
        xs = self.x[idx].repeat(n, 1, 1)
        ys = self.y[idx].repeat(n, 1)
        per_net = episode_loss(self._repeated(n), rnn, out.repeat_interleave(E, 0), xs, ys,
                               eta=self.cfg.eta, mode=self.cfg.mode, scheme=self.scheme,
                               per_network=True)
        task = per_net.view(n, E).mean(1)
        return task + 0.5 * self.cfg.weight_decay * (c * c).sum(1)

    def losses(self, coeffs: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Loss of every member: coeffs [n, P] float64, idx [E, B] -> [n] float64."""
        c = torch.as_tensor(np.asarray(coeffs), dtype=self.dtype, device=self.device)
        idx_t = torch.as_tensor(np.asarray(idx), dtype=torch.int64, device=self.device)
        block = max(1, MAX_NETWORKS // self.cfg.episodes)
        out = []
        with torch.no_grad():
            for s in range(0, c.shape[0], block):
                out.append(self._loss(c[s:s + block], idx_t).to(torch.float64).cpu())
        return torch.cat(out).numpy()

    def gradient(self, coeffs: np.ndarray, idx: np.ndarray) -> tuple[float, np.ndarray]:
        """(loss, dloss/dc [P]) of one rule c [P] on batch idx: the meta-gradient GD follows."""
        c = torch.as_tensor(np.asarray(coeffs)[None], dtype=self.dtype,
                            device=self.device).requires_grad_(True)
        idx_t = torch.as_tensor(np.asarray(idx), dtype=torch.int64, device=self.device)
        loss = self._loss(c, idx_t)[0]
        (grad,) = torch.autograd.grad(loss, c)
        return float(loss.detach()), grad[0].to(torch.float64).cpu().numpy()
