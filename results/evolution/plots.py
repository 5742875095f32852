"""Figures for results/evolution/NOTES.md from the run folders (matplotlib, no display).

    .venv/bin/python results/evolution/plots.py runs/evo-theory-smooth runs/evo-compare-long
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent


def theory(run: Path) -> None:
    rows = json.loads((run / "result.json").read_text())["rows"]
    rows = [r for r in rows if r["eps"] == 0.1] or rows[:3]
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.2), squeeze=False)
    for ax, r in zip(axes[0], rows):
        for j in range(len(r["measured"][0])):
            m = [x[j] for x in r["measured"]]
            ax.plot(m, color=f"C{j}", lw=2, label="measured" if j == 0 else None)
            ax.plot([x[j] for x in r["predicted"]["replicator"]], color=f"C{j}", ls="--",
                    label="x(1-x) form" if j == 0 else None)
            ax.plot([x[j] for x in r["predicted"]["paper"]], color=f"C{j}", ls=":",
                    label="(2-2x) form" if j == 0 else None)
        ax.set_title(f"theta={r['theta']}, eps={r['eps']}")
        ax.set_xlabel("generation")
    axes[0][0].set_ylabel("allele frequency (mean per coefficient)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / f"{run.name}.png", dpi=110)


def compare(run: Path) -> None:
    res = json.loads((run / "result.json").read_text())
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for i, r in enumerate(res["runs"]):
        e, g = r["evolution"]["curve"], r["gd"]["curve"]
        for ax, key in zip(axes, ("examples", "seconds")):
            ax.plot([c[key] for c in e], [c["loss_task"] for c in e], color=f"C{i}",
                    label=f"{r['evolution']['method']} seed {r['seed']}")
            ax.plot([c[key] for c in g], [c["loss"] for c in g], color=f"C{i}", ls=":", alpha=0.7,
                    label=f"GD seed {r['seed']}")
    for ax, key in zip(axes, ("inner-loop examples", "wall-clock s")):
        ax.set_xlabel(key)
        ax.set_yscale("log")
    axes[0].set_ylabel("loss of the current rule (its batch)")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(HERE / f"{run.name}.png", dpi=110)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        p = Path(arg)
        (theory if "theory" in p.name else compare)(p)
