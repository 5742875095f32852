"""The lifetime objective's throughput (issue 14): member-lifetimes per second in process, on 1
and on 2 Ray actors, and the inner loop against a forward-only bound.

A member-lifetime is one member's M networks learning L examples each and being scored on the
validation examples (evolution/lifetime.py). Cases, measured in one run on this machine:
- in process (1 torch thread), 1 Ray actor, 2 Ray actors (1 CPU each): the same population of
  random T=3 RNN + output rules, the same generation draw; member-lifetimes per second (median
  over repetitions) and the ratio 2 actors / 1 actor (target >= 1.8);
- forward-only bound: the same examples through batched forward passes of the same networks
  (fixed weights, no updates), and the measured update rate of the rule-based learning.

    .venv/bin/python bench/bench_lifetime.py --out bench/results_lifetime.json
"""

from __future__ import annotations

import argparse
import dataclasses
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
from plasticity.evolution.lifetime import LifetimeEvaluator


def load() -> float:
    return round(os.getloadavg()[0], 2)


def timed(fn, reps: int) -> dict:
    fn(0)  # warm-up
    times, before = [], load()
    for r in range(reps):
        t0 = time.perf_counter()
        fn(r + 1)
        times.append(time.perf_counter() - t0)
    return {"seconds_median": statistics.median(times), "seconds": [round(t, 3) for t in times],
            "load_before": before, "load_after": load()}


def forward_only(ev: LifetimeEvaluator, members: int, generation: int) -> float:
    """Seconds to push the same L examples of M x members networks through forward passes with
    fixed (zero-free, random) weights, in the chunks the learner uses (no updates)."""
    nets = ev.networks(generation)
    n = members * nets.n
    big = dataclasses.replace(nets, A=nets.A.repeat(members, 1, 1),
                              graph=nets.graph.repeat(members, 1, 1))
    g = torch.Generator().manual_seed(0)
    V = big.neurons
    W = 0.01 * torch.randn(n, V, V, generator=g, dtype=big.A.dtype) * big.graph
    U = torch.randn(n, ev.n_classes, V, generator=g, dtype=big.A.dtype)
    order = ev.orders(generation).repeat(members, 1)
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, order.shape[1], 256):
            big.forward(ev.x[order[:, s:s + 256]], W, U)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results_lifetime.json"))
    ap.add_argument("--neurons", type=int, default=400)
    ap.add_argument("--lifetime", type=int, default=10000, help="L")
    ap.add_argument("--networks", type=int, default=2, help="M")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = EvolutionConfig(objective="lifetime", dataset="relu1", T=3, learn="both",
                          neurons=args.neurons, k=args.neurons // 2,
                          lifetime_examples=args.lifetime, lifetime_networks=args.networks,
                          validation=1000, population=args.members, strategy="es")
    data = load_dataset(cfg.dataset)
    ev = LifetimeEvaluator(cfg, data)
    rng = np.random.default_rng(0)
    start = ev.space.initial()
    coeffs = start + 0.3 * rng.standard_normal((args.members, start.shape[0]))
    local = LocalPool(ev)
    cases = {"in_process": timed(lambda r: local.losses(coeffs, np.array([1])), args.reps)}
    from plasticity.evolution.ray_pool import RayPool

    for w in (1, 2):
        pool = RayPool(dataclasses.replace(cfg, workers=w), w, 1.0)
        try:
            cases[f"ray_{w}"] = timed(lambda r, p=pool: p.losses(coeffs, np.array([1])), args.reps)
        finally:
            pool.close()
    for c in cases.values():
        c["member_lifetimes_per_s"] = args.members / c["seconds_median"]
    # the update rate of these lifetimes, and the forward-only bound of the same examples
    from plasticity.learning import RuleLearner

    nets = ev.networks(1)
    rnn, out = ev.space.tables(torch.as_tensor(coeffs[:1], dtype=ev.dtype))
    learner = RuleLearner(nets, ev.rule, cfg.eta, tables=(
        None if rnn is None else rnn.repeat_interleave(nets.n, 0), out.repeat_interleave(nets.n, 0)))
    learner.learn(ev.x, ev.y, ev.orders(1))
    rate = learner.triggered / max(learner.seen, 1)
    fwd = forward_only(ev, args.members, 1)
    inner = cases["in_process"]["seconds_median"]
    result = {
        "machine": {"cpu": _platform.processor() or _platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__},
        "sizes": {"neurons": args.neurons, "k": args.neurons // 2, "T": 3, "L": args.lifetime,
                  "M": args.networks, "members": args.members, "validation": 1000},
        "cases": cases,
        "ratio_2_actors_over_1": cases["ray_1"]["seconds_median"] / cases["ray_2"]["seconds_median"],
        "update_rate": rate,
        "forward_only_seconds": fwd,
        "inner_loop_over_forward_only": inner / fwd,
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "cases"}, indent=1))
    for name, c in cases.items():
        print(f"{name:>10}: {c['member_lifetimes_per_s']:.3f} member-lifetimes/s "
              f"(load {c['load_before']} -> {c['load_after']})")


if __name__ == "__main__":
    main()
