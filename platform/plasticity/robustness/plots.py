"""Pictures of attack results: robust accuracy against eps, Fig. 5 side by side with the paper,
and adversarial images beside their originals (matplotlib via plasticity.report).

``python -m plasticity.robustness.plots OUT.png LABEL=RUN/result.json ...`` draws Fig. 5 from
several ``plasticity attack`` runs.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from ..report import pyplot, save_figure

# docs/paper.md 5.4, read from the paper's Fig. 5 (L2 eps 0, 0.5, ..., 4), accuracy %
PAPER_FIG5 = {"rule, T=3": [83, 73, 68, 68, 59, 46, 41, 36, 35],
              "rule, T=1": [92, 71, 43, 27, 12, 10, 5, 2, 0],
              "GD, T=3": [98, 55, 8, 1, 0, 0, 0, 0, 0]}
PAPER_EPS = [0.5 * i for i in range(9)]


def plot_curves(result: dict, path: Path) -> Path:
    """One run: raw accuracy of each attack (dashed) and the worst case (solid) against eps."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    eps = result["eps"]
    for a, v in result["raw"].items():
        ax.plot(eps, [100 * a_ for a_ in v], "--", marker=".", label=a)
    ax.plot(eps, [100 * v for v in result["worst"]], "k-", lw=2, marker="o", label="worst case")
    ax.set_xlabel(f"eps ({result['threat']})")
    ax.set_ylabel(f"robust accuracy % (n={result['n']})")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=120)


def plot_fig5(runs: dict[str, dict], path: Path, paper: bool = True) -> Path:
    """Several runs (label -> result): the paper's attack (dashed) and the worst case of all
    attacks (solid), with the paper's Fig. 5 curves dotted."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, r) in enumerate(runs.items()):
        c = f"C{i}"
        if "paper" in r["raw"]:
            ax.plot(r["eps"], [100 * v for v in r["raw"]["paper"]], "--", color=c,
                    label=f"{label}: paper's attack")
        ax.plot(r["eps"], [100 * v for v in r["worst"]], "-", color=c, marker="o",
                label=f"{label}: worst case")
    if paper:
        for i, (label, v) in enumerate(PAPER_FIG5.items()):
            ax.plot(PAPER_EPS, v, ":", color=f"C{i + len(runs)}", label=f"paper: {label}")
    ax.set_xlabel("eps (L2)")
    ax.set_ylabel("accuracy on perturbed examples %")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=120)


def plot_examples(eps: list[float], examples: list[list[dict]], path: Path) -> Path | None:
    """Originals (top) and adversarial images (bottom) at the smallest eps that broke some
    examples; None when nothing was broken or the inputs are not square images."""
    chosen = next(((e, ex) for e, ex in zip(eps, examples) if ex), None)
    if chosen is None or math.isqrt(len(chosen[1][0]["x"])) ** 2 != len(chosen[1][0]["x"]):
        return None
    e, ex = chosen
    plt = pyplot()
    side = math.isqrt(len(ex[0]["x"]))
    fig, axes = plt.subplots(2, len(ex), figsize=(1.8 * len(ex), 4), squeeze=False)
    for j, item in enumerate(ex):
        for row, key, title in ((0, "x", f"label {item['label']}"),
                                (1, "x_adv", f"{item['attack']}: {item['adv_pred']}\n"
                                             f"L2 {item['l2']:.2f}")):
            ax = axes[row][j]
            ax.imshow([item[key][r * side:(r + 1) * side] for r in range(side)], cmap="gray",
                      vmin=0, vmax=1)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.suptitle(f"adversarial examples at eps = {e:g}", fontsize=9)
    return save_figure(fig, path, dpi=120)


def table(runs: dict[str, dict]) -> str:
    """Markdown: per run and eps, accuracy % under the paper's attack / the worst case of all
    attacks (the paper's Fig. 5 value in parentheses where the label names a Fig. 5 curve)."""
    eps = sorted({e for r in runs.values() for e in r["eps"]})
    lines = ["| network (clean test %) | " + " | ".join(f"eps {e:g}" for e in eps) + " |",
             "|---|" + "---|" * len(eps)]
    for label, r in runs.items():
        paper = PAPER_FIG5.get(label)
        cells = []
        for e in eps:
            if e not in r["eps"]:
                cells.append("-")
                continue
            i = r["eps"].index(e)
            txt = f"{100 * r['raw']['paper'][i]:.0f} / " if "paper" in r["raw"] else ""
            txt += f"{100 * r['worst'][i]:.0f}"
            if paper is not None and e in PAPER_EPS:
                txt += f" ({paper[PAPER_EPS.index(e)]})"
            cells.append(txt)
        clean = r.get("clean_test_accuracy", r["clean"])
        lines.append(f"| {label} ({100 * clean:.1f}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    """OUT.png LABEL=result.json ...: draw Fig. 5 from attack runs and print its table."""
    import json

    out, runs = Path(argv[0]), {}
    for item in argv[1:]:
        label, _, p = item.rpartition("=")
        runs[label] = json.loads(Path(p).read_text())
    plot_fig5(runs, out)
    print(table(runs))


if __name__ == "__main__":
    main(sys.argv[1:])
