"""The robustness study (the robust-plasticity issue, docs/robustness.md): which networks trained
without backprop resist the worst case of every attack, against GD-trained ones?

For every data set (MNIST, Fashion-MNIST) and every seed, networks of |V| = ``large`` (k = |V|/2)
are trained on the full training set and frozen, then attacked on ``n_attack`` test images by
every attack of the suite (ours and the adversarial-robustness-toolbox's) at every L2 radius;
the per-example worst case over all of them is what counts. The networks (``rob_networks``):

- ``perceptron``: T = 1, the perceptron output rule on mistakes;
- ``margin``: the same rule with ``update_on=margin_rel`` at each gamma of ``rob_gammas``
  (Theorem 4's scheme: also updates on correct examples whose logit margin is below gamma times
  the logits' spread);
- ``ones`` / ``ones_margin``: the same two with input weights all 1 (Table 2's starred row, T=1*),
  the margin scheme at each gamma of ``rob_gammas``;
- ``learned_margin``: a T = 1 output rule meta-learned by GD under the margin scheme
  (``rob_learned_gamma``) on a |V| = ``small`` network of the same data set, one per seed (so
  the spread includes meta-learning's);
- ``ref_T1`` / ``ref_T3``: the reference dynamics (recurrence=code, firing=topk): the perceptron
  at T = 1, and ``rob_rule_T3`` (a T = 3 rule learned under those dynamics) at T = 3;
  ``ref_T3_margin``: the same T = 3 rule under the margin scheme (``rob_ref_gamma``);
- ``evolved_T3``: ``rob_evolved``, the best evolved T = 3 rule of the lifetime study;
- ``gd_output`` (T = 1, the output layer by Adam) and ``gd_full`` (T = 3, W and U by Adam
  through the rounds).

The transfer attack crafts on the seed's ``gd_full`` network (on the ``perceptron`` network for
``gd_full`` itself). Every cell is a ``plasticity attack`` run (an MLflow child run when
tracked); a cell whose result.json already holds the same config is reused (and, when tracked,
logged from its folder as a child run all the same), so an interrupted study continues where it
stopped. Writes result.json, report.md and robust_vs_clean.png.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
import time
from pathlib import Path

import numpy as np

from .. import PlasticityError
from ..config import MetaConfig, to_dict
from ..robustness.evaluate import check_attacks
from . import run_child

NETWORKS = ("perceptron", "margin", "ones", "ones_margin", "learned_margin", "ref_T1", "ref_T3",
            "ref_T3_margin", "evolved_T3", "gd_output", "gd_full")
ALL_ATTACKS = ("paper,fgsm,pgd_linf,pgd_l2,square,transfer,bpda,es,art_apgd_ce,art_apgd_dlr,"
               "art_square,art_hsj")
REFERENCE = {"recurrence": "code", "firing": "topk"}
TARGET = (1.0, 0.5, 0.85)  # the target: >= 50% at L2 eps 1 at clean accuracy >= 85%


def _list(name: str, text: str, cast=str) -> list:
    try:
        out = [cast(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PlasticityError(f"{name}='{text}' is not a comma-separated list of "
                              f"{cast.__name__}s") from None
    if not out:
        raise PlasticityError(f"{name} is empty: give at least one value")
    return out


def check_robustness_fields(sc) -> None:
    """One-line errors for the robustness study's own fields (StudyConfig.__post_init__)."""
    for n in _list("rob_networks", sc.rob_networks):
        if n not in NETWORKS:
            raise PlasticityError(f"unknown network '{n}' in rob_networks: use {', '.join(NETWORKS)}")
    for g in _list("rob_gammas", sc.rob_gammas, float):
        if g <= 0:
            raise PlasticityError(f"rob_gammas has gamma={g}: every gamma must be > 0")
    for name in ("rob_learned_gamma", "rob_ref_gamma"):
        if getattr(sc, name) <= 0:
            raise PlasticityError(f"{name}={getattr(sc, name)} must be > 0")
    for e in _list("rob_eps", sc.rob_eps, float):
        if e < 0:
            raise PlasticityError(f"rob_eps has eps={e}: every radius must be >= 0")
    check_attacks(_list("rob_attacks", sc.rob_attacks), "l2")
    from ..data.images import IMAGE_SETS

    for d in _list("rob_datasets", sc.rob_datasets):
        if d not in IMAGE_SETS:
            raise PlasticityError(f"rob_datasets has '{d}': the robustness study attacks image "
                                  f"sets ({', '.join(IMAGE_SETS)})")
    for name in ("n_attack", "rob_passes", "rob_steps", "rob_restarts", "rob_queries"):
        if getattr(sc, name) < 1:
            raise PlasticityError(f"{name}={getattr(sc, name)} must be >= 1")


def _log(msg: str, t0: float) -> None:
    print(f"[{time.time() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _cell(cfg, ctx, out: Path, t0: float, command: str = "attack") -> dict:
    """One ``command`` run, or its earlier result when out holds one of the same config."""
    done = out / "result.json"
    if done.is_file():
        try:
            old = json.loads(done.read_text())
            if old.get("config") == json.loads(json.dumps(to_dict(cfg))):
                _log(f"  {out.name}: reused (same config)", t0)
                _track_reused(ctx, out)
                return old
        except (OSError, ValueError):
            pass  # a damaged earlier result: run the cell again
    return run_child(command, cfg, ctx, out)


def _track_reused(ctx, out: Path) -> None:
    """A reused cell is still a child run of a tracked study: its folder's events replayed."""
    from .base import parent_run
    from .log import replay

    parent = parent_run(ctx)
    if ctx.tracking is None or parent is None or parent.failed is not None:
        return
    if (out / "events.jsonl").is_file():
        replay(out, ctx.tracking, parent_run_id=parent.inner.start())


def network_specs(sc, learned: str | None) -> list[tuple[str, dict]]:
    """(label, AttackConfig fields) of every network asked for, in rob_networks' order."""
    specs = []
    for n in _list("rob_networks", sc.rob_networks):
        if n == "perceptron":
            specs.append((n, dict(T=1, rule="perceptron")))
        elif n == "margin":
            specs += [(f"margin_rel {g:g}", dict(T=1, rule="perceptron", update_on="margin_rel",
                                                  gamma=g))
                      for g in _list("rob_gammas", sc.rob_gammas, float)]
        elif n == "ones":
            specs.append(("ones", dict(T=1, rule="perceptron", input_weights="ones")))
        elif n == "ones_margin":
            specs += [(f"ones margin_rel {g:g}", dict(T=1, rule="perceptron", input_weights="ones",
                                                       update_on="margin_rel", gamma=g))
                      for g in _list("rob_gammas", sc.rob_gammas, float)]
        elif n == "learned_margin":
            specs.append((n, dict(T=1, rule=learned)))
        elif n == "ref_T1":
            specs.append((n, dict(T=1, rule="perceptron", **REFERENCE)))
        elif n == "ref_T3":
            specs.append((n, dict(T=3, rule=sc.rob_rule_T3, **REFERENCE)))
        elif n == "ref_T3_margin":
            specs.append((n, dict(T=3, rule=sc.rob_rule_T3, update_on="margin_rel",
                                  gamma=sc.rob_ref_gamma, **REFERENCE)))
        elif n == "evolved_T3":
            specs.append((n, dict(T=3, rule=sc.rob_evolved)))
        elif n == "gd_output":
            specs.append((n, dict(T=1, train="gd", gd_method="output")))
        elif n == "gd_full":
            specs.append((n, dict(T=3, train="gd", gd_method="full")))
    return specs


def _learn_margin_rule(sc, dataset: str, seed: int, ctx, out: Path, t0: float) -> str:
    cfg = MetaConfig(seed=seed, dataset=dataset, neurons=sc.small, k=max(1, sc.small // 2),
                     T=1, learn="output", update_on="margin_rel", gamma=sc.rob_learned_gamma,
                     episodes=sc.meta_episodes, batch=sc.meta_batch, steps=sc.meta_steps,
                     eval_every=sc.meta_steps, eval_train=1000, eval_examples=1000,
                     n_train=sc.n_train_images, dtype=sc.dtype)
    res = _cell(cfg, ctx, out, t0, "meta-train")
    _log(f"{dataset} seed {seed}: margin rule learned (small-net accuracy {res['final_accuracy']:.3f})", t0)
    return res["rule"]


def study_robustness(sc, ctx, out: Path) -> dict:
    """The study; see the module docstring."""
    from .attack import AttackConfig

    t0 = time.time()
    attacks = _list("rob_attacks", sc.rob_attacks)
    eps = _list("rob_eps", sc.rob_eps, float)
    names = _list("rob_networks", sc.rob_networks)
    transfer = "transfer" in attacks
    cells: dict = {}
    for dataset in _list("rob_datasets", sc.rob_datasets):
        for s in range(sc.seeds):
            seed = sc.seed + s
            learned = (_learn_margin_rule(sc, dataset, seed, ctx,
                                          out / "meta" / f"{dataset}-margin-seed{seed}", t0)
                       if "learned_margin" in names else None)
            specs = network_specs(sc, learned)
            base = dict(seed=seed, dataset=dataset, neurons=sc.large, k=max(1, sc.large // 2),
                        passes=sc.rob_passes, n_train=sc.n_train_images, n_test=sc.n_test,
                        dtype=sc.dtype, n_attack=sc.n_attack, eps=",".join(f"{e:g}" for e in eps),
                        norm="l2", steps=sc.rob_steps, restarts=sc.rob_restarts,
                        paper_steps=sc.rob_steps, queries=sc.rob_queries, images=0)
            where = out / "cells" / f"{dataset}-seed{seed}"
            fields = dict(specs)
            # the transfer surrogates: the GD network for the rule networks, a rule network for GD
            gd_net = rule_net = None
            if transfer and "gd_full" in fields:
                _cell(AttackConfig(**{**base, **fields["gd_full"], "eps": "0",
                                      "attacks": "pgd_l2"}), ctx, where / "gd_full-train", t0)
                gd_net = str(where / "gd_full-train" / "network.pt")
            order = [lab for lab, _ in specs if lab != "gd_full"] + \
                (["gd_full"] if "gd_full" in fields else [])
            for label in order:
                surrogate = (gd_net if label != "gd_full" else rule_net) if transfer else None
                net_attacks = attacks if (surrogate or not transfer) else \
                    [a for a in attacks if a != "transfer"]
                extra = dict(fields[label])
                if label == "gd_full" and gd_net is not None:
                    extra = {"load": gd_net}  # the trained network above, attacked here
                cfg = AttackConfig(**{**base, **extra, "attacks": ",".join(net_attacks),
                                      "surrogate": surrogate or ""})
                tag = label.replace(" ", "")
                res = _cell(cfg, ctx, where / tag, t0)
                if rule_net is None and label != "gd_full" and cfg.train == "rule":
                    rule_net = str(where / tag / "network.pt")
                cells.setdefault(f"{dataset}/{label}", []).append(_summary(res, seed))
                c = cells[f"{dataset}/{label}"][-1]
                _log(f"{dataset} seed {seed} {label}: clean {c['clean']:.1f}, worst "
                     + ", ".join(f"eps {e:g}: {w:.1f}" for e, w in zip(eps, c["worst"])), t0)
    return {"study": "robustness", "eps": eps, "attacks": attacks, "cells": cells,
            "summary": summarize(cells, eps), "seconds": time.time() - t0}


def _summary(res: dict, seed: int) -> dict:
    """What the report needs from one attack run (percentages)."""
    by = dict(Counter(a for a in res["broken_by"] if a not in (None, "clean")))
    return {"seed": seed, "clean": 100 * res["clean_test_accuracy"],
            "clean_attacked": 100 * res["clean"], "worst": [100 * v for v in res["worst"]],
            "raw": {a: [100 * x for x in v] for a, v in res["raw"].items()},
            "first_broken_by": by, "diagnostics": res.get("diagnostics"),
            "attack_seconds": res.get("attack_seconds"), "seconds": res.get("seconds")}


def summarize(cells: dict, eps: list[float]) -> dict:
    """Mean and std over seeds of clean and worst-case accuracy per network; the target check."""
    e1 = eps.index(TARGET[0]) if TARGET[0] in eps else None
    out = {}
    for key, runs in cells.items():
        clean = np.array([r["clean"] for r in runs])
        worst = np.array([r["worst"] for r in runs])
        s = {"seeds": len(runs), "clean_mean": float(clean.mean()), "clean_std": float(clean.std()),
             "worst_mean": worst.mean(0).tolist(), "worst_std": worst.std(0).tolist()}
        if e1 is not None:
            s["meets_target"] = bool(s["worst_mean"][e1] >= 100 * TARGET[1]
                                     and s["clean_mean"] >= 100 * TARGET[2])
        out[key] = s
    return out


def report_robustness(result: dict) -> str:
    eps, summ = result["eps"], result["summary"]
    lines = ["Worst case over every attack (" + ", ".join(result["attacks"]) + "), L2 threat, "
             "accuracy % on the attacked test images, mean ± std over seeds; clean = the full "
             "test set. Test-time plasticity off.", ""]
    for dataset in dict.fromkeys(k.split("/")[0] for k in summ):
        lines += [f"## {dataset}", "", "| network | seeds | clean | "
                  + " | ".join(f"eps {e:g}" for e in eps) + " | target |",
                  "|---|---|---|" + "---|" * len(eps) + "---|"]
        for key, s in summ.items():
            if key.split("/")[0] != dataset:
                continue
            row = [f"{m:.1f} ± {d:.1f}" for m, d in zip(s["worst_mean"], s["worst_std"])]
            target = {True: "yes", False: "no"}.get(s.get("meets_target"), "-")
            lines.append(f"| {key.split('/', 1)[1]} | {s['seeds']} | {s['clean_mean']:.1f} ± "
                         f"{s['clean_std']:.1f} | " + " | ".join(row) + f" | {target} |")
        lines += ["", "Per attack, mean over seeds (% robust):", "",
                  "| network | attack | " + " | ".join(f"eps {e:g}" for e in eps) + " |",
                  "|---|---|" + "---|" * len(eps)]
        for key, runs in result["cells"].items():
            if key.split("/")[0] != dataset:
                continue
            for a in runs[0]["raw"]:
                v = np.mean([r["raw"][a] for r in runs], 0)
                lines.append(f"| {key.split('/', 1)[1]} | {a} | "
                             + " | ".join(f"{x:.1f}" for x in v) + " |")
        lines.append("")
    lines.append(f"Target (>= {100 * TARGET[1]:.0f}% at L2 eps {TARGET[0]:g}, clean >= "
                 f"{100 * TARGET[2]:.0f}%): met by "
                 + (", ".join(k for k, s in summ.items() if s.get("meets_target")) or "none"))
    return "\n".join(lines) + "\n"


def plot_robust_vs_clean(result: dict, path: Path, eps: float = TARGET[0]) -> Path | None:
    """Worst-case robust accuracy at ``eps`` against clean accuracy, one point per network and
    data set (error bars: std over seeds)."""
    from ..report import pyplot, save_figure

    if eps not in result["eps"]:
        return None
    i = result["eps"].index(eps)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    markers = {}
    for j, (key, s) in enumerate(result["summary"].items()):
        dataset, label = key.split("/", 1)
        m = markers.setdefault(dataset, "os^D"[len(markers) % 4])
        ax.errorbar(s["clean_mean"], s["worst_mean"][i], xerr=s["clean_std"],
                    yerr=s["worst_std"][i], fmt=m, color=f"C{j % 10}", capsize=2)
        ax.annotate(f"{label} ({dataset})", (s["clean_mean"], s["worst_mean"][i]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    ax.axhline(100 * TARGET[1], color="grey", ls=":", lw=1)
    ax.axvline(100 * TARGET[2], color="grey", ls=":", lw=1)
    ax.set_xlabel("clean test accuracy %")
    ax.set_ylabel(f"worst-case robust accuracy % at L2 eps {eps:g}")
    ax.set_title("robust vs clean (dotted: the target)", fontsize=9)
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=130)
