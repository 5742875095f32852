"""``plasticity compare``: evolution against meta-learning GD on the same task, rule space, start
and data, at equal inner-loop examples (docs/evolution.md); report.md, result.json, both rules."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from .. import PlasticityError
from ..config import to_dict
from ..events import Sink
from ..evolution.config import CompareConfig
from ..files import write_json
from .base import Command, check_cluster, cluster_flags
from .compare_lifetime import compare_lifetime, method_runs
from .evolve import LIFETIME, LIFETIME_SMOKE, SMOKE, load_data, rule_accuracy, rule_summary


def _gd_run(cfg: CompareConfig, data, device, steps: int):
    """Meta-learning GD from the same start, on the same networks and batches, for ``steps``."""
    from ..meta import meta_train

    meta = cfg.meta_config(steps=steps, eval_every=steps, eval_train=cfg.eval_train,
                           eval_examples=cfg.eval_examples, meta_loss=cfg.meta_loss)
    per_step = cfg.episodes * cfg.batch
    curve, t0 = [], time.perf_counter()

    def on_step(rec):
        curve.append({"step": rec["step"], "loss": rec["loss"], "examples": rec["step"] * per_step,
                      "seconds": time.perf_counter() - t0})

    res = meta_train(meta, data, device=device, on_step=on_step)
    return res, curve


def compare_seed(cfg: CompareConfig, data, device, sink: Sink, out: Path,
                 address: str | None = None, resume: bool = False) -> dict:
    """One seed: evolution, then GD with the same inner-loop examples (or ``gd_steps``).
    ``resume``: the evolution continues from the seed's checkpoint when it has one (a seed
    without one starts afresh), GD runs again (it is deterministic); what the killed run logged
    of the parts that run again is dropped or not logged twice."""
    from ..evolution.driver import CHECKPOINT, run_evolution

    prefix = f"compare/seed{cfg.seed}"
    has_ck = resume and (out / f"seed{cfg.seed}" / CHECKPOINT).is_file()
    if resume and not has_ck:
        sink.rewind(0, (), prefix=f"{prefix}/evolution/")
    evo = run_evolution(cfg, data, device=device, out=out / f"seed{cfg.seed}", sink=sink,
                        address=address, prefix=f"{prefix}/evolution", resume=has_ck)
    evo_examples = evo.history[-1]["examples"]
    per_step = cfg.episodes * cfg.batch
    steps = cfg.gd_steps or max(1, round(evo_examples / per_step))
    gd, gd_curve = _gd_run(cfg, data, device, steps)
    gd_rule = dataclasses.replace(gd.rule, provenance={**gd.rule.provenance, "seed": cfg.seed})
    acc = {name: rule_accuracy(cfg, rule, data, device, cfg.eval_train, cfg.eval_examples,
                           cfg.eval_networks) for name, rule in (("evolution", evo.rule),
                                                                ("gd", gd_rule))}
    if resume:
        sink.rewind(0, (), prefix=f"{prefix}/gd/")
    for i, rec in enumerate(gd_curve):
        if i % max(1, len(gd_curve) // 200) == 0 or i == len(gd_curve) - 1:
            sink.metrics({f"compare/seed{cfg.seed}/gd/loss": rec["loss"],
                          f"compare/seed{cfg.seed}/gd/examples": rec["examples"]}, step=rec["step"])
    return {
        "seed": cfg.seed, "start_rule": evo.start.tolist(),
        "start_error": getattr(evo.strategy, "start_error", 0.0),
        "evolution": {"method": evo.rule.provenance["method"], "generations": len(evo.history),
                      "examples": evo_examples, "seconds": evo.history[-1]["seconds"],
                      "final_loss": evo.history[-1]["loss_task"],
                      "test_accuracy": acc["evolution"], **rule_summary(evo.rule),
                      "curve": [{k: h[k] for k in ("generation", "examples", "seconds",
                                                   "loss_task", "loss_best", "loss_mean")}
                                for h in evo.history]},
        "gd": {"method": "gd", "steps": steps, "examples": steps * per_step,
               "seconds": gd_curve[-1]["seconds"], "final_loss": gd_curve[-1]["loss"],
               "test_accuracy": acc["gd"], **rule_summary(gd_rule), "curve": gd_curve,
               "skipped_steps": gd.skipped},
        "evolution_rule": evo.rule, "gd_rule": gd_rule,
    }


def _compare_report(cfg: CompareConfig, runs: list[dict]) -> str:
    lines = [f"# Evolution ({runs[0]['evolution']['method']}) vs meta-learning GD",
             "", f"dataset {cfg.dataset}, |V|={cfg.neurons}, k={cfg.k}, T={cfg.T}, learn={cfg.learn}, "
             f"E={cfg.episodes}, B={cfg.batch}; test accuracy: {cfg.eval_networks} fresh networks, "
             f"{cfg.eval_train} training / {cfg.eval_examples} test examples.", "",
             "| seed | method | generations / steps | inner-loop examples | wall s | final loss "
             "| test acc % | pattern | d[0] < 0 < d[1] |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for name, n in (("evolution", r["evolution"]["generations"]), ("gd", r["gd"]["steps"])):
            m = r[name]
            lines.append(f"| {r['seed']} | {m['method']} | {n} | {m['examples']:,} | "
                         f"{m['seconds']:.1f} | {m['final_loss']:.3f} | "
                         f"{100 * m['test_accuracy']:.1f} | {m['pattern']} | "
                         f"{m.get('difference_perceptron', '-')} |")
    for name in ("evolution", "gd"):
        accs = [100 * r[name]["test_accuracy"] for r in runs]
        lines.append(f"\n{name}: test accuracy {np.mean(accs):.1f} ± {np.std(accs):.1f} % over "
                     f"{len(runs)} seeds")
    lines += ["", "Final output tables side by side (rows: pre history; columns: label row / "
              "predicted row):", "", "| seed | start | evolution | gd |", "|---|---|---|---|"]

    def fmt(table):
        return "[" + "; ".join(", ".join(f"{v:+.2f}" for v in row) for row in table) + "]"

    for r in runs:
        start = np.asarray(r["start_rule"])
        start_t = start[:len(np.ravel(r["gd"]["output_table"]))].reshape(-1, 2).tolist()
        lines.append(f"| {r['seed']} | {fmt(start_t) if cfg.learn != 'rnn' else '-'} | "
                     f"{fmt(r['evolution']['output_table'])} | {fmt(r['gd']['output_table'])} |")
    return "\n".join(lines) + "\n"


def episode_entries(runs: list[dict]) -> list[dict]:
    """The child-run entries of an episodes comparison: the task loss (without L2) against
    inner-loop examples for both methods, and their test accuracies."""
    entries = []
    for r in runs:
        for name in ("evolution", "gd"):
            m = r[name]
            key = "loss_task" if name == "evolution" else "loss"
            entries.append({"name": name, "seed": r["seed"],
                            "params": {"method": m["method"], "inner_loop_examples": m["examples"]},
                            "curve": [(p["examples"], {"loss": p[key]})
                                      for p in m["curve"][::max(1, len(m["curve"]) // 200)]],
                            "summary": {"test_accuracy": m["test_accuracy"]}})
    return entries


def compare_handler(cfg: CompareConfig, ctx) -> dict:
    from ..evolution.driver import CHECKPOINT, load_checkpoint
    from ..rules.io import save_rule

    out, device, sink = Path(ctx.out), ctx.device, ctx.sink
    check_cluster(ctx.address)
    if cfg.objective == "lifetime":  # every outer loop on the lifetime objective
        return compare_lifetime(cfg, ctx)
    seeds = [dataclasses.replace(cfg, seed=cfg.seed + s) for s in range(cfg.seeds)]
    if ctx.resume:  # nothing to resume, or other settings: one line before anything runs
        found = [c for c in seeds if (out / f"seed{c.seed}" / CHECKPOINT).is_file()]
        if not found:
            raise PlasticityError(f"--resume: no seed*/{CHECKPOINT} in {out}: start without "
                                  "--resume")
        for c in found:
            load_checkpoint(out / f"seed{c.seed}", c)
    data = load_data(cfg)
    t0 = time.time()
    runs = []
    for s, seed_cfg in enumerate(seeds):
        run = compare_seed(seed_cfg, data, device, sink, out, address=ctx.address,
                           resume=ctx.resume)
        for name in ("evolution", "gd"):
            rule = run.pop(f"{name}_rule")
            path = save_rule(rule, out / f"seed{cfg.seed + s}" / f"{name}_rule.json")
            sink.rule(f"compare/{name}/seed{cfg.seed + s}", rule, path)
            run[name]["rule"] = str(path)
        runs.append(run)
    report = _compare_report(cfg, runs)
    (out / "report.md").write_text(report)
    summary = {f"{n}_test_accuracy_mean": float(np.mean([r[n]["test_accuracy"] for r in runs]))
               for n in ("evolution", "gd")}
    sink.metrics({f"compare/{k}": v for k, v in summary.items()})
    result = {"command": "compare", "config": to_dict(cfg), **summary, "runs": runs,
              "report": str(out / "report.md"), "seconds": time.time() - t0,
              "method_runs": method_runs(ctx, episode_entries(runs))}
    write_json(out / "result.json", result)
    return result


PRESETS = {
    "smoke": {**SMOKE, "eval_train": 300, "eval_examples": 300, "eval_networks": 1},
    "lifetime-smoke": {**LIFETIME_SMOKE, "strategies": "es,cma,ga", "eval_train": 300,
                       "eval_examples": 300, "eval_networks": 1, "curve_points": 4},
    "lifetime": {**LIFETIME, "strategies": "es,cma,ga,genetic", "eval_neurons": 1000,
                 "eval_train": 9000, "eval_examples": 10000, "eval_networks": 2, "seeds": 3},
    "quick": {"strategy": "genetic", "infinite": True, "generations": 60, "batch": 50,
              "seeds": 3},
    "paper": {"generations": 200, "seeds": 5, "eval_train": 10000, "eval_examples": 10000},
}

def resumable(out: Path) -> bool:
    """``out`` holds a seed's evolution checkpoint (``--resume`` continues from it)."""
    from ..evolution.driver import CHECKPOINT

    return any(Path(out).glob(f"seed*/{CHECKPOINT}"))


COMMAND = Command("compare", "evolution vs meta-learning GD on the same task, rule space, start and data",
                  compare_handler, CompareConfig, PRESETS, arguments=cluster_flags,
                  resumable=resumable)
