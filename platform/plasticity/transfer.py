"""Rule-based training of fresh networks from a config: a frozen rule applied to a data set.

A rule learned on data set X with one network shape is applied here to any data set and any
network shape with the same T (rules are indexed by firing histories only, docs/paper.md 7).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from . import PlasticityError
from .config import TrainConfig
from .data import load_dataset
from .experiment import run_networks, run_tensors
from .learning import TrainResult, example_orders, train_with_rule
from .rules import LayerRule, Rule, Scheme
from .seeding import torch_generator


def run_train(cfg: TrainConfig, rule: Rule, *, device="cpu", data=None,
              progress: bool = False) -> TrainResult:
    """Train ``cfg.networks`` fresh networks of ``cfg``'s shape on ``cfg.dataset`` with ``rule``.

    Networks are drawn with key "networks" (shared with the GD baselines of the same seed); each
    has its own example order of ``cfg.passes`` passes. The rule's own scheme decides when updates
    happen unless ``cfg.update_on`` / ``cfg.output_rows`` name another (docs/paper.md 2.3, Fig. 6)."""
    rule.check_network(cfg.T)
    rule = with_scheme(rule, cfg.update_on, cfg.output_rows, cfg.gamma)
    if data is None:
        data = load_dataset(cfg.dataset, data_seed=cfg.data_seed, inputs=cfg.inputs)
    x_tr, y_tr, x_te, y_te = run_tensors(cfg, data, device)
    nets = run_networks(cfg, data, cfg.networks, device)
    order = example_orders(cfg.networks, x_tr.shape[0], cfg.passes,
                           torch_generator(cfg.seed, "train-order"), device)
    return train_with_rule(nets, rule, x_tr, y_tr, x_te, y_te, order=order, eta=cfg.eta,
                           eval_every=cfg.eval_every, eval_examples=cfg.eval_examples,
                           chunk=cfg.chunk, progress=progress)


def dynamics_mismatch(rule: Rule, cfg) -> str | None:
    """Where ``cfg``'s dynamics (recurrence, firing) differ from those recorded in the rule's
    provenance (rules learned before the fields existed count as paper/positive), or None."""
    learned = (rule.provenance or {}).get("config") or {}
    if not learned:
        return None  # a classic rule, or one without a recorded config: nothing to compare
    diffs = [f"{f}={learned.get(f, d)} (this run: {getattr(cfg, f)})"
             for f, d in (("recurrence", "paper"), ("firing", "positive"))
             if learned.get(f, d) != getattr(cfg, f)]
    return None if not diffs else "the rule was learned with " + ", ".join(diffs)


def with_scheme(rule: Rule, update_on: str = "rule", output_rows: str = "rule",
                gamma: float = 0.0) -> Rule:
    """``rule`` with its scheme overridden where the argument is not "rule" (``gamma``: the
    margin of an ``update_on`` margin scheme given here; the rule's own with "rule")."""
    own = update_on == "rule"
    scheme = Scheme(rule.scheme.update_on if own else update_on,
                    rule.scheme.output_rows if output_rows == "rule" else output_rows,
                    rule.scheme.gamma if own else gamma)
    return dataclasses.replace(rule, scheme=scheme)


def lift_rule(rule: Rule, T: int, rnn: Rule | None = None) -> Rule:
    """A T=1 rule lifted to a T-round network: its output table is applied to the last round's
    firing bit (the bit h_T reflects, as the classic rules do for T > 1); the recurrent weights
    learn by ``rnn``'s RNN rule (a T-round rule), or stay at 0 when ``rnn`` is None. With W = 0
    and ``recurrence="paper"`` every round repeats round 1, so the lifted network computes exactly
    what the T=1 network does."""
    if rule.T != 1:
        raise PlasticityError(f"only T=1 rules can be lifted; this rule has T={rule.T}")
    if rnn is not None and (rnn.T != T or rnn.rnn is None):
        raise PlasticityError(f"lift_rnn must be a T={T} rule with an RNN rule (it has "
                              f"T={rnn.T}, RNN rule {'present' if rnn.rnn is not None else 'absent'})")
    last = torch.arange(2**T) & 1
    output = LayerRule.from_table("output", T, rule.output.table()[last])
    prov = {"method": "lifted", "from": rule.provenance, "T": T,
            "rnn_from": None if rnn is None else rnn.provenance}
    return Rule(T, output, None if rnn is None else rnn.rnn, rule.mode, rule.scheme, prov)


@dataclass
class CellResult:
    """One transfer cell: ``seeds`` networks x ``orders`` example orders each (N = product)."""

    accuracy: np.ndarray  # [N] final test accuracy, network-major (seed s, order o at s*orders+o)
    updates: np.ndarray  # [N] weight updates applied (mistakes with the default scheme)
    examples: list[int]  # curve x: examples seen
    curve: np.ndarray  # [points, N] accuracy on the eval subset
    gd: object = None  # baselines.BaselineResult on the same networks and orders, or None
    diagnostics: dict | None = None  # T >= 2: dynamics.recurrence_diagnostics, mean over runs


def transfer_cell(rule: Rule, data, *, neurons: int, k: int, T: int, seeds: int, orders: int,
                  seed: int = 0, p: float = 0.5, n_train: int = 0, n_test: int = 0,
                  passes: int = 1, eta: float = 0.01, eval_every: int = 500,
                  eval_examples: int = 1000, dtype: str = "float32", gd: str = "none",
                  gd_lr: float = 1e-2, gd_batch: int = 1, device="cpu",
                  recurrence: str = "paper", firing: str = "positive") -> CellResult:
    """Train fresh networks of shape (neurons, k, T) on ``data`` with the frozen ``rule``:
    networks ``0..seeds-1`` drawn as in ``run_train`` (key "networks"), each trained from
    ``orders`` example orders. ``gd`` = "output" | "full" also trains the same networks with the
    same orders by Adam (``baselines.train_gd``), the accuracy-against-updates comparison.
    ``recurrence`` and ``firing`` select the dynamics (docs/dynamics.md)."""
    from .baselines import train_gd

    rule.check_network(T)
    cfg = TrainConfig(seed=seed, dataset=data.name, neurons=neurons, k=k, p=p, T=T,
                      n_train=n_train, n_test=n_test, passes=passes, eta=eta, dtype=dtype,
                      networks=seeds, eval_every=eval_every, eval_examples=eval_examples,
                      recurrence=recurrence, firing=firing)
    x_tr, y_tr, x_te, y_te = run_tensors(cfg, data, device)
    nets = run_networks(cfg, data, seeds, device)
    nets = nets.select(torch.arange(seeds, device=device).repeat_interleave(orders))
    order = example_orders(seeds * orders, x_tr.shape[0], passes,
                           torch_generator(seed, "transfer-order"), device)
    res = train_with_rule(nets, rule, x_tr, y_tr, x_te, y_te, order=order, eta=eta,
                          eval_every=eval_every, eval_examples=eval_examples)
    gd_res = None
    if gd != "none":
        gd_res = train_gd(nets, x_tr, y_tr, x_te, y_te, order=order, method=gd, batch=gd_batch,
                          lr=gd_lr, eval_every=eval_every, eval_examples=eval_examples, seed=seed)
    diag = None
    if T > 1:  # does the recurrence change what the trained networks compute? (1,000 test examples)
        from .dynamics import recurrence_diagnostics

        d = recurrence_diagnostics(nets, res.W, x_te[:1000])
        diag = {k: float(np.mean(v)) for k, v in d.items() if k != "active_by_round"}
    return CellResult(res.test_accuracy, res.updates, res.examples, res.curve, gd_res, diag)
