"""``plasticity prepare-data``: the MNIST / Fashion-MNIST data root from a folder of the
original .gz files (these machines have no internet)."""

from __future__ import annotations

from pathlib import Path

from .base import Command


def prepare_flags(p) -> None:
    p.add_argument("--root", type=Path, help="data root (default: $PLASTICITY_DATA or ./data)")
    p.add_argument("--source", type=Path, help="folder of the .gz files (default: "
                   "$PLASTICITY_SHARED_DATA, else <repo>/../shared/data if it exists)")


def prepare_handler(_cfg, ctx) -> dict:
    from ..data import prepare_data_root

    root = prepare_data_root(ctx.options.get("root"), ctx.options.get("source"))
    return {"command": "prepare-data", "root": str(root), "summary": f"data ready in {root}"}


COMMAND = Command("prepare-data", "prepare the MNIST / Fashion-MNIST data root", prepare_handler,
                  flags="none", arguments=prepare_flags,
                  options=lambda a: {"root": a.root, "source": a.source})
