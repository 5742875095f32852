"""Throughput and memory of the engine against the slow float64 reference (tests/reference.py).

    python bench/bench_engine.py [--quick] [--out FILE.json] [--threads N]

Measures, in one run (see bench/README.md for what each number means):
  (i)   rule-based training, |V|=1000, k=500, T=3 on MNIST (or random 784-dim data with 10 random
        linear classes when the data root is missing): 1 network and 16 batched networks,
        against the per-example float64 numpy loop of tests/reference.py;
  (ii)  one meta-learning step, |V|=100, T=3, B=100, E=1 and E=16 batched episodes, against the
        per-example float64 torch loop of tests/reference.py;
  (iii) scaling with |V| and B (meta) / networks N (rule-based training);
  (iv)  peak memory (RSS) of every case, and of meta-learning with checkpoint_every.

Every case runs in its own subprocess so that its peak RSS (``ru_maxrss``) is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

LEARNED = HERE / "rules" / "fig3_T3.json"  # the T=3 rule meta-learned by `study fig3 --preset paper`
RULES = ("hebb+perceptron", "dense", "perceptron") + (("learned",) if LEARNED.exists() else ())


# ----------------------------------------------------------------------------- helpers


def _peak_rss_mb() -> float:
    """Peak RSS of this process so far (getrusage; never reset)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _start_measuring() -> float:
    """Current RSS after a case's setup; resets the kernel's peak-RSS mark (VmHWM) so that the
    case's own peak is not hidden by a larger transient of the setup (e.g. data generation)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_mb("VmRSS") or _peak_rss_mb()


def _compute_peak_mb() -> float:
    """Peak RSS since ``_start_measuring`` (VmHWM), or the getrusage peak if unavailable."""
    return _status_mb("VmHWM") or _peak_rss_mb()


def _load_images(n_train: int):
    """MNIST if the data root is prepared, else random 784-dim data with 10 linear classes."""
    import torch
    from plasticity import PlasticityError
    from plasticity.data import load_dataset

    try:
        ds = load_dataset("mnist")
        return ds.x_train[:n_train], ds.y_train[:n_train], "mnist"
    except PlasticityError:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(n_train, 784, generator=g)
        y = (x @ torch.randn(784, 10, generator=g)).argmax(1)
        return x, y, "random-784 (MNIST data root missing)"


def _rule(name: str, T: int):
    """hebb+perceptron or perceptron (classic), "dense": a meta-learned-like rule with every
    RNN table entry non-zero (N(0, 0.1^2)) and the perceptron output rule, or "learned": the
    RNN + output rules meta-learned on ReLU1 for Fig. 3 (bench/rules/fig3_T3.json)."""
    import torch
    from plasticity.rules import LayerRule, Rule
    from plasticity.rules.classic import classic_rule, perceptron

    if name in ("hebb+perceptron", "perceptron"):
        return classic_rule(name, T)
    if name == "learned":
        from plasticity.rules.io import load_rule

        return load_rule(LEARNED)
    g = torch.Generator().manual_seed(0)
    rnn = torch.randn(2**T, 2**T, generator=g, dtype=torch.float64) * 0.1
    return Rule(T, perceptron(T), LayerRule.from_table("rnn", T, rnn))


# ----------------------------------------------------------------------------- cases


def case_train(c: dict) -> dict:
    """Engine rule-based training of c["N"] networks on c["L"] examples each."""
    import torch
    from plasticity.learning import RuleLearner, example_orders
    from plasticity.network import make_networks
    from plasticity.seeding import torch_generator

    dtype = getattr(torch, c["dtype"])
    x, y, source = _load_images(max(c["L"], 2000))
    x = x.to(dtype)
    nets = make_networks(c["N"], 784, 10, neurons=c["V"], k=c["V"] // 2, p=0.5, T=c["T"], seed=0,
                         dtype=dtype)
    order = example_orders(c["N"], x.shape[0], 1, torch_generator(0, "bench-order"))[:, :c["L"]]
    rule = _rule(c["rule"], c["T"])
    setup = _start_measuring()
    times = []
    for _ in range(c.get("reps", 1)):
        learner = RuleLearner(nets, rule, 0.01)
        t0 = time.perf_counter()
        learner.learn(x, y, order)
        times.append(time.perf_counter() - t0)
    dt = min(times)
    return {"seconds": dt, "examples_per_s": c["N"] * c["L"] / dt, "data": source,
            "update_fraction": float(learner.updates.double().mean()) / c["L"],
            "setup_rss_mb": setup}


def case_train_ref(c: dict) -> dict:
    """The reference: one network, one example at a time, float64 numpy."""
    import reference as ref
    import torch
    from plasticity.learning import example_orders
    from plasticity.network import make_networks
    from plasticity.seeding import torch_generator

    x, y, source = _load_images(max(c["L"], 2000))
    nets = make_networks(1, 784, 10, neurons=c["V"], k=c["V"] // 2, p=0.5, T=c["T"], seed=0,
                         dtype=torch.float64)
    order = example_orders(1, x.shape[0], 1, torch_generator(0, "bench-order"))[0, :c["L"]]
    rnn, out = _rule(c["rule"], c["T"]).tables(dtype=torch.float64)
    A, G = ref.numpy64(nets.A[0]), ref.numpy64(nets.graph[0])
    xs, ys = ref.numpy64(x), y.numpy()
    setup = _start_measuring()
    t0 = time.perf_counter()
    rnn = None if rnn is None else ref.numpy64(rnn)
    _, _, updates = ref.train_one(A, G, nets.k, c["T"], 10, rnn, ref.numpy64(out), xs, ys,
                                  order.numpy())
    dt = time.perf_counter() - t0
    return {"seconds": dt, "examples_per_s": c["L"] / dt, "data": source,
            "update_fraction": updates / c["L"], "setup_rss_mb": setup}


def _meta_inputs(c: dict, dtype):
    import torch
    from plasticity.data import load_dataset
    from plasticity.network import make_networks

    ds = load_dataset("relu1")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(ds.n_train, generator=g)[:c["E"] * c["B"]].view(c["E"], c["B"])
    nets = make_networks(c["E"], ds.dim, ds.n_classes, neurons=c["V"], k=c["V"] // 2, p=0.5,
                         T=c["T"], seed=0, dtype=dtype, key="bench-meta")
    S = 2 ** c["T"]
    rnn = (torch.randn(S, S, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    out = (torch.randn(S, 2, generator=g, dtype=torch.float64) * 0.1).to(dtype).requires_grad_()
    return nets, ds.x_train[idx].to(dtype), ds.y_train[idx], rnn, out


def case_meta(c: dict) -> dict:
    """Engine: one meta step (loss over E batched episodes of B examples, backward)."""
    import torch
    from plasticity.meta import episode_loss
    from plasticity.rules import Scheme

    nets, xs, ys, rnn, out = _meta_inputs(c, getattr(torch, c["dtype"]))
    setup = _start_measuring()
    times = []
    for _ in range(c["reps"] + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        loss = episode_loss(nets, rnn, out, xs, ys, eta=0.01, mode="additive", scheme=Scheme(),
                            checkpoint_every=c["checkpoint_every"])
        loss.backward()
        times.append(time.perf_counter() - t0)
        rnn.grad = out.grad = None
    dt = min(times[1:])
    return {"seconds": dt, "examples_per_s": c["E"] * c["B"] / dt, "setup_rss_mb": setup}


def case_meta_ref(c: dict) -> dict:
    """Reference: the same step, episode by episode and example by example, float64."""
    import reference as ref
    import torch

    nets, xs, ys, rnn, out = _meta_inputs(c, torch.float64)
    setup = _start_measuring()
    times = []
    for _ in range(c.get("reps", 1)):
        t0 = time.perf_counter()
        loss = ref.meta_step_reference(nets, rnn, out, xs, ys, eta=0.01)
        loss.backward()
        times.append(time.perf_counter() - t0)
        rnn.grad = out.grad = None
    dt = min(times)
    return {"seconds": dt, "examples_per_s": c["E"] * c["B"] / dt, "setup_rss_mb": setup}


CASES = {"train": case_train, "train_ref": case_train_ref, "meta": case_meta,
         "meta_ref": case_meta_ref}


def run_case(c: dict, threads: int) -> dict:
    """Run one case in a fresh interpreter; returns its result with peak RSS."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(c), "--threads",
                           str(threads)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {**c, "error": proc.stderr.strip().splitlines()[-1:]}
    return {**c, **json.loads(proc.stdout.strip().splitlines()[-1])}


# ----------------------------------------------------------------------------- plan


def plan(quick: bool) -> list[dict]:
    """The cases of one run; ``quick`` shrinks example counts and drops the largest sizes."""
    L1 = 500 if quick else 2000  # examples, 1 network
    L16 = 60 if quick else 150  # examples per network, 16 networks
    Lref = 60 if quick else 200  # reference examples (and the engine on the same examples)
    reps = 2 if quick else 3  # timings are the best of reps (the machine may be shared)
    cases: list[dict] = []

    def train(tag, **kw):
        short = kw.get("same_as_ref") or kw["V"] < 1000
        cases.append({"kind": "train", "tag": tag, "T": 3, "dtype": "float32",
                      "reps": reps if short else 1, **kw})

    def train_ref(tag, V, rule):
        cases.append({"kind": "train_ref", "tag": tag, "V": V, "T": 3, "rule": rule, "L": Lref,
                      "dtype": "float64"})

    # (i) |V| = 1000, T = 3: reference; engine on the same examples (float64 and float32);
    # engine on a longer stream; 16 batched networks
    for rule in ("hebb+perceptron", "perceptron") if quick else RULES:
        train_ref("i", 1000, rule)
        train("i", V=1000, N=1, L=Lref, rule=rule, dtype="float64", same_as_ref=True)
        train("i", V=1000, N=1, L=Lref, rule=rule, same_as_ref=True)
        train("i", V=1000, N=1, L=L1, rule=rule)
        train("i", V=1000, N=16, L=L16, rule=rule)
    # (iii) rule-based training: scaling with |V| and with the number of batched networks
    for V in (100, 300):
        train_ref("iii", V, "hebb+perceptron")
        for N in (1, 4, 16):
            train("iii", V=V, N=N, L=L1 if N == 1 else L16 * 4, rule="hebb+perceptron")
    if not quick:
        train("iii", V=1000, N=4, L=L16, rule="hebb+perceptron")

    def meta(tag, **kw):
        cases.append({"kind": "meta", "tag": tag, "T": 3, "reps": reps, "checkpoint_every": 0,
                      "dtype": "float64", **kw})

    def meta_ref(tag, V, B):
        cases.append({"kind": "meta_ref", "tag": tag, "V": V, "T": 3, "E": 1, "B": B,
                      "dtype": "float64", "reps": reps if V <= 100 else 1})

    # (ii) one meta step, |V| = 100, B = 100, E = 1 and 16 episodes
    meta_ref("ii", 100, 100)
    for dtype in ("float64", "float32"):
        for E in (1, 16):
            meta("ii", V=100, E=E, B=100, dtype=dtype)
    # (iii) meta scaling with B (E = 16) and with |V| (E = 4, checkpointed to bound memory)
    for B in (25, 400):
        meta_ref("iii", 100, B)
        meta("iii", V=100, E=16, B=B)
    for V in (100, 300) if quick else (100, 300, 1000):
        if V > 100:
            meta_ref("iii", V, 100 if V <= 300 else 25)
        meta("iii", V=V, E=4, B=100, checkpoint_every=10, **({"reps": 1} if V >= 1000 else {}))
    # (iv) memory: checkpointing at B = 100 and 400 (the un-checkpointed runs are above)
    for B in (100, 400):
        for ck in (10, 50):
            meta("iv", V=100, E=16, B=B, checkpoint_every=ck)
    return cases


# ----------------------------------------------------------------------------- report


def _find(results, **kw):
    for r in results:
        if all(r.get(k) == v for k, v in kw.items()) and "error" not in r:
            return r
    return None


def summarise(results: list[dict]) -> dict:
    """Ratios against the reference and the two targets."""
    out: dict = {}
    for r in results:
        if r["kind"] == "train" and "error" not in r:
            ref = _find(results, kind="train_ref", V=r["V"], rule=r["rule"])
            if ref:
                r["x_reference"] = r["examples_per_s"] / ref["examples_per_s"]
        if r["kind"] == "meta" and "error" not in r:
            ref = (_find(results, kind="meta_ref", V=r["V"], B=r["B"])
                   or _find(results, kind="meta_ref", V=r["V"]))
            if ref:
                r["x_reference"] = r["examples_per_s"] / ref["examples_per_s"]
    one = [r for r in results if r["kind"] == "train" and r["V"] == 1000 and r["N"] == 1
           and r["dtype"] == "float32" and not r.get("same_as_ref") and "error" not in r]
    for r in one:
        out[f"train_1net_V1000_T3_{r['rule']}_examples_per_s"] = r["examples_per_s"]
        out[f"train_1net_V1000_T3_{r['rule']}_meets_500"] = r["examples_per_s"] >= 500
    m16 = [r for r in results if r["kind"] == "meta" and r["tag"] == "ii" and r["E"] == 16]
    for r in m16:
        if "x_reference" in r:
            out[f"meta_E16_{r['dtype']}_x_reference"] = r["x_reference"]
            out[f"meta_E16_{r['dtype']}_meets_10x"] = r["x_reference"] >= 10
    return out


def print_table(results: list[dict]) -> None:
    head = (f"{'sec':>4} {'kind':<9} {'V':>5} {'N/E':>4} {'L/B':>5} {'rule/ckpt':<16} {'dtype':<8}"
            f" {'ex/s':>9} {'x ref':>7} {'upd%':>5} {'RSS MB':>7} {'+MB':>6}")
    print(head)
    print("-" * len(head))
    for r in results:
        n = r.get("N", r.get("E", 1))
        size = r.get("L", r.get("B"))
        what = r.get("rule", f"ckpt={r.get('checkpoint_every', 0)}")
        if r.get("same_as_ref"):
            what += "*"
        if "error" in r:
            print(f"{r['tag']:>4} {r['kind']:<9} {r['V']:>5} {n:>4} {size:>5} {what:<16} ERROR "
                  f"{r['error']}")
            continue
        ratio = f"{r['x_reference']:.1f}" if "x_reference" in r else ""
        upd = f"{100 * r['update_fraction']:.0f}" if "update_fraction" in r else ""
        print(f"{r['tag']:>4} {r['kind']:<9} {r['V']:>5} {n:>4} {size:>5} {what:<16} "
              f"{r.get('dtype', 'float64'):<8} {r['examples_per_s']:>9.1f} {ratio:>7} {upd:>5} "
              f"{r['peak_rss_mb']:>7.0f} {r['compute_peak_rss_mb'] - r['setup_rss_mb']:>6.0f}")
    print("* engine on exactly the reference's examples (same network, rule and order)")
    print("RSS MB: process peak (getrusage); +MB: the timed computation's peak above the RSS "
          "after setup")


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: %.2f, %.2f, %.2f" % os.getloadavg()


def _idle_cores() -> int:
    """Cores not busy with other work (1-minute load average), at least 1. More torch threads
    than idle cores is far worse than fewer: OpenMP threads wait on the preempted one."""
    cpus = os.cpu_count() or 1
    return max(1, min(cpus, round(cpus - os.getloadavg()[0])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer examples and sizes (~1-2 min)")
    ap.add_argument("--out", default=None, help="write all results as JSON here")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0 = auto: the cores left idle by the current load)")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    threads = args.threads or _idle_cores()
    if args.case is not None:
        import torch

        torch.set_num_threads(threads)
        c = json.loads(args.case)
        res = CASES[c["kind"]](c)
        res["compute_peak_rss_mb"] = _compute_peak_mb()
        res["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(res))
        return
    import torch

    info = {"uptime_before": _uptime(), "cpus": os.cpu_count(), "threads": threads,
            "torch": torch.__version__, "python": sys.version.split()[0], "quick": args.quick}
    print(f"bench_engine: {info['uptime_before']}")
    print(f"threads={threads} of {info['cpus']} cpus, torch {info['torch']}")
    results = []
    for c in plan(args.quick):
        r = run_case(c, threads)
        results.append(r)
        brief = "ERROR" if "error" in r else f"{r['examples_per_s']:.1f} ex/s"
        print(f"  {c['kind']:<9} {json.dumps({k: v for k, v in c.items() if k != 'kind'})}"
              f" -> {brief}", flush=True)
    info["uptime_after"] = _uptime()
    data = next((r["data"] for r in results if "data" in r), None)
    summary = summarise(results)
    print()
    print(f"data for rule-based training: {data}")
    print_table(results)
    print()
    for k, v in summary.items():
        print(f"{k}: {v:.2f}" if isinstance(v, float) and not isinstance(v, bool) else f"{k}: {v}")
    print(f"load: before [{info['uptime_before']}] after [{info['uptime_after']}]")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"info": info, "data": data, "summary": summary,
                                              "results": results}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
