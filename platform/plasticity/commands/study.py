"""``plasticity study NAME``: one of the paper's studies (fig3, fig2, table2, theory, dynamics,
robustness) at a preset's sizes, tracked in MLflow like every command (its report, result and learned rules
are the run's artifacts)."""

from __future__ import annotations

from pathlib import Path

from .base import Command
from .paper_studies import STUDIES, STUDY_PRESETS, StudyConfig, run_study


def study_handler(cfg: StudyConfig, ctx) -> dict:
    name = ctx.options["name"]
    result = run_study(name, cfg, ctx, preset=ctx.preset or COMMAND.default_preset)
    if name == "robustness":
        from .robustness_study import plot_robust_vs_clean

        plot_robust_vs_clean(result, Path(ctx.out) / "robust_vs_clean.png")
    ctx.sink.metrics({f"study/{k}": v for k, v in result.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)})
    for f in sorted(Path(ctx.out).glob("*")):  # the study's own files (its parts are child runs)
        if f.suffix in (".md", ".json", ".png"):
            ctx.sink.artifact(f)
    return result


def study_flags(p) -> None:
    p.add_argument("name", choices=sorted(STUDIES), help="the study")


COMMAND = Command("study", "run a study of the paper (fig3, fig2, table2, theory, dynamics, robustness)",
                  study_handler, StudyConfig, STUDY_PRESETS, arguments=study_flags,
                  options=lambda a: {"name": a.name}, default_preset="quick",
                  out_name=lambda o: f"study-{o['name']}")
