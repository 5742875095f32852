"""Pictures and tables of results: rule-table heatmaps, accuracy curves, Markdown tables.

Plots use matplotlib's Agg backend (no display needed) and are written atomically enough for
artifacts: each call writes one PNG and returns its path. Nothing here imports MLflow; the
tracking observer calls these to turn a rule event into a picture.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write (creating the folder) and close a figure; returns the path."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def _history_labels(n: int) -> list[str]:
    """Row labels of a table with n = 2^T rows: the T-bit firing histories, oldest bit first."""
    bits = max(1, int(round(np.log2(n)))) if n > 1 else 1
    return [format(i, f"0{bits}b") for i in range(n)] if 2**bits == n else [str(i) for i in range(n)]


def registered_name(rule) -> str:
    """Registry name of a learned rule: ``<method>-<dataset>-T<T>`` (e.g. ``gd-halfspace-T1``)."""
    prov = rule.provenance or {}
    name = f"{prov.get('method', 'rule')}-{prov.get('dataset', 'unknown')}-T{rule.T}"
    return re.sub(r"[^A-Za-z0-9_\-.]", "_", name)


def heatmap_title(name: str, rule) -> str:
    """The title of a logged rule's heatmap."""
    return f"{name}: {registered_name(rule)}"


def rule_heatmap(rule, path: str | Path, title: str | None = None) -> Path:
    """A PNG of the rule's tables (output rule, and the RNN rule when there is one).

    Rows are presynaptic firing histories (T bits); output-rule columns are (label row, predicted
    row), RNN-rule columns the postsynaptic history. Cells are annotated when the table is small."""
    plt = pyplot()
    layers = [("output rule", rule.output.table().numpy())]
    if rule.rnn is not None:
        layers.append(("RNN rule", rule.rnn.table().numpy()))
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 + 2.6 * (len(layers) - 1) + 0.3 * rule.T,
                                                      2.4 + 0.25 * 2**rule.T), squeeze=False)
    for ax, (name, table) in zip(axes[0], layers):
        lim = float(np.abs(table).max()) or 1.0
        im = ax.imshow(table, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_title(name, fontsize=9)
        ax.set_yticks(range(table.shape[0]), _history_labels(table.shape[0]), fontsize=7)
        cols = ["label", "pred"] if table.shape[1] == 2 and name.startswith("output") else \
            _history_labels(table.shape[1])
        ax.set_xticks(range(table.shape[1]), cols, fontsize=7, rotation=90 if len(cols) > 4 else 0)
        ax.set_ylabel("pre history", fontsize=8)
        if table.size <= 64:
            for (i, j), v in np.ndenumerate(table):
                ax.text(j, i, f"{v:+.2g}", ha="center", va="center", fontsize=6)
        fig.colorbar(im, ax=ax, fraction=0.05)
    fig.suptitle(title or f"T={rule.T}, {rule.mode}", fontsize=9)
    return save_figure(fig, path)


def curves_plot(curves: dict[str, tuple[list, list]], path: str | Path, *, xlabel: str,
                ylabel: str, title: str = "", logx: bool = False) -> Path:
    """A PNG with one line per named curve ``{name: (x, y)}``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, (x, y) in curves.items():
        ax.plot(x, y, marker="o" if len(x) < 20 else None, ms=3, label=name)
    if logx:
        ax.set_xscale("symlog")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def _cell(v) -> str:
    """A table cell: floats with one decimal, None as '-'."""
    return f"{v:.1f}" if isinstance(v, float) else ("-" if v is None else str(v))


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table; floats printed with one decimal."""

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def text_table(headers: list[str], rows: list[list]) -> str:
    """The same table aligned for a terminal."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out) + "\n"
