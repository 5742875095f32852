"""``plasticity evolve``: evolve a plasticity rule (the allele model, a GA or an ES) on Ray actors
(docs/evolution.md); writes rule.json, history.json, result.json and a checkpoint per generation."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..config import to_dict
from ..evolution.config import EvolutionConfig
from ..files import write_json
from ..theory import PERCEPTRON_SIGNS, sign_pattern
from .base import Command, check_cluster, cluster_flags


def load_data(cfg):
    from ..data import load_dataset

    return load_dataset(cfg.dataset, data_seed=cfg.data_seed, inputs=cfg.inputs)


def rule_summary(rule) -> dict:
    """The output table, its sign pattern, and the Theorem 1 checks (T = 1: 2 x 2 table)."""
    table = rule.output.table()
    out = {"output_table": table.tolist(), "pattern": sign_pattern(table)}
    if rule.T == 1:
        signs = tuple(tuple(int(v) for v in row) for row in np.sign(table.numpy()).tolist())
        diff = (table[:, 0] - table[:, 1]).tolist()
        out.update(perceptron=signs == PERCEPTRON_SIGNS, difference=diff,
                   difference_perceptron=bool(diff[0] < 0 < diff[1]))
    if rule.rnn is not None:
        out["rnn_table"] = rule.rnn.table().tolist()
    return out


def rule_accuracy(cfg, rule, data, device, n_train: int, n_test: int, networks: int) -> float:
    from ..meta import evaluate_rule

    return evaluate_rule(cfg.meta_config(), rule, data, device, n_train=n_train, n_test=n_test,
                         networks=networks)


def evolve_handler(cfg: EvolutionConfig, ctx) -> dict:
    from ..evolution.driver import load_checkpoint, run_evolution
    from ..rules.io import save_rule

    out, device, sink = ctx.out, ctx.device, ctx.sink
    check_cluster(ctx.address)
    if ctx.resume:
        load_checkpoint(out, cfg)  # nothing to resume, or other settings: one line now
    data = load_data(cfg)
    t0 = time.time()
    run = run_evolution(cfg, data, device=device, out=out, resume=ctx.resume, sink=sink,
                        address=ctx.address)
    rule_path = save_rule(run.rule, out / "rule.json")
    sink.rule("evolve", run.rule, rule_path)
    n_tr, n_te = cfg.n_train or data.x_train.shape[0], cfg.n_test or data.x_test.shape[0]
    acc = rule_accuracy(cfg, run.rule, data, device, n_tr, n_te, 1)
    sink.metrics({"evolution/test_accuracy": acc})
    last = run.history[-1]
    result = {"command": "evolve", "config": to_dict(cfg), "rule": str(rule_path),
              "method": run.rule.provenance["method"], "generations": last["generation"],
              "final_loss": last["loss_center"], "loss_best": last["loss_best"],
              "examples": last["examples"], "test_accuracy": acc,
              "start_rule": run.start.tolist(), "final_rule": run.final.tolist(),
              "replaced_actors": run.replaced_actors, "resumed_from": run.resumed_from,
              **rule_summary(run.rule),
              "seconds": time.time() - t0}
    if hasattr(run.strategy, "start_error"):
        result["start_error"] = run.strategy.start_error
    write_json(out / "history.json", run.history)
    write_json(out / "result.json", result)
    return result


def resumable(out: Path) -> bool:
    """``out`` holds an evolution checkpoint (``--resume`` continues it)."""
    from ..evolution.driver import CHECKPOINT

    return (Path(out) / CHECKPOINT).is_file()


SMOKE = {"n_train": 600, "n_test": 500, "neurons": 40, "k": 20, "episodes": 2, "batch": 20,
         "population": 8, "generations": 3}  # no strategy's own field: --set strategy=ga works
# The lifetime objective (evolution/lifetime.py): T=3 RNN + output rules judged by fresh networks
# after a whole lifetime. "lifetime-smoke": seconds; "lifetime": ReLU1, |V| = 400, L = 10,000.
LIFETIME_SMOKE = {"objective": "lifetime", "dataset": "relu1", "T": 3, "learn": "both",
                  "neurons": 40, "k": 20, "n_train": 700, "n_test": 300, "lifetime_examples": 300,
                  "lifetime_networks": 2, "validation": 100, "population": 8, "generations": 3,
                  "episodes": 2, "batch": 20}
LIFETIME = {"objective": "lifetime", "dataset": "relu1", "T": 3, "learn": "both", "neurons": 400,
            "k": 200, "lifetime_examples": 10000, "lifetime_networks": 2, "validation": 1000,
            "population": 16, "generations": 20, "episodes": 4, "batch": 100}
PRESETS = {
    "smoke": SMOKE,
    "lifetime-smoke": LIFETIME_SMOKE,
    "lifetime": LIFETIME,
    "quick": {"population": 64, "generations": 40, "batch": 50},
    "paper": {"population": 256, "generations": 200, "genes": 50, "eps": 0.1, "dtype": "float64"},
}

COMMAND = Command("evolve", "evolve a plasticity rule: allele model (genetic), GA or ES",
                  evolve_handler, EvolutionConfig, PRESETS, arguments=cluster_flags,
                  resumable=resumable)
