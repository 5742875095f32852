"""``plasticity reproduce --preset quick|paper``: the whole study in one command.

An ordered list of stages, each one registered command run through its own handler (exactly as
``plasticity <command> --set ...``) in ``OUT/<stage>/``, each an MLflow child run of one parent
run: meta-learn the T=1 and T=3 rules by GD on synthetic data, evolve the T=1 rule, compare
evolution with GD, transfer the learned rules to all six data sets beside GD on the same
networks, and attack rule-trained and GD-trained networks. Stages whose command is not in this
build are skipped and listed. At the end: a summary table on the terminal, ``OUT/report.md``
with the plots, ``OUT/result.json``, all logged to the parent run.

Sizes come from the study presets of ``plasticity.commands.paper_studies`` (the same meta-learning configs as
``plasticity study fig3``); adding a stage is one entry in :func:`stages`.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import PlasticityError
from ..config import to_dict
from ..events import Sink
from ..files import atomic_write_text, write_json
from ..report import curves_plot, markdown_table, rule_heatmap, text_table
from .base import Command, default_out, run_handler

IMAGES = ("mnist", "fashion_mnist")
SIX = ("halfspace", "relu1", "relu2", "rnn", *IMAGES)


@dataclass(frozen=True)
class Stage:
    """One step of the study: a command, a preset (or None), its --set fields."""

    name: str
    command: str
    preset: str | None
    sets: dict = field(default_factory=dict)
    rules: dict = field(default_factory=dict)  # field -> "stage,...": rules earlier stages made


def _meta_sets(preset: str, **kw) -> dict:
    from .paper_studies import STUDY_PRESETS, StudyConfig, meta_config

    sc = StudyConfig(**STUDY_PRESETS[preset])
    return to_dict(meta_config(sc, **kw))


# Per-preset sizes of the stages that have no study preset of their own ("smoke": seconds, for
# tests; "quick": under 15 minutes on 2 CPU cores; "paper": the paper's sizes).
SIZES = {
    "smoke": {"small": {"neurons": 20, "k": 10}, "meta": {"n_train": 600, "n_test": 500},
              "targets": "halfspace,mnist",
              "evolve": ("smoke", {"genes": 10}), "compare": ("smoke", {"genes": 10}),
              "transfer": ("smoke", {"shapes": "40x20"}), "attack": ("smoke", {"eps": "0,1"})},
    "quick": {"small": {"neurons": 100, "k": 50}, "meta": {"n_train": 4000, "n_test": 2000},
              "meta_T1": {"steps": 100}, "meta_T3": {"steps": 60, "episodes": 8, "horizon": 4000},
              "targets": ",".join(SIX),
              "evolve": ("smoke", dict(neurons=100, k=50, population=64, generations=30, batch=50,
                                       episodes=4, n_train=0, n_test=2000, genes=10)),
              # compare's own quick preset: the infinite-population allele model against GD from
              # the same starts, equal inner-loop examples, 3 seeds (~40 s; a 16 x 10 genetic
              # population is too small to learn and only showed that)
              "compare": ("quick", {}),
              "transfer": ("quick", dict(shapes="100x50,400x200", seeds=2, orders=1,
                                         n_train_synthetic=2000, n_train_images=2000, n_test=1000,
                                         eval_every=1000)),
              "attack": ("quick", dict(neurons=400, k=200, n_train=6000, n_test=1000, n_attack=50,
                                       passes=1, eps="0,1,2,3", steps=10, restarts=1,
                                       paper_steps=10, queries=100,
                                       attacks="paper,fgsm,pgd_l2,square"))},
    "paper": {"small": {"neurons": 100, "k": 50}, "meta": {}, "targets": ",".join(SIX),
              "evolve": ("paper", {"neurons": 100, "k": 50}), "compare": ("paper", {}),
              "transfer": ("paper", {}), "attack": ("paper", {})},
}


def stages(preset: str) -> list[Stage]:
    """The study's stages for ``preset`` (smoke | quick | paper), in order."""
    size = SIZES[preset]
    small = {**size["small"], **size["meta"]}
    return [
        Stage("meta-T1", "meta-train", None,
              _meta_sets(preset, dataset="halfspace", T=1, learn="output",
                         **{**small, **size.get("meta_T1", {})})),
        Stage("meta-T3", "meta-train", None,
              _meta_sets(preset, dataset="relu1", T=3, learn="both",
                         **{**small, "horizon": 200 if preset == "smoke" else 10000,
                            **size.get("meta_T3", {})})),
        Stage("evolve-T1", "evolve", size["evolve"][0],
              {"dataset": "halfspace", "T": 1, **size["evolve"][1]}),
        Stage("evolution-vs-gd", "compare", *size["compare"]),
        Stage("transfer", "transfer", size["transfer"][0],
              {"targets": size["targets"], "gd": "output", **size["transfer"][1]},
              rules={"sources": "meta-T1,meta-T3,evolve-T1"}),
        Stage("attack-rule", "attack", size["attack"][0],
              {"dataset": "mnist", "T": 3, "train": "rule", **size["attack"][1]},
              rules={"rule": "meta-T3"}),
        Stage("attack-gd", "attack", size["attack"][0],
              {"dataset": "mnist", "T": 3, "train": "gd", **size["attack"][1]}),
    ]


def _resolve_rules(stage: Stage, out: Path, available: set[str]) -> dict | None:
    """The stage's sets with rule references to earlier stages' rules (``OUT/rules/<stage>.json``,
    so a transfer table names its rows by stage); None if none of them exists."""
    sets = dict(stage.sets)
    for key, refs in stage.rules.items():
        paths = [str(out / "rules" / f"{src}.json") for src in refs.split(",")
                 if src in available and (out / "rules" / f"{src}.json").is_file()]
        if not paths:
            return None
        sets[key] = ",".join(paths)
    return sets


def stages_flag(p) -> None:
    p.add_argument("--stages", help="comma-separated stage names to run (default: all)")


def stages_option(args) -> dict:
    return {"stages": args.stages}


def reproduce_handler(_cfg, ctx) -> dict:
    """Run every stage (or ``--stages``), then the summary and the report."""
    from . import MODULES, prepare

    preset = ctx.preset or "quick"
    if preset not in SIZES:
        raise PlasticityError(f"unknown preset '{preset}' for reproduce: use {', '.join(SIZES)}")
    if ctx.sets:
        raise PlasticityError("reproduce takes no --set: pick --preset quick or paper, or "
                              "run the stage commands yourself")
    plan = stages(preset)
    text = ctx.options.get("stages")
    wanted = None if not text else [s.strip() for s in text.split(",") if s.strip()]
    unknown = [w for w in wanted or [] if w not in {s.name for s in plan}]
    if unknown:
        raise PlasticityError(f"unknown stage '{unknown[0]}': use {', '.join(s.name for s in plan)}")
    device = ctx.device
    out = default_out(ctx.out, f"reproduce-{preset}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = ctx.tracking
    store = parent = None
    if uri is not None:
        from ..tracking import open_store

        store = open_store(uri)
        parent = store.sink(f"reproduce {preset}", tags={"plasticity.command": "reproduce",
                                                         "plasticity.preset": preset}, out=out)
        parent.params({"preset": preset, "seed": ctx.seed or 0, "device": device,
                       "stages": ",".join(s.name for s in plan if wanted is None or s.name in wanted)})
        parent.start()
    t0 = time.time()
    done, results, skipped, seconds = set(), {}, {}, {}
    status = "FAILED"
    try:
        for stage in plan:
            if wanted is not None and stage.name not in wanted:
                if (out / stage.name / "result.json").is_file():  # an earlier run's output
                    done.add(stage.name)
                    results[stage.name] = json.loads((out / stage.name / "result.json").read_text())
                continue
            if stage.command not in MODULES:
                skipped[stage.name] = f"command '{stage.command}' is not in this build"
                continue
            sets = _resolve_rules(stage, out, done)
            if sets is None:
                skipped[stage.name] = "its input rules were not produced"
                continue
            _log(f"stage {stage.name}: plasticity {stage.command}"
                 + (f" --preset {stage.preset}" if stage.preset else ""), t0)
            command, cfg, sctx = prepare(stage.command, stage.preset, sets, out / stage.name,
                                         seed=ctx.seed, device=device, progress=ctx.progress)
            s0 = time.time()
            results[stage.name] = _run_stage(stage, command, cfg, sctx, store, parent)
            seconds[stage.name] = time.time() - s0
            done.add(stage.name)
            if (out / stage.name / "rule.json").is_file():
                (out / "rules").mkdir(exist_ok=True)
                shutil.copyfile(out / stage.name / "rule.json", out / "rules" / f"{stage.name}.json")
            _log(f"stage {stage.name} done in {seconds[stage.name]:.0f} s", t0)
        summary, report = summarize(results, out, preset, skipped, seconds, time.time() - t0)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if parent is not None and status != "FINISHED":
            parent.close(status)
    result = {"command": "reproduce", "preset": preset, "out": str(out), "stages": seconds,
              "skipped": skipped, "seconds": time.time() - t0, "report": str(report),
              "summary_metrics": summary["metrics"]}
    write_json(out / "result.json", result)
    if parent is not None:
        parent.metrics(summary["metrics"])
        for png in sorted(out.glob("*.png")):
            parent.artifact(png, "report")
        parent.artifact(report, "report")
        parent.close("FINISHED")
    return {**result, "summary": summary["text"]}


def _log(msg: str, t0: float) -> None:
    print(f"[{time.time() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _run_stage(stage: Stage, command, cfg, sctx, store, parent) -> dict:
    """One stage: its handler with events.jsonl and, when tracking, a child run."""
    child: Sink | None = None
    if store is not None:
        child = store.sink(stage.name, parent_run_id=parent.run_id, out=sctx.out,
                           tags={"plasticity.command": stage.command, "reproduce.stage": stage.name,
                                 "plasticity.preset": stage.preset or "-"})
    return run_handler(command, cfg, sctx, child)


# --- summary -------------------------------------------------------------------------------

def _pct(v) -> float | None:
    return None if v is None else 100 * float(v) if float(v) <= 1.0 else float(v)


def summarize(results: dict, out: Path, preset: str, skipped: dict, seconds: dict,
              total: float) -> tuple[dict, Path]:
    """The terminal table, report.md (with plots) and the parent run's metrics."""
    from ..rules.io import load_rule

    metrics, sections, text = {}, [], []
    rows = []
    for name in ("meta-T1", "meta-T3", "evolve-T1"):
        r = results.get(name)
        if r is None:
            continue
        acc = _pct(r.get("test_accuracy"))
        loss = r.get("final_loss")
        rows.append([name, r.get("config", {}).get("dataset"), r.get("config", {}).get("T"),
                     None if loss is None else f"{float(loss):.3f}", acc])
        metrics[f"reproduce/{name}/test_accuracy"] = (acc or 0) / 100
        rule_file = out / name / "rule.json"
        if rule_file.is_file():
            rule_heatmap(load_rule(rule_file), out / f"rule_{name}.png", title=name)
    if rows:
        head = ["rule", "learned on", "T", "final loss", "test accuracy %"]
        text.append("Learned rules\n" + text_table(head, rows))
        sections.append("## Learned rules\n\n" + markdown_table(head, rows) + "\n" + "".join(
            f"![{r[0]}](rule_{r[0]}.png)\n" for r in rows if (out / f"rule_{r[0]}.png").is_file()))
    cmp = results.get("evolution-vs-gd")
    if cmp:
        e, g = cmp.get("evolution_test_accuracy_mean"), cmp.get("gd_test_accuracy_mean")
        metrics["reproduce/compare/evolution"], metrics["reproduce/compare/gd"] = e, g
        line = [["evolution", _pct(e)], ["GD", _pct(g)]]
        run = (cmp.get("runs") or [{}])[0]
        ev, gd = run.get("evolution", {}).get("curve"), run.get("gd", {}).get("curve")
        if ev and gd:
            curves_plot({"evolution (task loss)": ([c["examples"] for c in ev],
                                                   [c["loss_task"] for c in ev]),
                         "GD (meta loss)": ([c["examples"] for c in gd], [c["loss"] for c in gd])},
                        out / "evolution_vs_gd.png", xlabel="inner-loop examples", ylabel="loss",
                        title="Evolution vs GD, same rule family and inner loop")
        text.append("Evolution vs GD (same rule family, same inner loop)\n"
                    + text_table(["method", "test accuracy %"], line))
        pngs = "![evolution vs GD](evolution_vs_gd.png)\n" if (out / "evolution_vs_gd.png").is_file() else ""
        sections.append("## Evolution vs GD\n\n" + markdown_table(["method", "test accuracy %"], line)
                        + "\n" + pngs)
    tr = results.get("transfer")
    if tr:
        text_t, md_t, m = _transfer_tables(tr)
        metrics.update(m)
        text.append("Transfer: test accuracy %, mean over networks (GD on the same networks)\n"
                    + text_t)
        pngs = "".join(f"![{p.name}](transfer/{p.name})\n" for p in sorted((out / "transfer").glob("*.png")))
        sections.append("## Transfer to six data sets\n\n" + md_t + "\n" + pngs)
    curves = {}
    for name in ("attack-rule", "attack-gd"):
        r = results.get(name)
        if r and "eps" in r and "worst" in r:
            curves[name.replace("attack-", "trained by ")] = (r["eps"], [_pct(v) for v in r["worst"]])
            for e, v in zip(r["eps"], r["worst"]):
                metrics[f"reproduce/{name}/worst/eps_{e:g}"] = float(v)
    if curves:
        eps = sorted({e for x, _ in curves.values() for e in x})
        rows = [[name, *[dict(zip(x, y)).get(e) for e in eps]] for name, (x, y) in curves.items()]
        head = ["MNIST network", *[f"eps={e:g}" for e in eps]]
        curves_plot(curves, out / "robustness.png", xlabel="L2 radius eps",
                    ylabel="accuracy under the worst attack %", title="Robustness (MNIST, T=3)")
        text.append("Robustness: accuracy % under the worst attack per L2 radius\n"
                    + text_table(head, rows))
        sections.append("## Robustness\n\n" + markdown_table(head, rows)
                        + "\n![robustness](robustness.png)\n")
    times = [[n, round(s)] for n, s in seconds.items()] + [["total", round(total)]]
    text.append("Wall time (s)\n" + text_table(["stage", "seconds"], times))
    if skipped:
        text.append("Skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()) + "\n")
    md = (f"# plasticity reproduce --preset {preset}\n\nEvery stage is a child run of one MLflow "
          "run; each stage's folder holds its result.json, report.md and plots.\n\n"
          + "\n".join(sections) + "\n## Wall time\n\n" + markdown_table(["stage", "seconds"], times)
          + ("\nSkipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()) + "\n" if skipped else ""))
    report = atomic_write_text(out / "report.md", md)
    return {"text": "\n".join(text), "metrics": {k: v for k, v in metrics.items() if v is not None}}, report


def _transfer_tables(tr: dict) -> tuple[str, str, dict]:
    """Rows = data sets, columns = source rule x shape, GD per shape."""
    cells = list(tr["cells"].values())
    cols = list(dict.fromkeys((c["source"], c["shape"]) for c in cells))
    shapes = list(dict.fromkeys(c["shape"] for c in cells))
    targets = list(dict.fromkeys(c["target"] for c in cells))
    by = {(c["source"], c["shape"], c["target"]): c for c in cells}
    gd = {(c["shape"], c["target"]): c["gd"]["mean"] for c in cells if "gd" in c}
    head = ["data set", *[f"{s} {sh}" for s, sh in cols], *[f"GD {sh}" for sh in shapes]]
    rows, metrics = [], {}
    for t in targets:
        row = [t]
        for s, sh in cols:
            c = by.get((s, sh, t))
            row.append(None if c is None else c["mean"])
            if c is not None:
                metrics[f"transfer/{s}/{sh}/{t}"] = c["mean"] / 100
        for sh in shapes:
            row.append(gd.get((sh, t)))
            if (sh, t) in gd:
                metrics[f"transfer/gd/{sh}/{t}"] = gd[sh, t] / 100
        rows.append(row)
    return text_table(head, rows), markdown_table(head, rows), metrics


COMMAND = Command("reproduce", "the whole study in one command, tracked in MLflow", reproduce_handler,
                  arguments=stages_flag, options=stages_option)
