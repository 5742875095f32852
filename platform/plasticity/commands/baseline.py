"""``plasticity baseline``: the same networks trained by gradient descent (output layer or
full), the comparison every rule result stands beside."""

from __future__ import annotations

import time

from ..config import BaselineConfig, to_dict
from ..files import write_json
from .base import Command, summary
from .train import PRESETS as TRAIN_PRESETS

PRESETS = dict(TRAIN_PRESETS)  # the sizes of `train`: GD on the networks a rule trains there


def baseline_handler(cfg: BaselineConfig, ctx) -> dict:
    from ..baselines import train_baseline
    from ..data import load_dataset

    t0 = time.time()
    data = load_dataset(cfg.dataset, data_seed=cfg.data_seed, inputs=cfg.inputs)
    res = train_baseline(cfg, data, device=ctx.device, progress=ctx.progress)
    result = {"command": "baseline", "config": to_dict(cfg),
              **summary(res.test_accuracy),
              "curve": {"examples": res.examples, "updates": res.updates_at,
                        "accuracy_mean": res.curve.mean(1).tolist(),
                        "accuracy_std": res.curve.std(1).tolist()},
              "seconds": time.time() - t0}
    write_json(ctx.out / "result.json", result)
    return result


COMMAND = Command("baseline", "train the same networks by gradient descent", baseline_handler,
                  BaselineConfig, PRESETS)
