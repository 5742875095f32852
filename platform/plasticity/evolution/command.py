"""``plasticity evolve``, ``plasticity compare`` and ``plasticity evolve-theory`` (docs/paper.md 6.6)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from .. import PlasticityError
from ..commands import Command
from ..config import to_dict
from ..events import Sink
from ..files import write_json
from ..theory import PERCEPTRON_SIGNS, sign_pattern
from .config import PRESETS, CompareConfig, EvolutionConfig, TheoryConfig


def _load(cfg):
    from ..data import load_dataset

    return load_dataset(cfg.dataset, data_seed=cfg.data_seed, inputs=cfg.inputs)


def _arguments(p) -> None:
    p.add_argument("--address", help="Ray cluster address (default: an embedded local Ray); "
                                     "used when workers > 0")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpointed generation "
                        "(compare: each seed from its own checkpoint)")


def rule_summary(rule) -> dict:
    """The output table, its sign pattern, and the Theorem 1 checks (T = 1: 2 x 2 table)."""
    table = rule.output.table()
    out = {"output_table": table.tolist(), "pattern": sign_pattern(table)}
    if rule.T == 1:
        signs = tuple(tuple(int(v) for v in row) for row in np.sign(table.numpy()).tolist())
        diff = (table[:, 0] - table[:, 1]).tolist()
        out.update(perceptron=signs == PERCEPTRON_SIGNS, difference=diff,
                   difference_perceptron=bool(diff[0] < 0 < diff[1]))
    if rule.rnn is not None:
        out["rnn_table"] = rule.rnn.table().tolist()
    return out


def _accuracy(cfg, rule, data, device, n_train: int, n_test: int, networks: int) -> float:
    from ..meta import evaluate_rule

    return evaluate_rule(cfg.meta_config(), rule, data, device, n_train=n_train, n_test=n_test,
                         networks=networks)


def _check_address(args) -> None:
    """An unreachable cluster or a refused token is one line now, not a wait in ray.init."""
    from .. import ray_cluster

    ray_cluster.check_cluster(getattr(args, "address", None))


def cmd_evolve(cfg: EvolutionConfig, args, device: str, sink: Sink) -> dict:
    from ..rules.io import save_rule
    from .driver import load_checkpoint, run_evolution

    _check_address(args)
    if args.resume:
        load_checkpoint(args.out, cfg)  # nothing to resume, or other settings: one line now
    data = _load(cfg)
    t0 = time.time()
    run = run_evolution(cfg, data, device=device, out=args.out, resume=args.resume, sink=sink,
                        address=args.address)
    rule_path = save_rule(run.rule, Path(args.out) / "rule.json")
    sink.rule("evolve", run.rule, rule_path)
    n_tr, n_te = cfg.n_train or data.x_train.shape[0], cfg.n_test or data.x_test.shape[0]
    acc = _accuracy(cfg, run.rule, data, device, n_tr, n_te, 1)
    sink.metrics({"evolution/test_accuracy": acc})
    last = run.history[-1]
    result = {"command": "evolve", "config": to_dict(cfg), "rule": str(rule_path),
              "method": run.rule.provenance["method"], "generations": last["generation"],
              "final_loss": last["loss_center"], "loss_best": last["loss_best"],
              "examples": last["examples"], "test_accuracy": acc,
              "start_rule": run.start.tolist(), "final_rule": run.final.tolist(),
              "replaced_actors": run.replaced_actors, **rule_summary(run.rule),
              "seconds": time.time() - t0}
    if hasattr(run.strategy, "start_error"):
        result["start_error"] = run.strategy.start_error
    write_json(Path(args.out) / "history.json", run.history)
    write_json(Path(args.out) / "result.json", result)
    return result


def _gd_run(cfg: CompareConfig, data, device, steps: int):
    """Meta-learning GD from the same start, on the same networks and batches, for ``steps``."""
    from ..meta import meta_train

    meta = cfg.meta_config(steps=steps, eval_every=steps, eval_train=cfg.eval_train,
                           eval_examples=cfg.eval_examples)
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
    from .driver import CHECKPOINT, run_evolution

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
    acc = {name: _accuracy(cfg, rule, data, device, cfg.eval_train, cfg.eval_examples,
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


def cmd_compare(cfg: CompareConfig, args, device: str, sink: Sink) -> dict:
    from ..rules.io import save_rule
    from .driver import CHECKPOINT, load_checkpoint

    _check_address(args)
    out = Path(args.out)
    seeds = [dataclasses.replace(cfg, seed=cfg.seed + s) for s in range(cfg.seeds)]
    if args.resume:  # nothing to resume, or other settings: one line before anything runs
        found = [c for c in seeds if (out / f"seed{c.seed}" / CHECKPOINT).is_file()]
        if not found:
            raise PlasticityError(f"--resume: no seed*/{CHECKPOINT} in {out}: start without "
                                  "--resume")
        for c in found:
            load_checkpoint(out / f"seed{c.seed}", c)
    data = _load(cfg)
    t0 = time.time()
    runs = []
    for s, seed_cfg in enumerate(seeds):
        run = compare_seed(seed_cfg, data, device, sink, out, address=args.address,
                           resume=args.resume)
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
              "report": str(out / "report.md"), "seconds": time.time() - t0}
    write_json(out / "result.json", result)
    return result


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


def cmd_evolve_theory(cfg: TheoryConfig, args, device: str, sink: Sink) -> dict:
    from .theory import theory_sweep

    data = _load(cfg)
    t0 = time.time()

    def progress(row):
        i = progress.count = getattr(progress, "count", 0) + 1
        sink.metrics({f"evolution_theory/step_error_{f}": v for f, v in row["step_error"].items()}
                     | {"evolution_theory/theta": row["theta"], "evolution_theory/eps": row["eps"]},
                     step=i)

    rows = theory_sweep(cfg, data, device, progress=progress)
    out = Path(args.out)
    report = _theory_report(rows)
    (out / "report.md").write_text(report)
    closer = [r["closer"] for r in rows]
    result = {"command": "evolve-theory", "config": to_dict(cfg), "rows": rows,
              "closer": max(set(closer), key=closer.count), "report": str(out / "report.md"),
              "seconds": time.time() - t0}
    write_json(out / "result.json", result)
    return result


COMMANDS = {
    "evolve": Command("evolve a plasticity rule: allele model (genetic), GA or ES", EvolutionConfig,
                      PRESETS["evolve"], cmd_evolve, arguments=_arguments),
    "compare": Command("evolution vs meta-learning GD on the same task, rule space, start and "
                       "data", CompareConfig, PRESETS["compare"], cmd_compare,
                       arguments=_arguments),
    "evolve-theory": Command("allele-frequency trajectories against the predicted GD forms",
                             TheoryConfig, PRESETS["evolve-theory"], cmd_evolve_theory),
}
