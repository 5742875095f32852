"""The engine at an earlier commit against the working tree, side by side in one run.

    python bench/bench_before_after.py [--before COMMIT] [--reps 2] [--out FILE.json]

Exports ``platform/`` at COMMIT (default: the commit before issue 13's engine work, cbcf7bd) with
``git archive`` into a temporary folder and runs each case alternately with the old and the new
engine, each in a fresh interpreter, 1 torch thread. Reports the best CPU time (``process_time``,
less sensitive than wall time to other jobs on a shared machine) and wall time of each side, and
whether both ended with the same weights (a checksum; for meta steps the loss, which the final
weights decide, and the largest gradient difference relative to the largest entry). Cases: rule-based training of |V| = 1000,
T = 3 networks on MNIST (1 network, 16 networks) and meta-learning steps (|V| = 100, B = 100).
Nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CASES = [
    {"N": 1, "V": 1000, "L": 2000, "rule": "learned"},
    {"N": 1, "V": 1000, "L": 1000, "rule": "hebb+perceptron"},
    {"N": 1, "V": 1000, "L": 2000, "rule": "perceptron"},
    {"N": 16, "V": 1000, "L": 150, "rule": "learned"},
    {"N": 16, "V": 1000, "L": 150, "rule": "hebb+perceptron"},
    {"N": 16, "V": 1000, "L": 150, "rule": "perceptron"},
    {"kind": "meta", "E": 1, "B": 100, "V": 100, "T": 3, "dtype": "float64"},
    {"kind": "meta", "E": 16, "B": 100, "V": 100, "T": 3, "dtype": "float64"},
    {"kind": "meta", "E": 64, "B": 100, "V": 100, "T": 3, "dtype": "float32"},
    {"kind": "meta", "E": 4, "B": 100, "V": 1000, "T": 3, "dtype": "float32"},
]


def run_case(c: dict) -> dict:
    """One case with whichever engine is on sys.path (a fresh interpreter)."""
    import torch

    sys.path.insert(0, str(HERE))
    import bench_engine as be

    torch.set_num_threads(1)
    if c.get("kind") == "meta":
        from plasticity.meta import episode_loss
        from plasticity.rules import Scheme

        nets, xs, ys, rnn, out = be._meta_inputs(c, getattr(torch, c["dtype"]))

        def step():
            loss = episode_loss(nets, rnn, out, xs, ys, eta=0.01, mode="additive",
                                scheme=Scheme())
            loss.backward()
            grad = torch.cat([rnn.grad.flatten(), out.grad.flatten()]).double().tolist()
            rnn.grad = out.grad = None
            return float(loss), grad

        step()
        best = (float("inf"), float("inf"))
        for _ in range(3):
            t0, c0 = time.perf_counter(), time.process_time()
            sig, grad = step()
            best = min(best, (time.process_time() - c0, time.perf_counter() - t0))
        # the loss is the checksum (the final weights decide it); the gradient is compared apart
        return {"cpu": best[0], "wall": best[1], "examples": c["E"] * c["B"], "checksum": sig,
                "grad": grad}
    from plasticity.learning import RuleLearner, example_orders
    from plasticity.network import make_networks
    from plasticity.seeding import torch_generator

    x, y, _ = be._load_images(max(2000, c["L"]))
    nets = make_networks(c["N"], 784, 10, neurons=c["V"], k=c["V"] // 2, p=0.5, T=3, seed=0)
    order = example_orders(c["N"], x.shape[0], 1, torch_generator(0, "bench-order"))[:, :c["L"]]
    rule = be._rule(c["rule"], 3)
    RuleLearner(nets, rule, 0.01).learn(x, y, order[:, :20])  # warm-up
    learner = RuleLearner(nets, rule, 0.01)
    t0, c0 = time.perf_counter(), time.process_time()
    learner.learn(x, y, order)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    return {"cpu": cpu, "wall": wall, "examples": c["N"] * c["L"],
            "update_fraction": float(learner.updates.double().mean()) / c["L"],
            "checksum": float(learner.W.double().sum()) + float(learner.U.double().sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="cbcf7bd")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", choices=("train", "meta"), default=None,
                    help="run only the rule-based training or only the meta-learning cases")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "platform"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
        load = os.getloadavg()
        rows = []
        for c in CASES:
            if args.only and (c.get("kind") == "meta") != (args.only == "meta"):
                continue
            res: dict = {"before": [], "after": []}
            for _ in range(args.reps):
                for side, root in (("before", Path(old)), ("after", ROOT)):
                    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                        [str(root / "platform"), str(ROOT), str(ROOT / "tests")]),
                        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
                    proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(c)],
                                          env=env, capture_output=True, text=True, check=True)
                    res[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            row = {**c}
            for side in ("before", "after"):
                best = min(res[side], key=lambda d: d["cpu"])
                row[side] = {"examples_per_cpu_s": best["examples"] / best["cpu"],
                             "examples_per_wall_s": best["examples"] / min(
                                 d["wall"] for d in res[side]), "checksum": best["checksum"],
                             "update_fraction": best.get("update_fraction")}
            row["speedup_cpu"] = (row["after"]["examples_per_cpu_s"]
                                  / row["before"]["examples_per_cpu_s"])
            row["same_result"] = row["before"]["checksum"] == row["after"]["checksum"]
            if c.get("kind") == "meta":
                ga, gb = res["before"][0]["grad"], res["after"][0]["grad"]
                scale = max(abs(v) for v in ga) or 1.0
                row["grad_max_rel_diff"] = max(abs(u - v) for u, v in zip(ga, gb)) / scale
            rows.append(row)
            what = (f"meta E={c['E']} {c['dtype']}" if c.get("kind") == "meta"
                    else f"train N={c['N']} {c['rule']} L={c['L']}")
            print(f"{what:<36} before {row['before']['examples_per_cpu_s']:>8.0f}  after "
                  f"{row['after']['examples_per_cpu_s']:>8.0f} ex/cpu-s  x{row['speedup_cpu']:.2f}"
                  f"  same={row['same_result']}"
                  + (f" grad diff {row['grad_max_rel_diff']:.1e}" if "grad_max_rel_diff" in row
                     else ""), flush=True)
    info = {"before": args.before, "loadavg_before": load, "loadavg_after": os.getloadavg(),
            "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"load average before {load}, after {info['loadavg_after']}")
    if args.out:
        Path(args.out).write_text(json.dumps({"info": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
