"""Throughput and memory of the engine against the slow float64 reference (tests/reference.py).

    python bench/bench_engine.py [--quick | --smoke] [--out FILE.json] [--threads N]
                                 [--device cuda]

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
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

# the T=3 rule meta-learned by `study fig3 --preset paper`, shipped as package data
LEARNED = HERE.parent / "platform" / "plasticity" / "rules" / "data" / "fig3_T3.json"
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


def _load_images(n_train: int, random: bool = False):
    """MNIST if the data root is prepared (and not ``random``), else random 784-dim data with 10
    linear classes."""
    import torch
    from plasticity import PlasticityError
    from plasticity.data import load_dataset

    try:
        if random:
            raise PlasticityError("random data asked for")
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
    RNN + output rules meta-learned on ReLU1 for Fig. 3 (fig3_T3)."""
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


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def case_train(c: dict) -> dict:
    """Engine rule-based training of c["N"] networks on c["L"] examples each."""
    import torch
    from plasticity.learning import RuleLearner, example_orders
    from plasticity.network import make_networks
    from plasticity.seeding import torch_generator

    dtype, device = getattr(torch, c["dtype"]), c.get("device", "cpu")
    x, y, source = _load_images(max(c["L"], 2000), c.get("data") == "random")
    x, y = x.to(device, dtype), y.to(device)
    nets = make_networks(c["N"], 784, 10, neurons=c["V"], k=c["V"] // 2, p=0.5, T=c["T"], seed=0,
                         dtype=dtype, device=device)
    order = example_orders(c["N"], x.shape[0], 1, torch_generator(0, "bench-order"),
                           device)[:, :c["L"]]
    rule = _rule(c["rule"], c["T"])
    RuleLearner(nets, rule, 0.01).learn(x, y, order[:, :8])  # warm-up (CUDA: kernels, caches)
    _sync(device)
    setup = _start_measuring()
    times = []
    for _ in range(c.get("reps", 1)):
        # one_at_a_time: the same N networks, each its own learner, one after another
        parts = ([(nets.select(slice(n, n + 1)), order[n:n + 1]) for n in range(c["N"])]
                 if c.get("one_at_a_time") else [(nets, order)])
        t0 = time.perf_counter()
        updates = []
        for part, part_order in parts:
            learner = RuleLearner(part, rule, 0.01)
            learner.learn(x, y, part_order)
            updates.append(learner.updates)
        _sync(device)
        times.append(time.perf_counter() - t0)
    dt = min(times)
    return {"seconds": dt, "examples_per_s": c["N"] * c["L"] / dt, "data": source,
            "update_fraction": float(torch.cat(updates).double().mean()) / c["L"],
            "setup_rss_mb": setup, **_cuda_peak(device)}


def case_forward(c: dict) -> dict:
    """The forward-only bound of rule-based training: the same examples through batched forward
    passes (256 at a time, the weights of a network that has learned), no updates."""
    import torch
    from plasticity.learning import example_orders
    from plasticity.network import make_networks
    from plasticity.seeding import torch_generator

    dtype, device = getattr(torch, c["dtype"]), c.get("device", "cpu")
    x, _, source = _load_images(max(c["L"], 2000), c.get("data") == "random")
    x = x.to(device, dtype)
    nets = make_networks(c["N"], 784, 10, neurons=c["V"], k=c["V"] // 2, p=0.5, T=c["T"], seed=0,
                         dtype=dtype, device=device)
    order = example_orders(c["N"], x.shape[0], 1, torch_generator(0, "bench-order"),
                           device)[:, :c["L"]]
    g = torch.Generator().manual_seed(0)
    W = (torch.randn(nets.graph.shape, generator=g, dtype=torch.float64) * 0.01).to(device, dtype)
    W = W * nets.graph
    U = torch.randn(c["N"], 10, c["V"], generator=g, dtype=torch.float64).to(device, dtype)
    setup = _start_measuring()
    times = []
    with torch.no_grad():
        for _ in range(c.get("reps", 1) + 1):
            t0 = time.perf_counter()
            for s in range(0, c["L"], 256):
                nets.forward(x[order[:, s:s + 256]], W, U)
            _sync(device)
            times.append(time.perf_counter() - t0)
    dt = min(times[1:])
    return {"seconds": dt, "examples_per_s": c["N"] * c["L"] / dt, "data": source,
            "setup_rss_mb": setup, **_cuda_peak(device)}


def _cuda_peak(device: str) -> dict:
    import torch

    if not device.startswith("cuda"):
        return {}
    return {"cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20}


def case_train_ref(c: dict) -> dict:
    """The reference: one network, one example at a time, float64 numpy."""
    import reference as ref
    import torch
    from plasticity.learning import example_orders
    from plasticity.network import make_networks
    from plasticity.seeding import torch_generator

    x, y, source = _load_images(max(c["L"], 2000), c.get("data") == "random")
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


def _meta_inputs(c: dict, dtype, device="cpu"):
    import torch
    from plasticity.data import load_dataset
    from plasticity.network import make_networks

    ds = load_dataset("relu1")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(ds.n_train, generator=g)[:c["E"] * c["B"]].view(c["E"], c["B"])
    nets = make_networks(c["E"], ds.dim, ds.n_classes, neurons=c["V"], k=c["V"] // 2, p=0.5,
                         T=c["T"], seed=0, dtype=dtype, key="bench-meta", device=device)
    S = 2 ** c["T"]
    rnn = torch.randn(S, S, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()
    out = (torch.randn(S, 2, generator=g, dtype=torch.float64) * 0.1).to(device, dtype)
    out.requires_grad_()
    return (nets, ds.x_train[idx].to(device, dtype), ds.y_train[idx].to(device), rnn, out)


def case_meta(c: dict) -> dict:
    """Engine: one meta step (loss over E batched episodes of B examples, backward)."""
    import torch
    from plasticity.meta import episode_loss
    from plasticity.rules import Scheme

    device = c.get("device", "cpu")
    nets, xs, ys, rnn, out = _meta_inputs(c, getattr(torch, c["dtype"]), device)
    setup = _start_measuring()
    times = []
    for _ in range(c["reps"] + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        loss = episode_loss(nets, rnn, out, xs, ys, eta=0.01, mode="additive", scheme=Scheme(),
                            checkpoint_every=c["checkpoint_every"])
        loss.backward()
        _sync(device)
        times.append(time.perf_counter() - t0)
        rnn.grad = out.grad = None
    dt = min(times[1:])
    return {"seconds": dt, "examples_per_s": c["E"] * c["B"] / dt, "setup_rss_mb": setup,
            **_cuda_peak(device)}


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


CASES = {"train": case_train, "train_ref": case_train_ref, "forward": case_forward,
         "meta": case_meta, "meta_ref": case_meta_ref}


def run_case(c: dict, threads: int) -> dict:
    """Run one case in a fresh interpreter; returns its result with peak RSS."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(c), "--threads",
                           str(threads)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {**c, "error": proc.stderr.strip().splitlines()[-1:]}
    return {**c, **json.loads(proc.stdout.strip().splitlines()[-1])}


# ----------------------------------------------------------------------------- plan


def plan(quick: bool, device: str = "cpu", smoke: bool = False) -> list[dict]:
    """The cases of one run; ``quick`` shrinks example counts and drops the largest sizes;
    ``smoke`` (the device check's CPU dry run) runs one tiny case of every kind. Engine cases run
    on ``device``; the float64 references always on the CPU."""
    L1 = 500 if quick else 2000  # examples, 1 network
    L16 = 60 if quick else 150  # examples per network, 16 networks (and 1 network on the same)
    Lref = 60 if quick else 200  # reference examples (and the engine on the same examples)
    reps = 2 if quick else 3  # timings are the best of reps (the machine may be shared)
    cases: list[dict] = []
    dev = {} if device == "cpu" else {"device": device}
    if smoke:
        rnd = {"data": "random"}
        cases.append({"kind": "train_ref", "tag": "i", "V": 100, "T": 3, "rule": "learned"
                      if "learned" in RULES else "dense", "L": 20, "dtype": "float64", **rnd})
        for N in (1, 4):
            cases.append({"kind": "train", "tag": "i", "V": 100, "N": N, "L": 40, "T": 3,
                          "rule": cases[0]["rule"], "dtype": "float32", **dev, **rnd})
        cases.append({"kind": "forward", "tag": "i", "V": 100, "N": 1, "L": 300, "T": 3,
                      "dtype": "float32", **dev, **rnd})
        cases.append({"kind": "meta_ref", "tag": "ii", "V": 30, "T": 3, "E": 1, "B": 10,
                      "dtype": "float64", "reps": 1})
        cases.append({"kind": "meta", "tag": "ii", "V": 30, "T": 3, "E": 4, "B": 10, "reps": 1,
                      "checkpoint_every": 0, "dtype": "float32", **dev})
        return cases

    def train(tag, **kw):
        short = kw.get("same_as_ref") or kw["V"] < 1000
        cases.append({"kind": "train", "tag": tag, "T": 3, "dtype": "float32",
                      "reps": reps if short else 1, **dev, **kw})

    def train_ref(tag, V, rule):
        cases.append({"kind": "train_ref", "tag": tag, "V": V, "T": 3, "rule": rule, "L": Lref,
                      "dtype": "float64"})

    # (i) |V| = 1000, T = 3: the forward-only bound; the reference; the engine on the same
    # examples (float64 and float32); on a longer stream; 16 batched networks, and the same 16
    # networks learned one at a time (each its own learner)
    cases.append({"kind": "forward", "tag": "i", "V": 1000, "N": 1, "L": L1, "T": 3,
                  "dtype": "float32", "reps": reps, **dev})
    for rule in ("hebb+perceptron", "perceptron") if quick else RULES:
        train_ref("i", 1000, rule)
        train("i", V=1000, N=1, L=Lref, rule=rule, dtype="float64", same_as_ref=True)
        train("i", V=1000, N=1, L=Lref, rule=rule, same_as_ref=True)
        train("i", V=1000, N=1, L=L1, rule=rule)
        train("i", V=1000, N=16, L=L16, rule=rule, one_at_a_time=True, reps=2)
        train("i", V=1000, N=16, L=L16, rule=rule, reps=2)
    # (iii) rule-based training: scaling with |V| and with the number of batched networks
    for V in (100, 300):
        train_ref("iii", V, "hebb+perceptron")
        for N in (1, 4, 16):
            train("iii", V=V, N=N, L=L1 if N == 1 else L16 * 4, rule="hebb+perceptron")
    if not quick:
        train("iii", V=1000, N=4, L=L16, rule="hebb+perceptron")

    def meta(tag, **kw):
        cases.append({"kind": "meta", "tag": tag, "T": 3, "reps": reps, "checkpoint_every": 0,
                      "dtype": "float64", **dev, **kw})

    def meta_ref(tag, V, B):
        cases.append({"kind": "meta_ref", "tag": tag, "V": V, "T": 3, "E": 1, "B": B,
                      "dtype": "float64", "reps": reps if V <= 100 else 1})

    # (ii) one meta step, |V| = 100, B = 100, E = 1, 16 and 64 episodes
    meta_ref("ii", 100, 100)
    for dtype in ("float64", "float32"):
        for E in (1, 16, 64):
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
    """Ratios against the reference and the targets (issue 13): one |V| = 1000 network at
    >= 2,500 ex/s (learned rule) and >= 1,200 ex/s (hebb+perceptron, >= 10x the reference on
    the same examples); 16 batched networks >= one network on the same examples, every rule;
    the meta step with E = 1 >= the per-example reference, E = 16 >= 25x, E = 64 >= 50x."""
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
    bound = _find(results, kind="forward", V=1000, N=1)
    if bound:
        out["forward_bound_V1000_examples_per_s"] = bound["examples_per_s"]
    one = [r for r in results if r["kind"] == "train" and r["V"] == 1000 and r["N"] == 1
           and r["dtype"] == "float32" and not r.get("same_as_ref") and "error" not in r]
    longest = {}
    for r in one:
        if r["L"] >= longest.get(r["rule"], {"L": 0})["L"]:
            longest[r["rule"]] = r
    targets = {"learned": 2500, "hebb+perceptron": 1200}
    for rule, r in longest.items():
        out[f"train_1net_V1000_T3_{rule}_examples_per_s"] = r["examples_per_s"]
        out[f"train_1net_V1000_T3_{rule}_update_fraction"] = r["update_fraction"]
        if bound:
            out[f"train_1net_V1000_T3_{rule}_of_forward_bound"] = (r["examples_per_s"]
                                                                  / bound["examples_per_s"])
        if rule in targets:
            out[f"train_1net_V1000_T3_{rule}_meets_{targets[rule]}"] = (
                r["examples_per_s"] >= targets[rule])
        same = _find(results, kind="train", V=1000, N=1, rule=rule, dtype="float32",
                     same_as_ref=True)
        if same and "x_reference" in same:
            out[f"train_1net_V1000_T3_{rule}_same_examples_x_reference"] = same["x_reference"]
            if rule == "hebb+perceptron":
                out[f"train_1net_V1000_T3_{rule}_meets_10x"] = same["x_reference"] >= 10
        n16 = next((q for q in results if q["kind"] == "train" and q["V"] == 1000
                    and q["N"] == 16 and q["rule"] == rule and not q.get("one_at_a_time")
                    and "error" not in q), None)
        alone = _find(results, kind="train", V=1000, N=16, rule=rule, one_at_a_time=True)
        if n16 and alone:
            out[f"train_16net_V1000_T3_{rule}_x_one_at_a_time"] = (n16["examples_per_s"]
                                                                   / alone["examples_per_s"])
            out[f"train_16net_V1000_T3_{rule}_meets_1x"] = (n16["examples_per_s"]
                                                            >= alone["examples_per_s"])
    goals = {1: 1, 16: 25, 64: 50}
    for r in results:
        if r["kind"] == "meta" and r["tag"] == "ii" and "x_reference" in r:
            key = f"meta_E{r['E']}_{r['dtype']}"
            out[f"{key}_x_reference"] = r["x_reference"]
            if r["E"] in goals:
                out[f"{key}_meets_{goals[r['E']]}x"] = r["x_reference"] >= goals[r["E"]]
    return out


def print_table(results: list[dict]) -> None:
    head = (f"{'sec':>4} {'kind':<9} {'V':>5} {'N/E':>4} {'L/B':>5} {'rule/ckpt':<16} {'dtype':<8}"
            f" {'ex/s':>9} {'x ref':>7} {'upd%':>5} {'RSS MB':>7} {'+MB':>6}")
    print(head)
    print("-" * len(head))
    for r in results:
        n = r.get("N", r.get("E", 1))
        size = r.get("L", r.get("B"))
        what = r.get("rule", "no updates" if r["kind"] == "forward"
                     else f"ckpt={r.get('checkpoint_every', 0)}")
        if r.get("same_as_ref"):
            what += "*"
        if r.get("one_at_a_time"):
            what += " 1by1"
        if "error" in r:
            print(f"{r['tag']:>4} {r['kind']:<9} {r['V']:>5} {n:>4} {size:>5} {what:<16} ERROR "
                  f"{r['error']}")
            continue
        ratio = f"{r['x_reference']:.1f}" if "x_reference" in r else ""
        upd = f"{100 * r['update_fraction']:.0f}" if "update_fraction" in r else ""
        print(f"{r['tag']:>4} {r['kind']:<9} {r['V']:>5} {n:>4} {size:>5} {what:<16} "
              f"{r.get('dtype', 'float64'):<8} {r['examples_per_s']:>9.1f} {ratio:>7} {upd:>5} "
              f"{r['peak_rss_mb']:>7.0f} {r['compute_peak_rss_mb'] - r['setup_rss_mb']:>6.0f}")
    print("* engine on exactly the reference's examples (same network, rule and order); "
          "1by1: the same N networks learned one at a time")
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
    ap.add_argument("--device", default="cpu",
                    help="device of the engine's cases, e.g. cuda (references stay on the CPU)")
    ap.add_argument("--smoke", action="store_true",
                    help="one tiny case of every kind (seconds; the device check's dry run)")
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
            "torch": torch.__version__, "python": sys.version.split()[0], "quick": args.quick,
            "smoke": args.smoke, "device": args.device,
            "device_name": (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
                            and torch.cuda.is_available() else platform.processor() or "cpu")}
    print(f"bench_engine: {info['uptime_before']}")
    print(f"threads={threads} of {info['cpus']} cpus, torch {info['torch']}")
    results = []
    for c in plan(args.quick, args.device, args.smoke):
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
