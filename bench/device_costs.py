"""The costs rule-based learning's chunk size and update form are chosen from, on one device.

    python bench/device_costs.py [--device cuda] [--V 1000] [--out FILE.json] [--reps 20]

Measures, for T = 3 networks of |V| neurons (k = |V|/2) on MNIST-sized inputs (d = 784):
- a forward pass of a chunk of C examples through 1 network, C in 1..128, fitted as a + b C
  (rounds 2..T and the output; round 1 is computed a segment at a time);
- one update of 1 network and of 16 networks (mistake rows), in the exact forms: the rank-2^T
  product (``RuleLearner``'s torch form: one GEMM + graph mask), the gather of the table over
  histories (``rules.tables.rnn_delta`` + ``addcmul_``) and, on a CPU where it compiles, the
  one-pass kernel (``plasticity.kernels``, float32);
and prints the learner's cost constants (BETA = b / a, UPSILON = u / a, see
``plasticity.learning.CHUNK_COSTS``) and which update form is faster here. Nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "platform"))


def _timer(device: str, fn, reps: int) -> float:
    """Median seconds of ``fn()`` over ``reps`` calls after one warm-up."""
    fn()
    ts = []
    for _ in range(reps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def _update_costs(device: str, V: int, n: int, tab: torch.Tensor, reps: int) -> dict:
    """Seconds of one update of n networks in each exact form."""
    from plasticity import kernels
    from plasticity.rules.tables import rnn_delta

    S = tab.shape[0]
    G = (torch.rand(n, V, V, device=device) < 0.5).float()
    W = torch.randn(n, V, V, device=device) * G
    hist = torch.randint(0, S, (n, V), device=device)
    scale = torch.full((n,), 1.0, device=device)
    states = torch.arange(S, device=device).view(1, -1, 1)

    def product():
        W.baddbmm_(tab.t()[hist], (hist.unsqueeze(1) == states).float())
        W.mul_(G)

    def gather():
        W.addcmul_(rnn_delta(tab, hist, scale), G)

    out = {"product": _timer(device, product, reps), "gather": _timer(device, gather, reps)}
    if kernels.usable(W, S):
        G8, tt, h8 = G.to(torch.uint8), kernels.pad_tables(tab.t()), hist.to(torch.uint8)
        out["kernel"] = _timer(device, lambda: kernels.rule_update(W, G8, tt, h8, None, False),
                               reps)
    return out


def measure(device: str, V: int, reps: int) -> dict:
    from plasticity.network import make_networks

    torch.manual_seed(0)
    out: dict = {"device": device, "V": V}
    nets = make_networks(1, 784, 10, neurons=V, k=V // 2, p=0.5, T=3, seed=0, device=device)
    W = torch.randn(1, V, V, device=device) * 0.01 * nets.graph
    U = torch.randn(1, 10, V, device=device)
    x = torch.rand(1, 128, 784, device=device)
    ax, h1, bits = nets.first_round(x)
    fwd = {}
    with torch.no_grad():
        for C in (1, 2, 4, 8, 16, 32, 64, 128):
            def f(C=C):
                h, _ = nets.later_rounds(ax[:, :C], h1[:, :C], bits[:, :C], W)
                torch.bmm(h, U.transpose(1, 2)).argmax(-1)
            fwd[C] = _timer(device, f, reps)
    cs = torch.tensor(list(fwd), dtype=torch.float64)
    ts = torch.tensor(list(fwd.values()), dtype=torch.float64)
    b = float(((cs - cs.mean()) * (ts - ts.mean())).sum() / ((cs - cs.mean()) ** 2).sum())
    a = max(float(ts.mean() - b * cs.mean()), 1e-9)
    out["forward_seconds"] = {str(k): v for k, v in fwd.items()}
    out["forward_fit"] = {"a": a, "b": b}
    tab = torch.randn(8, 8, device=device) * 0.01  # 2^T x 2^T, T = 3
    upd = {n: _update_costs(device, V, n, tab, reps) for n in (1, 16)}
    out["update_seconds"] = {str(k): v for k, v in upd.items()}
    u = upd[1]["product"]
    out["suggested_chunk_costs"] = {"BETA": b / a, "UPSILON": u / a}
    if "kernel" in upd[1]:  # the learner's constants when the compiled update runs
        out["suggested_chunk_costs_kernel"] = {"BETA": b / a, "UPSILON": upd[1]["kernel"] / a}
    out["faster_update_form"] = {str(n): min(v, key=v.get) for n, v in upd.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--V", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res = measure(args.device, args.V, args.reps)
    fit = res["forward_fit"]
    print(f"{args.device} |V|={args.V}: forward a={fit['a'] * 1e3:.3f} ms + "
          f"b={fit['b'] * 1e3:.4f} ms/example; update (1 network) "
          + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in res["update_seconds"]["1"].items())
          + "; (16 networks) "
          + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in res["update_seconds"]["16"].items()))
    for key in ("suggested_chunk_costs", "suggested_chunk_costs_kernel"):
        if key in res:
            print(f"{key}: BETA={res[key]['BETA']:.3f} UPSILON={res[key]['UPSILON']:.3f}")
    print(f"faster update form: {res['faster_update_form']}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
