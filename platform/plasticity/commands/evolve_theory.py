"""``plasticity evolve-theory``: allele-frequency trajectories of the infinite-population allele
model against the two predicted GD forms (docs/evolution.md)."""

from __future__ import annotations

import time
from pathlib import Path

from ..config import to_dict
from ..evolution.config import TheoryConfig
from ..files import write_json
from .base import Command
from .evolve import SMOKE, load_data


def _theory_report(rows: list[dict]) -> str:
    lines = ["# Allele-frequency trajectories against the predicted GD forms (docs/paper.md 6.6)", "",
             "step error = sum_t |dx - dx_pred| / sum_t |dx| (one generation from the measured "
             "state); trajectory error = max_t |x - xhat|_inf / max_t |x - x0|_inf.", "",
             "| theta | eps | genes | generations | step err replicator | step err (2-2x) "
             "| traj err replicator | traj err (2-2x) | closer | max |dx| moved | loss first -> last |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['theta']} | {r['eps']} | {r['genes']} | {r['generations']} | "
                     f"{r['step_error']['replicator']:.3f} | {r['step_error']['paper']:.3f} | "
                     f"{r['trajectory_error']['replicator']:.3f} | "
                     f"{r['trajectory_error']['paper']:.3f} | {r['closer']} | {r['moved']:.3f} | "
                     f"{r['loss_first']:.3f} -> {r['loss_last']:.3f} |")
    return "\n".join(lines) + "\n"


def evolve_theory_handler(cfg: TheoryConfig, ctx) -> dict:
    from ..evolution.theory import theory_sweep

    device, sink = ctx.device, ctx.sink
    data = load_data(cfg)
    t0 = time.time()

    def progress(row):
        i = progress.count = getattr(progress, "count", 0) + 1
        sink.metrics({f"evolution_theory/step_error_{f}": v for f, v in row["step_error"].items()}
                     | {"evolution_theory/theta": row["theta"], "evolution_theory/eps": row["eps"]},
                     step=i)

    rows = theory_sweep(cfg, data, device, progress=progress)
    out = Path(ctx.out)
    report = _theory_report(rows)
    (out / "report.md").write_text(report)
    closer = [r["closer"] for r in rows]
    result = {"command": "evolve-theory", "config": to_dict(cfg), "rows": rows,
              "closer": max(set(closer), key=closer.count), "report": str(out / "report.md"),
              "seconds": time.time() - t0}
    write_json(out / "result.json", result)
    return result


PRESETS = {
    "smoke": {**SMOKE, "thetas": "0.1,0.2", "infinite": True, "genes": 10},
    "quick": {"infinite": True, "generations": 30, "batch": 50, "thetas": "0.03,0.1,0.2",
              "epss": "0.05,0.1,0.25"},
    "paper": {"infinite": True, "generations": 100, "thetas": "0.01,0.03,0.1,0.2",
              "epss": "0.025,0.05,0.1,0.25"},
}

COMMAND = Command("evolve-theory", "allele-frequency trajectories against the predicted GD forms",
                  evolve_theory_handler, TheoryConfig, PRESETS)
