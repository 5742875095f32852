"""Scaling of population evaluation: in process, 1 Ray actor, 2 Ray actors (issue 3).

Every case evaluates the same populations (random T=1 output rules) on the same batch; a member
is E episodes of B examples through the core engine (meta.episode_loss, no autograd). Reported:
member evaluations per second (median over repetitions), member evaluations per CPU-second of
the evaluating processes (the driver in process, the actors with Ray: less sensitive to other
jobs on the machine), the load average before and after each case (the machine is shared: a
loaded machine cannot show 2-actor scaling), and the targets:
2 actors >= 1.6x one actor; one actor at most 15% slower than in process (1 torch thread each).

    .venv/bin/python bench/bench_evolution.py --out bench/results_evolution.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform as _platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray's token authentication on (docs/security.md)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from plasticity.data import load_dataset
from plasticity.evolution.config import EvolutionConfig
from plasticity.evolution.driver import LocalPool
from plasticity.evolution.evaluate import PopulationEvaluator, generation_batches


def load() -> float:
    return round(os.getloadavg()[0], 2)


def measure(pool, coeffs, idx, reps: int) -> dict:
    pool.losses(coeffs[: max(2, coeffs.shape[0] // 8)], idx)  # warm-up (caches, first touch)
    times = []
    before = load()
    cpu0 = pool.cpu_seconds()
    for r in range(reps):
        t0 = time.perf_counter()
        pool.losses(coeffs, idx, r)
        times.append(time.perf_counter() - t0)
    cpu = pool.cpu_seconds() - cpu0
    med = statistics.median(times)
    return {"members": int(coeffs.shape[0]), "seconds_median": med,
            "seconds": [round(t, 4) for t in times], "members_per_s": coeffs.shape[0] / med,
            "members_per_cpu_s": coeffs.shape[0] * reps / cpu,
            "cores_used": cpu / sum(times),  # < workers: the evaluators did not get their cores
            "load_before": before, "load_after": load()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results_evolution.json"))
    ap.add_argument("--population", type=int, default=256, help="members in the scaling cases")
    ap.add_argument("--sizes", default="16,64,256,1024", help="population sizes for the growth table")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = EvolutionConfig(batch=args.batch, episodes=4)
    meta = cfg.meta_config()
    data = load_dataset(cfg.dataset)
    idx = next(generation_batches(meta, data.x_train.shape[0])).numpy()
    rng = np.random.default_rng(0)
    local = LocalPool(PopulationEvaluator(meta, data))
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {"machine": {"cpus": os.cpu_count(), "python": _platform.python_version(),
                           "torch": torch.__version__, "uptime_start": load()},
               "config": {"dataset": cfg.dataset, "neurons": cfg.neurons, "k": cfg.k, "T": cfg.T,
                          "episodes": cfg.episodes, "batch": cfg.batch,
                          "examples_per_member": cfg.episodes * cfg.batch},
               "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    coeffs = rng.normal(size=(args.population, 4))
    cases = {"in_process": measure(local, coeffs, idx, args.reps)}
    from plasticity.evolution.ray_pool import RayPool  # starts (and stops) a local Ray

    growth = {}
    for w in (1, 2):
        pool = RayPool(meta, w, 1.0)
        try:
            cases[f"actors_{w}"] = measure(pool, coeffs, idx, args.reps)
            for n in sizes if w == 2 else ():
                c = rng.normal(size=(n, 4))
                growth[n] = {"in_process": measure(local, c, idx, args.reps),
                             "actors_2": measure(pool, c, idx, args.reps)}
        finally:
            pool.close()
    rate = {k: v["members_per_s"] for k, v in cases.items()}
    results["cases"] = cases
    results["growth"] = growth
    cpu_rate = {k: v["members_per_cpu_s"] for k, v in cases.items()}
    results["ratios"] = {"actors_2_over_actors_1": rate["actors_2"] / rate["actors_1"],
                         "actors_1_over_in_process": rate["actors_1"] / rate["in_process"],
                         "per_cpu_s_actor_over_in_process": cpu_rate["actors_1"] / cpu_rate["in_process"]}
    results["targets"] = {"two_actors_at_least_1.6x": results["ratios"]["actors_2_over_actors_1"] >= 1.6,
                          "ray_at_most_15pct_slower": results["ratios"]["actors_1_over_in_process"] >= 0.85}
    results["machine"]["uptime_end"] = load()
    print(json.dumps({"ratios": results["ratios"], "targets": results["targets"],
                      "members_per_s": rate, "load": [results["machine"]["uptime_start"],
                                                      results["machine"]["uptime_end"]]}, indent=1))
    runs = []
    if args.out.exists():
        old = json.loads(args.out.read_text())
        runs = old.get("runs", [old]) if isinstance(old, dict) else []
    runs.append(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"latest": results, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
