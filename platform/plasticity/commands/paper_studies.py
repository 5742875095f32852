"""The paper's studies as one-command runs: Fig. 3 (transfer grid), Table 2 (clean accuracy),
Fig. 2 (rule vs GD against updates) and the last-layer theory (docs/paper.md 5-6).

Each study takes a preset (smoke | quick | paper) plus ``--set`` overrides of its own fields,
writes ``result.json`` and ``report.md`` into its output folder, and returns the result dict.
Paper numbers are reference values printed beside ours; nothing here copies them into results.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import PlasticityError
from ..config import BaselineConfig, MetaConfig, TrainConfig, to_dict
from ..files import atomic_write_text
from . import run_child
from .dynamics_study import parse_combos, report_dynamics, study_dynamics
from .robustness_study import ALL_ATTACKS as ROB_ATTACKS
from .robustness_study import NETWORKS as ROB_NETWORKS
from .robustness_study import check_robustness_fields, report_robustness, study_robustness

SYNTHETIC = ("halfspace", "relu1", "relu2", "rnn")
IMAGES = ("mnist", "fashion_mnist")

# docs/paper.md 5.2, read from the paper's Fig. 3 bar chart (+-1 point): {dataset: (small T=1,
# large T=1, small T=3, large T=3)}.
PAPER_FIG3 = {
    "halfspace": (94, 97, 93, 97), "relu1": (83, 83, 82, 90), "relu2": (78, 81.5, 84, 89),
    "rnn": (75, 76.5, 77, 84), "mnist": (75, 83.5, 71, 85.5),
    "fashion_mnist": (64.5, 72, 64, 75.5),
}
FIG3_NETS = (("small", 1), ("large", 1), ("small", 3), ("large", 3))
PAPER_TABLE2 = {"T=3": (87, 77), "T=1*": (93, 81), "T=1": (85, 70)}  # (MNIST, FMNIST) %


@dataclass(frozen=True)
class StudyConfig:
    """Sizes of a study run (the fields its ``--set`` accepts)."""

    seed: int = 0  # root seed
    seeds: int = 3  # independent networks (graph, input weights, example order) per cell
    task_seeds: int = 3  # synthetic sets: tasks (data_seed 0..task_seeds-1) per cell
    meta_steps: int = 300  # meta-learning steps per learned rule
    meta_episodes: int = 16  # E
    meta_batch: int = 100  # B
    meta_horizon: int = 10000  # T=3 rules: examples a meta-training network keeps learning
    #                            (MetaConfig.horizon; 0 = the paper's fresh start every step)
    n_train_synthetic: int = 0  # training examples on synthetic sets (0 = all 10,000)
    n_train_images: int = 0  # training examples on MNIST / Fashion-MNIST (0 = all 60,000)
    n_test: int = 0  # test examples (0 = all)
    passes: int = 1  # passes over the training examples
    small: int = 100  # |V| of "small" networks (k = |V| / 2)
    large: int = 1000  # |V| of "large" networks
    datasets: str = ",".join(SYNTHETIC + IMAGES)  # comma-separated data sets
    dtype: str = "float32"  # float32 | float64 of every network and meta-learning unroll
    starts: int = 10  # theory study: random starts of the Theorem 1 experiment
    recurrence: str = "paper"  # dynamics of every network (Common.recurrence): paper | code
    firing: str = "positive"  # Common.firing: positive | topk
    meta_loss: str = "logits"  # MetaConfig.meta_loss of the learned rules: logits | softmax
    meta_seeds: int = 3  # dynamics study: meta-learning seeds per combination
    combos: str = ("paper/positive/logits,code/positive/logits,paper/topk/logits,"
                   "code/topk/logits,code/topk/softmax")  # dynamics study: recurrence/firing/
    #   meta_loss[/h<horizon>] combinations (h<horizon> overrides meta_horizon, e.g. h0)
    dynamics_datasets: str = "relu2,relu1"  # dynamics study: where large networks are tested
    meta_restarts: int = 0  # MetaConfig.restarts: new starts when a start has collapsed
    restart_after: int = 50  # MetaConfig.restart_after: the step a start is checked at
    meta_starts: int = 1  # MetaConfig.select_starts: starts per rule, the best on held-out
    #                       training examples kept (MetaConfig.select_examples = 1000)
    rob_datasets: str = "mnist,fashion_mnist"  # robustness study: the image sets
    rob_networks: str = ",".join(ROB_NETWORKS)  # robustness study: the networks (its docstring)
    rob_gammas: str = "0.3,0.5,0.7"  # robustness study: gammas of the margin_rel perceptron
    rob_learned_gamma: float = 0.5  # robustness study: gamma the margin rule is meta-learned at
    rob_rule_T3: str = "results/table2-reference/rule_T3.json"  # T=3 rule of ref_T3 (reference
    #                                                             dynamics, learned on MNIST)
    rob_ref_gamma: float = 0.5  # robustness study: gamma of ref_T3_margin (margin_rel)
    rob_evolved: str = "results/lifetime/relu1-V400-engine/seed0/cma_rule.json"  # evolved_T3
    rob_eps: str = "0,0.5,1"  # robustness study: L2 radii
    rob_attacks: str = ROB_ATTACKS  # robustness study: the attacks (worst case over all)
    n_attack: int = 200  # robustness study: test images attacked per network
    rob_passes: int = 2  # robustness study: passes over the training set (Table 2: 2)
    rob_steps: int = 50  # robustness study: PGD / paper's attack steps (AttackConfig.steps)
    rob_restarts: int = 3  # robustness study: PGD restarts
    rob_queries: int = 1000  # robustness study: queries of the gradient-free attacks

    def __post_init__(self):
        parse_combos(self.combos)
        check_robustness_fields(self)
        MetaConfig(recurrence=self.recurrence, firing=self.firing, meta_loss=self.meta_loss)
        for name in ("seeds", "task_seeds", "meta_steps", "meta_episodes", "meta_batch", "passes", "small",
                     "large", "meta_seeds"):
            if getattr(self, name) < 1:
                raise PlasticityError(f"{name}={getattr(self, name)} must be >= 1")
        from ..data import DATASETS

        for d in self.dataset_list + self.dynamics_dataset_list:
            if d not in DATASETS:
                raise PlasticityError(f"unknown dataset '{d}' in datasets: use {', '.join(DATASETS)}")

    @property
    def dataset_list(self) -> list[str]:
        return [d.strip() for d in self.datasets.split(",") if d.strip()]

    @property
    def dynamics_dataset_list(self) -> list[str]:
        return [d.strip() for d in self.dynamics_datasets.split(",") if d.strip()]


STUDY_PRESETS = {
    "smoke": dict(seeds=2, task_seeds=1, meta_steps=4, meta_episodes=4, meta_batch=20, meta_horizon=200,
                  n_train_synthetic=400,
                  n_train_images=400, n_test=300, small=20, large=40, n_attack=12,
                  rob_steps=4, rob_restarts=1, rob_queries=20),
    "quick": dict(seeds=2, task_seeds=2, meta_steps=150, n_train_synthetic=4000, n_train_images=6000,
                  n_test=2000, large=400),
    "paper": dict(seeds=3, meta_steps=400),
}


def _log(msg: str, t0: float) -> None:
    """One progress line on stderr (stdout stays for results)."""
    print(f"[{time.time() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def meta_config(sc: StudyConfig, **kw) -> MetaConfig:
    base = dict(seed=sc.seed, episodes=sc.meta_episodes, batch=sc.meta_batch, steps=sc.meta_steps,
                eval_every=max(sc.meta_steps, 1), eval_train=1000, eval_examples=1000,
                dtype=sc.dtype, recurrence=sc.recurrence, firing=sc.firing,
                meta_loss=sc.meta_loss, restarts=sc.meta_restarts,
                restart_after=sc.restart_after, select_starts=sc.meta_starts)
    base.update(kw)
    return MetaConfig(**base)


def train_config(sc: StudyConfig, dataset: str, neurons: int, T: int, **kw) -> TrainConfig:
    n_train = sc.n_train_images if dataset in IMAGES else sc.n_train_synthetic
    base = dict(seed=sc.seed, dataset=dataset, neurons=neurons, k=max(1, neurons // 2), T=T,
                networks=sc.seeds, passes=sc.passes, n_train=n_train, n_test=sc.n_test,
                eval_every=10**9, eval_examples=1, dtype=sc.dtype, recurrence=sc.recurrence,
                firing=sc.firing)
    base.update(kw)
    return TrainConfig(**base)


def learn_fig3_rules(sc: StudyConfig, ctx, out: Path) -> dict:
    """The two rules of Fig. 3: the output rule on Halfspace (small, T=1) and the RNN + output
    rules on ReLU1 (small, T=3), both meta-learned by GD (docs/paper.md 5.2), each a
    ``meta-train`` run in ``out/meta-T<T>``: {T: its result}."""
    k = max(1, sc.small // 2)
    specs = {1: meta_config(sc, dataset="halfspace", neurons=sc.small, k=k, T=1, learn="output"),
             3: meta_config(sc, dataset="relu1", neurons=sc.small, k=k, T=3, learn="both",
                            horizon=sc.meta_horizon)}
    return {T: run_child("meta-train", cfg, ctx, out / f"meta-T{T}") for T, cfg in specs.items()}


def cell_name(dataset: str, size: str, T: int, task: int | None = None) -> str:
    return f"{dataset}-{size}-T{T}" + ("" if task is None else f"-task{task}")


def study_fig3(sc: StudyConfig, ctx, out: Path) -> dict:
    """Fig. 3: learned rules frozen, then training small/large x T=1/T=3 nets on six data sets;
    every meta-learning and every cell x task a registered command's run (meta-train, train)."""
    t0 = time.time()
    learned = learn_fig3_rules(sc, ctx, out)
    for T, res in learned.items():
        shutil.copyfile(res["rule"], out / f"rule_T{T}.json")
        _log(f"meta-learned T={T} rule: final loss {res['final_loss']:.3f}", t0)
    cells = {}
    for dataset in sc.dataset_list:
        tasks = range(sc.task_seeds) if dataset in SYNTHETIC else range(1)
        for (size, T), paper in zip(FIG3_NETS, PAPER_FIG3[dataset]):
            neurons = sc.small if size == "small" else sc.large
            per_task, diag = [], None
            for t in tasks:
                cfg = train_config(sc, dataset, neurons, T, data_seed=t,
                                   rule=str(out / f"rule_T{T}.json"))
                res = run_child("train", cfg, ctx, out / "cells" / cell_name(dataset, size, T, t))
                per_task.append(np.asarray(res["test_accuracy"]) * 100)
                if T > 1 and diag is None:  # the first task's networks, every T >= 2 cell
                    diag = res["diagnostics"]
            acc = np.concatenate(per_task)
            key = f"{dataset}/{size}/T={T}"
            cells[key] = {"mean": float(acc.mean()), "std": float(acc.std()),
                          "runs": acc.tolist(), "paper": paper, "neurons": neurons,
                          "task_means": [float(a.mean()) for a in per_task]}
            if diag is not None:
                cells[key]["diagnostics"] = diag
            _log(f"{key}: {acc.mean():.1f} ± {acc.std():.1f} (paper {paper}); per task "
                 f"{[round(float(a.mean()), 1) for a in per_task]}", t0)
    return {"study": "fig3", "cells": cells, "seconds": time.time() - t0,
            "rules": {f"T={T}": r["output_table"] for T, r in learned.items()},
            "meta_final_loss": {f"T={T}": r["final_loss"] for T, r in learned.items()},
            "meta_collapsed_starts": {f"T={T}": r["collapsed_starts"] for T, r in learned.items()}}


def report_fig3(result: dict) -> str:
    lines = ["| data set | " + " | ".join(f"{s} T={T}" for s, T in FIG3_NETS) + " |",
             "|---|" + "---|" * len(FIG3_NETS)]
    datasets = sorted({k.split("/")[0] for k in result["cells"]}, key=list(PAPER_FIG3).index)
    for d in datasets:
        row = []
        for s, T in FIG3_NETS:
            c = result["cells"].get(f"{d}/{s}/T={T}")
            row.append("-" if c is None else f"{c['mean']:.1f} ± {c['std']:.1f} ({c['paper']})")
        lines.append(f"| {d} | " + " | ".join(row) + " |")
    lines += diagnostics_table(result["cells"])
    starts = result.get("meta_collapsed_starts", {})
    if any(starts.values()):
        lines += ["", "Meta-learning starts abandoned as collapsed (restarts): "
                  + ", ".join(f"{T}: {len(v)}" for T, v in starts.items())]
    return ("Test accuracy %, mean ± std over all runs: networks/example orders, and for the "
            "synthetic sets also tasks (data_seed); the paper's value in parentheses.\n\n"
            + "\n".join(lines) + "\n")


def diagnostics_table(cells: dict) -> list[str]:
    """Markdown lines: the recurrence diagnostics of every cell that has them (T >= 2)."""
    diag = [(k, c["diagnostics"]) for k, c in cells.items() if "diagnostics" in c]
    if not diag:
        return []
    mean = lambda v: float(np.mean(v))  # noqa: E731 - over the cell's networks
    lines = ["", "Recurrence diagnostics of the T=3 cells (the first task's networks, 1,000 test "
             "examples; docs/dynamics.md): h_T != h_1, silent rounds 2..T, active fraction by "
             "round, W mean / std on edges, ||W h|| / ||A x||.", "",
             "| cell | h_T differs | silent | active by round | W mean | W std | Wh/Ax |",
             "|---|---|---|---|---|---|---|"]
    for k, d in diag:
        rounds = np.mean(np.asarray(d["active_by_round"]), 0)
        lines.append(f"| {k} | {mean(d['h_T_differs']):.2f} | {mean(d['silent_rounds']):.2f} | "
                     + " / ".join(f"{r:.2f}" for r in rounds)
                     + f" | {mean(d['W_mean']):+.3f} | {mean(d['W_std']):.3f} | "
                     f"{mean(d['Wh_vs_Ax']):.2f} |")
    return lines


def study_table2(sc: StudyConfig, ctx, out: Path) -> dict:
    """Table 2 clean accuracy: |V|=1000, k=500, 2 passes; T=3 with an RNN rule (an MLP,
    hidden 20) meta-learned on a |V|=200 net with the perceptron output rule fixed; T=1 with the
    perceptron rule, input weights N(0,1) and all ones (the starred row)."""
    t0 = time.time()
    meta_n = max(2, sc.large // 5)
    cfg = meta_config(sc, dataset="mnist", neurons=meta_n, k=meta_n // 2, T=3, learn="rnn",
                      rule_param="mlp", hidden=20, n_train=sc.n_train_images,
                      horizon=sc.meta_horizon)
    meta = run_child("meta-train", cfg, ctx, out / "meta-T3")
    shutil.copyfile(meta["rule"], out / "rule_T3.json")
    rows = {"T=3": (str(out / "rule_T3.json"), 3, "normal"), "T=1*": ("perceptron", 1, "ones"),
            "T=1": ("perceptron", 1, "normal")}
    cells = {}
    for dataset, col in (("mnist", 0), ("fashion_mnist", 1)):
        for name, (rule, T, inputs) in rows.items():
            tc = train_config(sc, dataset, sc.large, T, passes=2, input_weights=inputs, rule=rule)
            res = run_child("train", tc, ctx, out / "cells" / f"{dataset}-{name.replace('*', 'star')}")
            acc = np.asarray(res["test_accuracy"]) * 100
            cells[f"{dataset}/{name}"] = {"mean": float(acc.mean()), "std": float(acc.std()),
                                          "runs": acc.tolist(), "paper": PAPER_TABLE2[name][col]}
            if T > 1:
                cells[f"{dataset}/{name}"]["diagnostics"] = res["diagnostics"]
            _log(f"{dataset}/{name}: {acc.mean():.1f} ± {acc.std():.1f}", t0)
    return {"study": "table2", "cells": cells, "seconds": time.time() - t0}


def report_table2(result: dict) -> str:
    lines = ["| row | MNIST | Fashion-MNIST |", "|---|---|---|"]
    for name in PAPER_TABLE2:
        row = []
        for d in ("mnist", "fashion_mnist"):
            c = result["cells"][f"{d}/{name}"]
            row.append(f"{c['mean']:.1f} ± {c['std']:.1f} ({c['paper']})")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines += diagnostics_table(result["cells"])
    return ("Clean test accuracy %, |V|=1000, k=500, 2 passes, mean ± std (paper in "
            "parentheses).\n\n" + "\n".join(lines) + "\n")


def study_fig2(sc: StudyConfig, ctx, out: Path) -> dict:
    """Fig. 2: MNIST, T=1, |V|=1000: accuracy against updates for the meta-learned output rule
    (Halfspace, small net) and the perceptron rule, and for output-layer GD (batch 1, 200)."""
    from ..data import load_dataset

    t0 = time.time()
    hs = run_child("meta-train", meta_config(sc, dataset="halfspace", neurons=sc.small,
                                             k=sc.small // 2, T=1), ctx, out / "meta-T1")
    every = 500 if sc.n_train_images in (0, 60000) or sc.n_train_images >= 10000 else 100
    curves = {}
    for name, rule in (("learned rule", hs["rule"]), ("perceptron rule", "perceptron")):
        tc = train_config(sc, "mnist", sc.large, 1, eval_every=every, eval_examples=sc.n_test or 10000,
                          rule=rule)
        res = run_child("train", tc, ctx, out / "cells" / name.replace(" ", "-"))
        curves[name] = {"examples": res["curve"]["examples"], "updates": res["curve"]["examples"],
                        "mean": (np.asarray(res["curve"]["accuracy_mean"]) * 100).tolist(),
                        "std": (np.asarray(res["curve"]["accuracy_std"]) * 100).tolist(),
                        "mistake_updates": res["updates"]}
    n_train = sc.n_train_images or load_dataset("mnist").x_train.shape[0]
    for batch in (1, 200):
        # batch 200 runs as many passes as it takes to make 5,000 optimizer steps
        passes = 1 if batch == 1 else math.ceil(5000 * batch / n_train)
        bc = BaselineConfig(seed=sc.seed, dataset="mnist", neurons=sc.large, k=sc.large // 2, T=1,
                            batch=batch, networks=sc.seeds, n_train=sc.n_train_images,
                            n_test=sc.n_test, eval_every=every * (1 if batch == 1 else 20),
                            eval_examples=sc.n_test or 10000, dtype=sc.dtype, passes=passes)
        res = run_child("baseline", bc, ctx, out / "cells" / f"gd-batch{batch}")
        curves[f"GD batch {batch}"] = {"examples": res["curve"]["examples"],
                                       "updates": res["curve"]["updates"],
                                       "mean": (np.asarray(res["curve"]["accuracy_mean"]) * 100).tolist(),
                                       "std": (np.asarray(res["curve"]["accuracy_std"]) * 100).tolist()}
        _log(f"GD batch {batch}: {res['test_accuracy_mean'] * 100:.1f}", t0)
    return {"study": "fig2", "curves": curves, "seconds": time.time() - t0}


def _at(curve: dict, updates: int) -> str:
    ups = np.asarray(curve["updates"])
    i = int(np.searchsorted(ups, updates, side="right")) - 1
    if i < 0:
        return "-"
    return f"{curve['mean'][i]:.1f} ± {curve['std'][i]:.1f} (at {ups[i]})"


def report_fig2(result: dict) -> str:
    marks = (500, 1000, 5000, 20000, 60000)
    lines = ["| method | " + " | ".join(f"{m} updates" for m in marks) + " |",
             "|---|" + "---|" * len(marks)]
    for name, c in result["curves"].items():
        lines.append(f"| {name} | " + " | ".join(_at(c, m) for m in marks) + " |")
    return ("MNIST test accuracy %, T=1, mean ± std over networks. For rules an 'update' is an "
            "example seen (weights change only on its mistakes); for GD an optimizer step.\n\n"
            + "\n".join(lines) + "\n")


def study_theory(sc: StudyConfig, ctx, out: Path) -> dict:
    """docs/paper.md 6.1-6.5: Theorem 1 (additive and multiplicative 2x2 output rules meta-learned from
    random starts), Theorem 3 (mistakes of [-a, a; b, -b] against the bound), Theorem 4 (the
    same rule on misclassified-or-within-gamma examples, on data with slack) and the closed-form
    MSE-optimal output rule (engine-trained with the every-example, all-rows scheme)."""
    from ..data import load_dataset
    from ..learning import example_orders, train_with_rule
    from ..network import make_networks
    from ..rules import Rule, Scheme
    from ..rules.classic import perceptron
    from ..seeding import torch_generator
    from ..theory import (
        mse_optimal_output_rule,
        theorem1_experiment,
        theorem3_experiment,
        theorem4_experiment,
    )

    t0 = time.time()
    hs = load_dataset("halfspace")
    small = max(2, sc.small)
    thm1 = {}
    for mode, starts in (("additive", sc.starts), ("multiplicative", max(1, sc.starts // 2))):
        cfg = meta_config(sc, dataset="halfspace", neurons=small, k=small // 2, T=1, mode=mode,
                        episodes=4, eval_every=sc.meta_steps, n_train=sc.n_train_synthetic)
        thm1[mode] = theorem1_experiment(cfg, hs, starts, device=ctx.device)
        _log(f"Theorem 1 {mode}: {thm1[mode]['perceptron_count']}/{starts} perceptron pattern, "
             f"{thm1[mode]['difference_perceptron_count']}/{starts} in the column difference", t0)
    thm3 = [theorem3_experiment(20, gamma, a, b, examples=1000, seed=sc.seed, runs=5)
            for gamma in (0.5, 0.2) for a, b in ((1.0, 1.0), (1.0, 2.0), (0.5, 2.0))]
    thm4 = [theorem4_experiment(20, gamma, a, b, examples=2000, noise=noise, seed=sc.seed, runs=5)
            for noise in (0.0, 0.02) for gamma in (0.05, 0.1, 0.2)
            for a, b in ((1.0, 1.0), (1.0, 2.0), (0.5, 2.0))]
    _log(f"Theorem 4: mistakes / bound <= {max(max(r['ratio']) for r in thm4):.3f}", t0)
    mse = {}
    for dataset in ("halfspace", "mnist"):
        data = hs if dataset == "halfspace" else load_dataset(dataset)
        n_tr = (sc.n_train_images if dataset == "mnist" else sc.n_train_synthetic) or \
            data.x_train.shape[0]
        n_te = sc.n_test or data.x_test.shape[0]
        x_tr, y_tr = data.x_train[:n_tr].double(), data.y_train[:n_tr]
        nets = make_networks(1, data.dim, data.n_classes, neurons=sc.large, k=sc.large // 2,
                             p=0.5, T=1, seed=sc.seed, dtype=x_tr.dtype)
        layer, info = mse_optimal_output_rule(nets, x_tr, y_tr)
        order = example_orders(1, n_tr, 1, torch_generator(sc.seed, "theory-order"))
        res = train_with_rule(nets, info["rule"], x_tr, y_tr, data.x_test[:n_te].double(),
                              data.y_test[:n_te], order=order, eval_every=n_tr, eval_examples=1)
        mse[dataset] = {"table": layer.table().tolist(), "mse": info["mse"],
                        "accuracy": float(res.test_accuracy[0] * 100), "neurons": sc.large}
        for name, scheme in (("perceptron_all_all", Scheme("all", "all")),
                             ("perceptron_default", Scheme())):
            rule = Rule(1, perceptron(1), scheme=scheme)
            res = train_with_rule(nets, rule, x_tr, y_tr, data.x_test[:n_te].double(),
                                  data.y_test[:n_te], order=order, eval_every=n_tr,
                                  eval_examples=1)
            mse[dataset][name] = float(res.test_accuracy[0] * 100)
        _log(f"MSE-optimal rule on {dataset}: {mse[dataset]['accuracy']:.1f}%", t0)
    return {"study": "theory", "theorem1": thm1, "theorem3": thm3, "theorem4": thm4,
            "mse_optimal": mse,
            "seconds": time.time() - t0}


def _fmt_table(t) -> str:
    return "[" + "; ".join(", ".join(f"{v:+.3g}" for v in row) for row in t) + "]"


def _mean_range(xs) -> str:
    return f"{statistics.mean(xs):.1f} ({min(xs)}-{max(xs)})"


def report_theory(result: dict) -> str:
    lines = ["## Theorem 1: 2x2 output rules meta-learned by GD from random N(0,1) starts", "",
             "| mode | starts | perceptron pattern [-,+;+,-] | column difference d[0] < 0 < d[1] "
             "| Winnow fired row (r[1,0] > 0 > r[1,1], not-fired row smaller) | patterns |",
             "|---|---|---|---|---|---|"]
    for mode, r in result["theorem1"].items():
        n = len(r["starts"])
        lines.append(f"| {mode} | {n} | {r['perceptron_count']}/{n} | "
                     f"{r['difference_perceptron_count']}/{n} | {r['winnow_count']}/{n} | "
                     f"{r['patterns']} |")
    lines += ["", "Final tables (rows: not fired / fired; columns: label row / predicted row):", ""]
    for mode, r in result["theorem1"].items():
        for run in r["starts"][:3]:
            lines.append(f"- {mode}, seed {run['seed']}: {_fmt_table(run['final'])}")
    lines += ["", "## Theorem 3: mistakes of r = [-a, a; b, -b] on separable data (n = 20)", "",
              "| gamma | a | b | bound 2b²n/(a²γ²) | mistakes (5 tasks) | all converged |",
              "|---|---|---|---|---|---|"]
    for r in result["theorem3"]:
        lines.append(f"| {r['gamma']} | {r['a']} | {r['b']} | {r['bound']:.0f} | "
                     f"{r['mistakes']} | {all(r['converged'])} |")
    lines += ["", "## Theorem 4: r = [-a, a; b, -b] on examples misclassified or within gamma (n = 20, "
              "||x|| <= R = 1, one online pass over 2,000 examples, 5 tasks)", "",
              "Bound: (b²/a²)(R² + D² + 2γ)/γ² with constant 1 (the theorem gives O() only); D² "
              "= Σ max(0, γ - y w*·x)², from the flipped labels. Mistakes: mean (min-max) over "
              "the tasks; the same rule on mistakes only (Theorem 3's scheme) on the same "
              "sequences beside it.", "",
              "| label noise | gamma | a | b | D² (mean) | bound (mean) | mistakes, margin scheme "
              "| updates, margin scheme | mistakes / bound (max) | mistakes, mistakes-only scheme |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result.get("theorem4", []):
        mm, mo = r["margin"], r["mistakes"]
        lines.append(f"| {r['noise']} | {r['gamma']} | {r['a']} | {r['b']} | "
                     f"{statistics.mean(r['D2']):.1f} | {statistics.mean(r['bound']):.0f} | "
                     f"{_mean_range(mm['mistakes'])} | {_mean_range(mm['updates'])} | "
                     f"{max(r['ratio']):.3f} | {_mean_range(mo['mistakes'])} |")
    lines += ["", "## Closed-form MSE-optimal output rule (every example, all rows)", "",
              "| data set | |V| | MSE-optimal table | its accuracy % | perceptron, same scheme % "
              "| perceptron, default scheme % |", "|---|---|---|---|---|---|"]
    for d, r in result["mse_optimal"].items():
        lines.append(f"| {d} | {r['neurons']} | {_fmt_table(r['table'])} | {r['accuracy']:.1f} | "
                     f"{r['perceptron_all_all']:.1f} | {r['perceptron_default']:.1f} |")
    return "\n".join(lines) + "\n"


STUDIES = {"fig3": (study_fig3, report_fig3), "table2": (study_table2, report_table2),
           "fig2": (study_fig2, report_fig2), "theory": (study_theory, report_theory),
           "dynamics": (study_dynamics, report_dynamics),
           "robustness": (study_robustness, report_robustness)}


def run_study(name: str, sc: StudyConfig, ctx, preset: str = "-") -> dict:
    """Run study ``name`` with its config in ``ctx.out`` (its meta-learning and training runs
    are registered commands' runs, MLflow child runs when ``ctx`` is tracked); write
    result.json and report.md."""
    if name not in STUDIES:
        raise PlasticityError(f"unknown study '{name}': use one of {', '.join(STUDIES)}")
    fn, report = STUDIES[name]
    out = Path(ctx.out)
    out.mkdir(parents=True, exist_ok=True)
    result = fn(sc, ctx, out)
    result.update(preset=preset, config=to_dict(sc), device=str(ctx.device))
    text = f"# Study {name} (preset {preset}, seed {sc.seed})\n\n" + report(result)
    atomic_write_text(out / "result.json", json.dumps(result, indent=1))
    atomic_write_text(out / "report.md", text)
    return {**result, "report": str(out / "report.md")}
