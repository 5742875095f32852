"""``plasticity train``: fresh networks trained by a frozen rule (no backprop); result.json
holds the test accuracies, update counts and the accuracy curve."""

from __future__ import annotations

import sys
import time

from ..config import LARGE, TrainConfig, to_dict
from ..files import write_json
from ..rules.refs import load_rule_ref
from .base import Command, rule_flag, rule_options, rule_sets, summary

PRESETS = {
    "smoke": {"n_train": 600, "n_test": 500, "eval_every": 200, "eval_examples": 200},
    "quick": {"n_test": 2000, "networks": 3, "eval_every": 1000},
    "paper": {**LARGE, "networks": 10, "eval_every": 500, "eval_examples": 10000},
}


def train_handler(cfg: TrainConfig, ctx) -> dict:
    from ..data import load_dataset
    from ..transfer import dynamics_mismatch, run_train

    t0 = time.time()
    rule = load_rule_ref(cfg.rule, cfg.T, cfg.eta, ctx.tracking)
    mismatch = dynamics_mismatch(rule, cfg)
    if mismatch:
        print(f"plasticity: warning: {mismatch}; see docs/dynamics.md", file=sys.stderr)
    data = load_dataset(cfg.dataset, data_seed=cfg.data_seed, inputs=cfg.inputs)  # once: training
    res = run_train(cfg, rule, device=ctx.device, data=data, progress=ctx.progress)  # and diagnostics
    ctx.sink.rule("train", rule)
    result = {"command": "train", "config": to_dict(cfg), "rule_provenance": rule.provenance,
              "dynamics_mismatch": mismatch,
              **summary(res.test_accuracy), "updates": res.updates.tolist(),
              "curve": {"examples": res.examples, "accuracy_mean": res.curve.mean(1).tolist(),
                        "accuracy_std": res.curve.std(1).tolist()},
              "diverged_networks": int(res.diverged.sum()), "seconds": time.time() - t0}
    if cfg.T > 1:  # what rounds 2..T do in the trained networks (docs/dynamics.md)
        from ..dynamics import trained_diagnostics

        result["diagnostics"] = trained_diagnostics(cfg, data, res.W, ctx.device)
    if result["diverged_networks"]:
        print(f"plasticity: warning: {result['diverged_networks']} of {cfg.networks} networks "
              "diverged (non-finite weights; learning stopped for them): lower eta",
              file=sys.stderr)
    ctx.sink.metrics({"train/test_accuracy_mean": result["test_accuracy_mean"],
                      "train/diverged_networks": result["diverged_networks"]})
    write_json(ctx.out / "result.json", result)
    return result


COMMAND = Command("train", "train fresh networks with a frozen rule (no backprop)", train_handler,
                  TrainConfig, PRESETS, arguments=rule_flag, options=rule_options,
                  sets_from_options=rule_sets)
