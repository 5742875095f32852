"""Rule-based training of fresh networks from a config: a frozen rule applied to a data set.

A rule learned on data set X with one network shape is applied here to any data set and any
network shape with the same T (rules are indexed by firing histories only, PAPER.md 7).
"""

from __future__ import annotations

import dataclasses

from .config import TrainConfig
from .data import load_dataset
from .experiment import run_networks, run_tensors
from .learning import TrainResult, example_orders, train_with_rule
from .rules import Rule, Scheme
from .seeding import torch_generator


def run_train(cfg: TrainConfig, rule: Rule, *, device="cpu", data=None,
              progress: bool = False) -> TrainResult:
    """Train ``cfg.networks`` fresh networks of ``cfg``'s shape on ``cfg.dataset`` with ``rule``.

    Networks are drawn with key "networks" (shared with the GD baselines of the same seed); each
    has its own example order of ``cfg.passes`` passes. The rule's own scheme decides when updates
    happen unless ``cfg.update_on`` / ``cfg.output_rows`` name another (PAPER.md 2.3, Fig. 6)."""
    rule.check_network(cfg.T)
    rule = with_scheme(rule, cfg.update_on, cfg.output_rows)
    if data is None:
        data = load_dataset(cfg.dataset, data_seed=cfg.data_seed, inputs=cfg.inputs)
    x_tr, y_tr, x_te, y_te = run_tensors(cfg, data, device)
    nets = run_networks(cfg, data, cfg.networks, device)
    order = example_orders(cfg.networks, x_tr.shape[0], cfg.passes,
                           torch_generator(cfg.seed, "train-order"), device)
    return train_with_rule(nets, rule, x_tr, y_tr, x_te, y_te, order=order, eta=cfg.eta,
                           eval_every=cfg.eval_every, eval_examples=cfg.eval_examples,
                           chunk=cfg.chunk, progress=progress)


def with_scheme(rule: Rule, update_on: str = "rule", output_rows: str = "rule") -> Rule:
    """``rule`` with its scheme overridden where the argument is not "rule"."""
    scheme = Scheme(rule.scheme.update_on if update_on == "rule" else update_on,
                    rule.scheme.output_rows if output_rows == "rule" else output_rows)
    return dataclasses.replace(rule, scheme=scheme)
