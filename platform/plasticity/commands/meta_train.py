"""``plasticity meta-train``: meta-learn plasticity rules by GD through the unrolled rule-based
learning (docs/meta-learning.md); writes rule.json, history.json and result.json."""

from __future__ import annotations

import time

from ..config import MetaConfig, to_dict
from ..files import write_json
from .base import Command

PRESETS = {
    "smoke": {"n_train": 600, "n_test": 500, "episodes": 4, "batch": 20, "steps": 6,
              "eval_every": 3, "eval_train": 300, "eval_examples": 200},
    "quick": {"episodes": 16, "batch": 100, "steps": 150, "eval_every": 50},
    "paper": {"episodes": 16, "batch": 100, "steps": 1000, "eval_every": 100,
              "eval_train": 10000, "eval_examples": 10000, "dtype": "float64"},
}


def meta_train_handler(cfg: MetaConfig, ctx) -> dict:
    from ..data import load_dataset
    from ..meta import evaluate_rule, meta_train
    from ..rules.io import save_rule

    data = load_dataset(cfg.dataset, data_seed=cfg.data_seed, inputs=cfg.inputs)
    t0 = time.time()
    res = meta_train(cfg, data, device=ctx.device, progress=ctx.progress)
    rule_path = save_rule(res.rule, ctx.out / "rule.json")
    ctx.sink.rule("meta-train", res.rule, rule_path)
    acc = evaluate_rule(cfg, res.rule, data, ctx.device, n_train=cfg.n_train or data.x_train.shape[0],
                        n_test=cfg.n_test or data.x_test.shape[0])
    result = {"command": "meta-train", "config": to_dict(cfg), "rule": str(rule_path),
              "final_loss": res.history[-1]["loss"], "first_loss": res.history[0]["loss"],
              "final_accuracy": res.history[-1].get("accuracy"), "skipped_steps": res.skipped,
              "collapsed_starts": res.collapsed_starts, "selection": res.selection,
              "test_accuracy": acc, "seconds": time.time() - t0,
              "output_table": res.rule.output.table().tolist(),
              "rnn_table": None if res.rule.rnn is None else res.rule.rnn.table().tolist()}
    write_json(ctx.out / "history.json", res.history)
    for h in res.history:
        ctx.sink.metrics({f"meta/{k}": v for k, v in h.items() if k != "step"}, step=h["step"])
    ctx.sink.metrics({"meta/test_accuracy": acc})
    write_json(ctx.out / "result.json", result)
    return result


COMMAND = Command("meta-train", "meta-learn plasticity rules by GD through unrolled learning",
                  meta_train_handler, MetaConfig, PRESETS)
