"""``plasticity transfer``: frozen rules (learned on data set X with shape S) train fresh networks
of shapes S' on data sets Y; a transfer matrix (mean ± std over network seeds x example orders)
with heatmaps, and accuracy-against-examples curves beside GD on the same networks.

Writes ``result.json``, ``report.md``, ``matrix_<shape>.png`` and ``curves.png``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import PlasticityError
from ..checks import check_choice, check_positive, parse_list
from ..config import DTYPES, to_dict
from ..files import write_json
from ..network import FIRINGS, RECURRENCES, check_network_shape
from .base import Command
from .paper_studies import FIG3_NETS, IMAGES, PAPER_FIG3

GD = ("none", "output", "full")


@dataclass(frozen=True)
class TransferConfig:
    """Which rules, which data sets, which network shapes (docs/paper.md 5.2, Fig. 3)."""

    seed: int = 0  # root seed: networks (key "networks", as `train`) and example orders
    sources: str = "fig3_T1,fig3_T3"  # rule files, shipped rules (rules.refs) or classic names
    targets: str = "halfspace,relu1,relu2,rnn,mnist,fashion_mnist"  # data sets trained on
    shapes: str = "100x50,1000x500"  # |V|xk or |V|xkxT; without T a shape takes each rule's T
    lift: str = "none"  # none: a rule of another T is an error | last_round: lift T=1 rules
    lift_rnn: str = ""  # lifted rules: a T-round rule file whose RNN rule trains W ('' = W stays 0)
    seeds: int = 3  # networks (graph, input weights) per cell
    orders: int = 2  # example orders per network
    data_seed: int = 0  # synthetic task
    n_train_synthetic: int = 0  # training examples on synthetic sets (0 = all 10,000)
    n_train_images: int = 10000  # on MNIST / Fashion-MNIST (docs/paper.md 5.2: 10k examples)
    n_test: int = 0  # test examples (0 = all)
    passes: int = 1  # passes over the training examples
    eta: float = 0.01  # plasticity step size
    p: float = 0.5  # edge probability
    recurrence: str = "paper"  # paper: cap(ReLU(Wh + Ax)) | code: cap(ReLU(W(h + Ax)))
    firing: str = "positive"  # positive: kept by the cap and > 0 | topk: kept by the cap (code)
    dtype: str = "float32"  # float32 | float64
    gd: str = "output"  # GD on the same networks and orders: none | output | full
    gd_lr: float = 1e-2  # Adam learning rate of the GD comparison (Fig. 2: 1e-2)
    gd_batch: int = 1  # its minibatch (1: one optimizer step per example, like a rule)
    eval_every: int = 500  # examples between curve points
    eval_examples: int = 1000  # test examples per curve point

    def __post_init__(self):
        from ..data import DATASETS

        check_choice("lift", self.lift, ("none", "last_round"))
        check_choice("gd", self.gd, GD)
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("recurrence", self.recurrence, RECURRENCES)
        check_choice("firing", self.firing, FIRINGS)
        check_positive(self, "seeds", "orders", "passes", "eta", "gd_lr", "gd_batch", "eval_every",
                  "eval_examples")
        check_positive(self, "n_train_synthetic", "n_train_images", "n_test", allow_zero=True)
        for d in self.target_list:
            if d not in DATASETS:
                raise PlasticityError(f"unknown dataset '{d}' in targets: use {', '.join(DATASETS)}")
        self.shape_list  # noqa: B018 - parses and checks the shapes
        source_names(parse_list("sources", self.sources))  # two sources, one name: refused

    @property
    def target_list(self) -> list[str]:
        return parse_list("targets", self.targets)

    @property
    def shape_list(self) -> list[tuple[int, int, int | None]]:
        """[(neurons, k, T or None)]."""
        out = []
        for s in parse_list("shapes", self.shapes):
            parts = s.lower().split("x")
            if len(parts) not in (2, 3) or not all(q.isdigit() for q in parts):
                raise PlasticityError(f"shape '{s}' in shapes: write |V|xk or |V|xkxT, e.g. 1000x500x3")
            v, k, *t = (int(q) for q in parts)
            check_network_shape(neurons=v, k=k, p=self.p, T=t[0] if t else 1)
            out.append((v, k, t[0] if t else None))
        return out


PRESETS = {
    "smoke": {"sources": "fig3_T1,perceptron", "targets": "halfspace,mnist",
              "shapes": "40x20", "seeds": 2, "orders": 1, "n_train_synthetic": 300,
              "n_train_images": 300, "n_test": 200, "eval_every": 100, "eval_examples": 200},
    "quick": {"seeds": 2, "orders": 2, "n_train_synthetic": 4000, "n_train_images": 4000,
              "n_test": 2000, "shapes": "100x50,400x200"},
    "paper": {"seeds": 5, "orders": 2},
}


def source_names(refs: list[str]) -> list[str]:
    """The name each source goes by in the tables and metrics: a rule file's stem, or its
    ``folder/stem`` where two files share a stem (``a/rule_T3.json``, ``b/rule_T3.json``), so
    no source's cells overwrite another's; a source listed twice is a one-line error."""
    if len(set(refs)) < len(refs):
        twice = sorted({r for r in refs if refs.count(r) > 1})
        raise PlasticityError(f"sources lists {', '.join(twice)} more than once: list each once")
    stems = [Path(r).stem if r.endswith(".json") else r for r in refs]
    names = [f"{Path(r).parent.name}/{stem}" if stems.count(stem) > 1 and r.endswith(".json")
             else stem for r, stem in zip(refs, stems)]
    if len(set(names)) < len(names):
        raise PlasticityError(f"sources {', '.join(refs)} do not have distinct names (file stems, "
                              "or folder/stem): rename or move one of the files")
    return names


def _load_sources(refs: list[str], T_default: int, eta: float) -> list[tuple[str, object]]:
    from ..rules.refs import load_rule_ref

    return [(name, load_rule_ref(ref, T_default, eta))
            for name, ref in zip(source_names(refs), refs)]


def _paper_value(rule, neurons: int, T: int, dataset: str):
    """The paper's Fig. 3 bar for this cell when the rule is a Fig. 3 rule (T=1 output rule
    from Halfspace, T=3 rules from ReLU1) on a small (100) or large (1000) network, else None."""
    prov = rule.provenance or {}
    learned = {1: "halfspace", 3: "relu1"}.get(rule.T)
    size = {100: "small", 1000: "large"}.get(neurons)
    if prov.get("dataset") != learned or size is None or (size, T) not in FIG3_NETS \
            or dataset not in PAPER_FIG3 or T != rule.T:
        return None
    return PAPER_FIG3[dataset][FIG3_NETS.index((size, T))]


def transfer_handler(cfg: TransferConfig, ctx) -> dict:
    from ..data import load_dataset
    from ..files import atomic_write_text
    from ..rules.refs import load_rule_ref
    from ..transfer import lift_rule, transfer_cell

    t0 = time.time()
    out, device, sink = ctx.out, ctx.device, ctx.sink
    out.mkdir(parents=True, exist_ok=True)
    sources = _load_sources(parse_list("sources", cfg.sources), 1, cfg.eta)
    lift_rnn = load_rule_ref(cfg.lift_rnn, 1, cfg.eta) if cfg.lift_rnn else None
    plan = []
    for name, rule in sources:
        for v, k, T in cfg.shape_list:
            T = rule.T if T is None else T
            if T != rule.T and cfg.lift == "none":
                raise PlasticityError(f"source {name} has T={rule.T} but shape {v}x{k}x{T} has "
                                      f"T={T}: set lift=last_round (T=1 rules only) or drop T")
            r = rule if T == rule.T else lift_rule(rule, T, lift_rnn)
            label = name if T == rule.T else f"{name}->T{T}"
            plan.append((label, r, rule, v, k, T))
    cells, gd_cache = {}, {}  # GD depends on the networks and orders, not on the rule
    for dataset in cfg.target_list:
        data = load_dataset(dataset, data_seed=cfg.data_seed)
        n_train = cfg.n_train_images if dataset in IMAGES else cfg.n_train_synthetic
        for label, r, src, v, k, T in plan:
            # output-layer GD has nothing to read under the code's recurrence at W = 0 (h_T = 0)
            no_gd = cfg.gd == "output" and cfg.recurrence == "code" and T > 1
            c = transfer_cell(r, data, neurons=v, k=k, T=T, seeds=cfg.seeds, orders=cfg.orders,
                              seed=cfg.seed, p=cfg.p, n_train=n_train, n_test=cfg.n_test,
                              passes=cfg.passes, eta=cfg.eta, eval_every=cfg.eval_every,
                              eval_examples=cfg.eval_examples, dtype=cfg.dtype,
                              gd="none" if no_gd or (dataset, v, k, T) in gd_cache else cfg.gd,
                              gd_lr=cfg.gd_lr, gd_batch=cfg.gd_batch, device=device,
                              recurrence=cfg.recurrence, firing=cfg.firing)
            acc = c.accuracy * 100
            shape = f"{v}x{k}x{T}"
            cell = {"source": label, "target": dataset, "shape": shape, "mean": float(acc.mean()),
                    "std": float(acc.std()), "runs": acc.tolist(), "updates": c.updates.tolist(),
                    "learned_on": (src.provenance or {}).get("dataset", "classic"),
                    "paper": _paper_value(src, v, T, dataset) if r is src else None,
                    "curve": {"examples": c.examples, "mean": (c.curve.mean(1) * 100).tolist(),
                              "std": (c.curve.std(1) * 100).tolist()}}
            if c.gd is not None:
                g = c.gd.test_accuracy * 100
                gd_cache[dataset, v, k, T] = {
                    "mean": float(g.mean()), "std": float(g.std()), "runs": g.tolist(),
                    "examples": c.gd.examples, "updates": c.gd.updates_at,
                    "curve_mean": (c.gd.curve.mean(1) * 100).tolist(),
                    "curve_std": (c.gd.curve.std(1) * 100).tolist()}
            if (dataset, v, k, T) in gd_cache:
                cell["gd"] = gd_cache[dataset, v, k, T]
            if c.diagnostics is not None:
                cell["diagnostics"] = c.diagnostics
            cells[f"{label}|{dataset}|{shape}"] = cell
            sink.metrics({f"transfer/{label}/{shape}/{dataset}": cell["mean"] / 100})
            gd_txt = f"; GD {cell['gd']['mean']:.1f}" if "gd" in cell else ""
            paper_txt = "" if cell["paper"] is None else f" (paper {cell['paper']})"
            print(f"[{time.time() - t0:7.1f}s] {label} -> {dataset} ({shape}): "
                  f"{cell['mean']:.1f} ± {cell['std']:.1f}{paper_txt}{gd_txt}",
                  file=sys.stderr, flush=True)
    result = {"command": "transfer", "config": to_dict(cfg), "cells": cells,
              "sources": {n: r.provenance for n, r in sources}, "seconds": time.time() - t0}
    write_json(out / "result.json", result)
    atomic_write_text(out / "report.md", report(result))
    result["report"] = str(out / "report.md")
    for path in [*plot_matrix(result, out), plot_curves(result, out / "curves.png"),
                 out / "result.json", out / "report.md"]:
        sink.artifact(path)
    return result


def report(result: dict) -> str:
    """Markdown: one table per shape, rows = sources, columns = targets, paper beside ours."""
    cfg = result["config"]
    lines = [f"# Transfer (seed {cfg['seed']}, {cfg['seeds']} networks x {cfg['orders']} example "
             f"orders per cell)", "",
             "Test accuracy %, mean ± std over networks x orders; (paper's Fig. 3 value) where "
             "the rule is a Fig. 3 rule on a Fig. 3 network; [GD on the same networks].", ""]
    cells = result["cells"].values()
    for shape in dict.fromkeys(c["shape"] for c in cells):
        targets = list(dict.fromkeys(c["target"] for c in cells if c["shape"] == shape))
        lines += [f"## shape {shape} (|V| x k x T)", "",
                  "| source (learned on) | " + " | ".join(targets) + " |",
                  "|---|" + "---|" * len(targets)]
        for src in dict.fromkeys(c["source"] for c in cells if c["shape"] == shape):
            row = {c["target"]: c for c in cells if c["shape"] == shape and c["source"] == src}
            first = next(iter(row.values()))
            txt = []
            for t in targets:
                c = row.get(t)
                if c is None:
                    txt.append("-")
                    continue
                s = f"{c['mean']:.1f} ± {c['std']:.1f}"
                s += f" ({c['paper']})" if c["paper"] is not None else ""
                s += f" [{c['gd']['mean']:.1f}]" if "gd" in c else ""
                txt.append(s)
            lines.append(f"| {src} ({first['learned_on']}) | " + " | ".join(txt) + " |")
        lines.append("")
    diag = [c for c in cells if "diagnostics" in c]
    if diag:
        lines += ["## Recurrence diagnostics of the T >= 2 cells (mean over runs, 1,000 test "
                  "examples; docs/dynamics.md)", "",
                  "| source | shape | target | h_T differs from h_1 | silent rounds | W mean on "
                  "edges | W std | ||W h|| / ||A x|| |", "|---|---|---|---|---|---|---|---|"]
        for c in diag:
            d = c["diagnostics"]
            lines.append(f"| {c['source']} | {c['shape']} | {c['target']} | "
                         f"{d['h_T_differs']:.2f} | {d['silent_rounds']:.2f} | "
                         f"{d['W_mean']:+.3g} | {d['W_std']:.3g} | {d['Wh_vs_Ax']:.3g} |")
        lines.append("")
    return "\n".join(lines)


def plot_matrix(result: dict, out: Path) -> list[Path]:
    """One heatmap per shape: sources x targets, mean accuracy (± std in the cell text)."""
    from ..report import pyplot, save_figure

    plt, paths = pyplot(), []
    cells = list(result["cells"].values())
    for shape in dict.fromkeys(c["shape"] for c in cells):
        sub = [c for c in cells if c["shape"] == shape]
        srcs = list(dict.fromkeys(c["source"] for c in sub))
        tgts = list(dict.fromkeys(c["target"] for c in sub))
        m = np.full((len(srcs), len(tgts)), np.nan)
        fig, ax = plt.subplots(figsize=(1.4 * len(tgts) + 2, 0.6 * len(srcs) + 1.5))
        for c in sub:
            i, j = srcs.index(c["source"]), tgts.index(c["target"])
            m[i, j] = c["mean"]
            ax.text(j, i, f"{c['mean']:.1f}\n±{c['std']:.1f}", ha="center", va="center",
                    fontsize=7)
        im = ax.imshow(m, vmin=50, vmax=100, cmap="viridis")
        ax.set_xticks(range(len(tgts)), tgts, rotation=30, fontsize=8)
        ax.set_yticks(range(len(srcs)), srcs, fontsize=8)
        ax.set_title(f"test accuracy %, shape {shape}", fontsize=9)
        fig.colorbar(im, ax=ax)
        paths.append(save_figure(fig, out / f"matrix_{shape}.png", dpi=120))
    return paths


def plot_curves(result: dict, path: Path) -> Path:
    """Accuracy against examples seen (= GD steps at batch 1), rule vs GD, one panel per target
    and shape."""
    from ..report import pyplot, save_figure

    plt = pyplot()
    cells = list(result["cells"].values())
    panels = list(dict.fromkeys((c["target"], c["shape"]) for c in cells))
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax, (t, shape) in zip(axes.flat, panels):
        sub = [c for c in cells if c["target"] == t and c["shape"] == shape]
        for i, c in enumerate(sub):
            ax.plot(c["curve"]["examples"], c["curve"]["mean"], color=f"C{i}", label=c["source"])
        if "gd" in sub[0]:
            ax.plot(sub[0]["gd"]["updates"], sub[0]["gd"]["curve_mean"], "k:",
                    label=f"GD ({result['config']['gd']}, batch {result['config']['gd_batch']})")
        ax.set_title(f"{t}, {shape}", fontsize=8)
        ax.set_xlabel("examples seen / GD steps", fontsize=7)
        ax.legend(fontsize=5)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    return save_figure(fig, path)


COMMAND = Command("transfer", "train fresh networks on other data sets and shapes with frozen rules",
                  transfer_handler, TransferConfig, PRESETS)
