"""The recurrence-dynamics ablation (docs/dynamics.md): which dynamics make T=3 rules beat T=1?

For every combination of recurrence (paper: W h + A x | code: W (h + A x)), firing (positive |
topk) and meta-learning loss (logits | softmax), and every meta-learning seed: a T=3 RNN + output
rule is meta-learned on ReLU1 with a small network and a T=1 output rule on Halfspace (as Fig. 3
did), both under that combination; then fresh large networks (one pass) are trained with each
rule under the same dynamics on the test data sets, and every T=3 network's recurrence is
measured (``dynamics.recurrence_diagnostics``). A meta-learning run whose rule leaves a small
network at the majority-class frequency is reported as collapsed, never dropped.

Run as ``plasticity study dynamics`` (the fields are ``studies.StudyConfig``'s).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np

from .. import PlasticityError
from ..config import MetaConfig, TrainConfig
from ..meta import COLLAPSE_MARGIN
from . import run_child


def parse_combos(text: str) -> list[dict]:
    """"rec/firing/loss[/h<horizon>],..." -> [{recurrence, firing, meta_loss, horizon|None}]."""
    out = []
    for item in (c.strip() for c in text.split(",")):
        if not item:
            continue
        parts = item.split("/")
        horizon = None
        if len(parts) == 4 and parts[3].startswith("h") and parts[3][1:].isdigit():
            horizon = int(parts[3][1:])
            parts = parts[:3]
        if len(parts) != 3:
            raise PlasticityError(f"combo '{item}' is not recurrence/firing/meta_loss[/h<N>], "
                                  "e.g. code/topk/softmax or paper/positive/logits/h10000")
        rec, fir, loss = parts
        MetaConfig(recurrence=rec, firing=fir, meta_loss=loss)  # one-line errors for bad names
        out.append({"name": item, "recurrence": rec, "firing": fir, "meta_loss": loss,
                    "horizon": horizon})
    if not out:
        raise PlasticityError("combos is empty: give at least one recurrence/firing/meta_loss")
    return out


def _log(msg: str, t0: float) -> None:
    print(f"[{time.time() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _meta(sc, combo: dict, seed: int, T: int, ctx, out: Path):
    from ..data import load_dataset
    from ..meta import class_majority

    k = max(1, sc.small // 2)
    horizon = sc.meta_horizon if combo["horizon"] is None else combo["horizon"]
    cfg = MetaConfig(seed=seed, dataset="relu1" if T == 3 else "halfspace", neurons=sc.small, k=k,
                     T=T, learn="both" if T == 3 else "output", episodes=sc.meta_episodes,
                     batch=sc.meta_batch, steps=sc.meta_steps, horizon=horizon if T == 3 else 0,
                     eval_every=sc.meta_steps, eval_train=1000, eval_examples=1000,
                     dtype=sc.dtype, recurrence=combo["recurrence"], firing=combo["firing"],
                     meta_loss=combo["meta_loss"], n_train=sc.n_train_synthetic,
                     restarts=sc.meta_restarts, restart_after=sc.restart_after,
                     select_starts=sc.meta_starts)
    res = run_child("meta-train", cfg, ctx, out)
    majority = class_majority(cfg, load_dataset(cfg.dataset, data_seed=cfg.data_seed))
    acc = res["final_accuracy"]
    return res["rule"], {"loss_first": res["first_loss"], "loss_last": res["final_loss"],
                         "accuracy": acc, "majority": majority, "skipped": res["skipped_steps"],
                         "collapsed": bool(acc < majority + COLLAPSE_MARGIN),
                         "restarts_used": len(res["collapsed_starts"]),
                         "selection": res["selection"]}


def _large(sc, combo: dict, rule: str, dataset: str, T: int, ctx, out: Path) -> dict:
    cfg = TrainConfig(seed=sc.seed, dataset=dataset, neurons=sc.large, k=max(1, sc.large // 2),
                      T=T, networks=sc.seeds, passes=sc.passes, n_train=sc.n_train_synthetic,
                      n_test=sc.n_test, eval_every=10**9, eval_examples=1, dtype=sc.dtype,
                      recurrence=combo["recurrence"], firing=combo["firing"], rule=rule)
    res = run_child("train", cfg, ctx, out)
    cell = {"accuracy": (np.asarray(res["test_accuracy"]) * 100).tolist(), "updates": res["updates"]}
    if T > 1:
        cell["diagnostics"] = res["diagnostics"]
    return cell


def study_dynamics(sc, ctx, out: Path) -> dict:
    """The ablation; see the module docstring. Writes every learned rule under ``out/rules``;
    every meta-learning and every large-network training is a registered command's run."""
    t0 = time.time()
    runs = []
    for combo in parse_combos(sc.combos):
        for ms in range(sc.meta_seeds):
            seed = sc.seed + ms
            run = {"combo": combo["name"], "meta_seed": seed, "meta": {}, "cells": {}}
            rules = {}
            tag = combo["name"].replace("/", "-")
            for T in (1, 3):
                path, run["meta"][f"T={T}"] = _meta(sc, combo, seed, T, ctx,
                                                    out / "meta" / f"{tag}_seed{seed}_T{T}")
                rules[T] = out / "rules" / f"{tag}_seed{seed}_T{T}.json"
                rules[T].parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, rules[T])
            m3 = run["meta"]["T=3"]
            _log(f"{combo['name']} seed {seed}: T=3 meta loss {m3['loss_first']:.3f} -> "
                 f"{m3['loss_last']:.3f}, small-net accuracy {m3['accuracy']:.3f} "
                 f"(majority {m3['majority']:.3f}{', COLLAPSED' if m3['collapsed'] else ''})", t0)
            for name in sc.dynamics_dataset_list:
                for T in (1, 3):
                    cell = _large(sc, combo, str(rules[T]), name, T, ctx,
                                  out / "cells" / f"{tag}_seed{seed}_{name}_T{T}")
                    run["cells"][f"{name}/T={T}"] = cell
                    diag = cell.get("diagnostics")
                    extra = "" if diag is None else (
                        f"; h_T != h_1 on {np.mean(diag['h_T_differs']):.2f}, silent rounds "
                        f"{np.mean(diag['silent_rounds']):.2f}, W std {np.mean(diag['W_std']):.3g}")
                    _log(f"  {name} large T={T}: {np.round(cell['accuracy'], 1).tolist()}{extra}", t0)
            runs.append(run)
    return {"study": "dynamics", "runs": runs, "summary": summarize(runs),
            "seconds": time.time() - t0}


def summarize(runs: list[dict]) -> dict:
    """Per combination and cell: mean ± std over all runs (meta seeds x networks), the same over
    runs whose T=3 meta-learning did not collapse, the T=3 - T=1 gain per run, and diagnostics."""
    out: dict = {}
    for combo in dict.fromkeys(r["combo"] for r in runs):
        rs = [r for r in runs if r["combo"] == combo]
        ok = [r for r in rs if not r["meta"]["T=3"]["collapsed"]]
        s = {"meta_seeds": len(rs), "collapsed_T3": len(rs) - len(ok),
             "collapsed_T1": sum(r["meta"]["T=1"]["collapsed"] for r in rs), "cells": {}}
        for cell in rs[0]["cells"]:
            entry = {"all": _stats(rs, cell), "not_collapsed": _stats(ok, cell)}
            d = rs[0]["cells"][cell].get("diagnostics")
            if d is not None:
                entry["diagnostics"] = {k: float(np.mean([np.mean(r["cells"][cell]["diagnostics"][k])
                                                          for r in rs])) for k in d}
            s["cells"][cell] = entry
        for name in {c.split("/")[0] for c in rs[0]["cells"]}:
            gains = [np.mean(r["cells"][f"{name}/T=3"]["accuracy"])
                     - np.mean(r["cells"][f"{name}/T=1"]["accuracy"]) for r in rs]
            s["cells"][f"{name}/gain"] = {"per_seed": [float(g) for g in gains],
                                          "mean": float(np.mean(gains))}
        out[combo] = s
    return out


def _stats(group: list[dict], cell: str) -> dict | None:
    """Mean ± std of a cell's accuracies over a group of runs (None for no runs)."""
    if not group:
        return None
    a = np.concatenate([g["cells"][cell]["accuracy"] for g in group])
    return {"mean": float(np.mean(a)), "std": float(np.std(a)), "n": int(len(a))}


def _ms(e) -> str:
    return "-" if e is None else f"{e['mean']:.1f} ± {e['std']:.1f}"


def report_dynamics(result: dict) -> str:
    summary = result["summary"]
    first = next(iter(summary.values()))
    names = sorted({c.split("/")[0] for c in first["cells"]})
    head = ["combination", "collapsed T=3 / T=1"]
    for n in names:
        head += [f"{n} large T=1", f"{n} large T=3", f"{n} T=3 - T=1 per seed",
                 f"{n} T=3 not collapsed"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for combo, s in summary.items():
        row = [combo, f"{s['collapsed_T3']}/{s['meta_seeds']} / {s['collapsed_T1']}/{s['meta_seeds']}"]
        for n in names:
            c = s["cells"]
            gains = ", ".join(f"{g:+.1f}" for g in c[f"{n}/gain"]["per_seed"])
            row += [_ms(c[f"{n}/T=1"]["all"]), _ms(c[f"{n}/T=3"]["all"]), gains,
                    _ms(c[f"{n}/T=3"]["not_collapsed"])]
        lines.append("| " + " | ".join(row) + " |")
    diag = ["", "Recurrence of the trained large T=3 networks (mean over runs; 1,000 test examples):",
            "", "| combination | cell | h_T != h_1 | ‖h_T - h_1‖/‖h_1‖ | silent rounds | active "
            "fraction | ‖W h‖/‖A x‖ | W mean | W std |", "|---|---|---|---|---|---|---|---|---|"]
    for combo, s in summary.items():
        for n in names:
            d = s["cells"][f"{n}/T=3"]["diagnostics"]
            diag.append(f"| {combo} | {n} | {d['h_T_differs']:.2f} | {d['h_T_vs_h_1']:.3g} | "
                        f"{d['silent_rounds']:.2f} | {d['active_fraction']:.2f} | "
                        f"{d['Wh_vs_Ax']:.3g} | {d['W_mean']:.3g} | {d['W_std']:.3g} |")
    return ("Test accuracy %, mean ± std over meta-learning seeds x networks (one pass, large "
            "networks); per-seed gains are T=3 minus T=1 with both rules meta-learned under the "
            "same dynamics and seed. A T=3 run is collapsed when its rule leaves a small network "
            "at the majority-class frequency.\n\n" + "\n".join(lines + diag) + "\n")
