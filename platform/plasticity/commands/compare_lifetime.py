"""``plasticity compare --set objective=lifetime``: every outer loop on the lifetime objective.

For each seed: each strategy of ``strategies`` evolves the rule from the common start (the GD
start of the seed) on the lifetime objective (evolution/lifetime.py); then meta-learning GD runs
from the same start on truncated long episodes (``horizon`` = L: each of its E networks keeps
learning across steps for L examples, the gradient truncated at each step) for as many
inner-loop examples as the largest evolution budget. Every method's rule is scored along the way
on ONE fixed lifetime draw (draw 0: networks, orders and validation examples no generation
uses), so the curves of validation accuracy against inner-loop examples share one chart
(``curves_seed<s>.png``, an MLflow artifact). At the end every method's rule trains fresh
networks of ``eval_neurons`` (one pass over ``eval_train`` examples) and is tested on
``eval_examples`` test examples, with the recurrence diagnostics of those networks.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from ..config import Common, TrainConfig, to_dict
from ..files import write_json
from .base import parent_run

DRAW = 0  # the lifetime draw every curve point is scored on (generations use 1, 2, ...)


def _points(n: int, k: int) -> list[int]:
    """k indices spread over 0..n-1 (the last included)."""
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, min(n, k))})


def final_test(cfg, rule, data, device) -> dict:
    """Test accuracy of fresh networks of ``eval_neurons`` trained by ``rule`` (one pass over
    ``eval_train`` examples, ``eval_networks`` networks) and their recurrence diagnostics."""
    from ..dynamics import trained_diagnostics
    from ..transfer import run_train

    v = cfg.eval_neurons or cfg.neurons
    common = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(Common)}
    tc = TrainConfig(**{**common, "neurons": v, "k": max(1, v // 2) if cfg.eval_neurons else cfg.k,
                        "n_train": cfg.eval_train, "n_test": cfg.eval_examples},
                     networks=cfg.eval_networks, eval_every=10**9, eval_examples=1)
    res = run_train(tc, rule, device=device, data=data)
    out = {"test_accuracy": float(np.mean(res.test_accuracy)),
           "test_accuracy_runs": res.test_accuracy.tolist(), "neurons": v,
           "updates": res.updates.tolist()}
    if cfg.T > 1:
        d = trained_diagnostics(tc, data, res.W, device)
        out["diagnostics"] = {k: float(np.mean(np.asarray(val))) for k, val in d.items()
                              if k != "active_by_round"}
    return out


def lifetime_seed(cfg, data, device, sink, out: Path, address=None, resume=False) -> dict:
    """One seed: every strategy, then GD at the largest evolution budget; curves on draw 0."""
    from ..evolution.driver import CHECKPOINT, run_evolution
    from ..evolution.lifetime import LifetimeEvaluator, lifetime_split
    from ..evolution.strategies import for_strategy
    from ..meta import meta_train

    ev = LifetimeEvaluator(cfg, data, device)
    space = ev.space
    prefix = f"compare/seed{cfg.seed}"
    methods, rules = {}, {}
    for name in cfg.strategy_list:
        scfg = for_strategy(cfg, name)
        folder = out / f"seed{cfg.seed}" / name
        has_ck = resume and (folder / CHECKPOINT).is_file()
        t0 = time.perf_counter()
        run = run_evolution(scfg, data, device=device, out=folder, sink=sink, address=address,
                            prefix=f"{prefix}/{name}", resume=has_ck)
        seconds = time.perf_counter() - t0
        picks = _points(len(run.history), cfg.curve_points)
        centers = [run.start] + [np.asarray(run.history[i]["rule"]) for i in picks]
        examples = [0] + [run.history[i]["examples"] for i in picks]
        scores = ev.scores(np.stack(centers), DRAW)
        methods[name] = {"method": run.rule.provenance["method"], "generations": len(run.history),
                         "examples": run.history[-1]["examples"], "seconds": seconds,
                         "final_loss": run.history[-1]["loss_task"],
                         "curve": [{"examples": int(e), "loss": float(s[0]), "accuracy": float(s[1]),
                                    "ce": float(s[2])} for e, s in zip(examples, scores)]}
        rules[name] = run.rule
    budget = max(m["examples"] for m in methods.values())
    per_step = cfg.episodes * cfg.batch
    steps = cfg.gd_steps or max(1, round(budget / per_step))
    pool, _ = lifetime_split(cfg, data.x_train.shape[0])
    meta = cfg.meta_config(steps=steps, horizon=cfg.lifetime_examples, n_train=pool,
                           meta_loss=cfg.meta_loss,
                           eval_every=max(1, steps // cfg.curve_points),
                           eval_train=min(cfg.eval_train, pool), eval_examples=cfg.eval_examples)
    snaps: list[tuple[int, object]] = []
    losses: list[dict] = []
    t0 = time.perf_counter()
    res = meta_train(meta, data, device=device, on_rule=lambda s, r: snaps.append((s, r)),
                     on_step=lambda rec: losses.append(rec))
    gd_seconds = time.perf_counter() - t0
    gd_rule = dataclasses.replace(res.rule, provenance={**res.rule.provenance, "seed": cfg.seed})
    scores = ev.scores(np.stack([space.initial()] + [space.coeffs(r) for _, r in snaps]), DRAW)
    steps_at = [0] + [s for s, _ in snaps]
    methods["gd"] = {"method": "gd", "steps": steps, "examples": steps * per_step,
                     "seconds": gd_seconds, "final_loss": losses[-1]["loss"],
                     "skipped_steps": res.skipped, "collapsed_starts": res.collapsed_starts,
                     "curve": [{"examples": int(s * per_step), "loss": float(v[0]),
                                "accuracy": float(v[1]), "ce": float(v[2])}
                               for s, v in zip(steps_at, scores)]}
    rules["gd"] = gd_rule
    if resume:
        sink.rewind(0, (), prefix=f"{prefix}/gd/")
    for name, m in methods.items():
        for point in m["curve"]:  # one metric name per method: the UI overlays them
            sink.metrics({f"{prefix}/{name}/validation_accuracy": point["accuracy"],
                          f"{prefix}/{name}/validation_loss": point["loss"]},
                         step=point["examples"])
        m.update(final_test(cfg, rules[name], data, device))
        sink.metrics({f"{prefix}/{name}/test_accuracy": m["test_accuracy"],
                      **{f"{prefix}/{name}/diag/{k}": v
                         for k, v in m.get("diagnostics", {}).items()}})
    return {"seed": cfg.seed, "start_rule": space.initial().tolist(), "methods": methods,
            "rules": rules}


def plot_curves(run: dict, path: Path, title: str) -> Path:
    """Validation accuracy against inner-loop examples, every method on one chart."""
    from ..report import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m in run["methods"].values():
        xs = [p["examples"] for p in m["curve"]]
        ax.plot(xs, [100 * p["accuracy"] for p in m["curve"]], marker="o", ms=3,
                label=f"{m['method']} ({m['test_accuracy'] * 100:.1f}% test)")
    ax.set_xlabel("inner-loop examples processed")
    ax.set_ylabel("validation accuracy % (lifetime draw 0)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def report(cfg, runs: list[dict]) -> str:
    names = list(runs[0]["methods"])
    lines = [f"# Outer loops on the lifetime objective ({cfg.dataset}, |V|={cfg.neurons}, "
             f"k={cfg.k}, T={cfg.T}, learn={cfg.learn})", "",
             f"A member's score: validation CE / accuracy of {cfg.lifetime_networks} fresh networks "
             f"after {cfg.lifetime_examples:,} examples ({cfg.validation} held-out training "
             f"examples); population {cfg.population}, {cfg.generations} generations; GD: E="
             f"{cfg.episodes}, B={cfg.batch}, horizon {cfg.lifetime_examples:,}. Final test: "
             f"{cfg.eval_networks} fresh networks of |V|={cfg.eval_neurons or cfg.neurons}, one pass "
             f"over {cfg.eval_train:,} examples, {cfg.eval_examples:,} test examples.", "",
             "| seed | method | inner-loop examples | wall s | final validation acc % | test acc % "
             "| h_T differs | silent rounds | W mean | W std |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for n in names:
            m = r["methods"][n]
            d = m.get("diagnostics", {})
            f = lambda k, fmt, d=d: format(d[k], fmt) if k in d else "-"  # noqa: E731
            lines.append(f"| {r['seed']} | {m['method']} | {m['examples']:,} | {m['seconds']:.0f} | "
                         f"{100 * m['curve'][-1]['accuracy']:.1f} | {100 * m['test_accuracy']:.1f} | "
                         f"{f('h_T_differs', '.2f')} | {f('silent_rounds', '.2f')} | "
                         f"{f('W_mean', '+.3f')} | {f('W_std', '.3f')} |")
    lines.append("")
    for n in names:
        accs = [100 * r["methods"][n]["test_accuracy"] for r in runs]
        lines.append(f"- {n}: test accuracy {np.mean(accs):.1f} ± {np.std(accs):.1f} % over "
                     f"{len(runs)} seed(s)")
    return "\n".join(lines) + "\n"


def method_runs(ctx, entries: list[dict]) -> int:
    """One MLflow child run per entry (a method of one seed) under the command's run, every one
    with the SAME metric names, so the UI overlays the methods on one chart when the child runs
    are selected together. An entry: ``name``, ``seed``, ``params``, ``curve`` (a list of
    ``(step, metrics)``), ``summary`` (metrics logged once). A tracking failure is one warning,
    never the command's end. Returns the number of child runs made."""
    import sys

    from ..tracking import open_store

    parent = parent_run(ctx)
    if ctx.tracking is None or parent is None or parent.failed is not None:
        return 0
    made = 0
    try:
        parent_id = parent.inner.start()
        store = open_store(ctx.tracking)
        for e in entries:
            child = store.sink(f"{e['name']} seed{e['seed']}", parent_run_id=parent_id,
                               tags={"plasticity.command": "compare", "compare.method": e["name"],
                                     "compare.seed": str(e["seed"])}, register=False)
            child.params({**e["params"], "seed": e["seed"]})
            child.start()
            for step, metrics in e["curve"]:
                child.metrics(metrics, step=step)
            child.metrics(e["summary"])
            child.close("FINISHED")
            made += 1
    except Exception as exc:  # noqa: BLE001 - tracking never costs the command its results
        print(f"plasticity: warning: the per-method child runs were not all logged "
              f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})",
              file=sys.stderr)
    return made


def lifetime_entries(runs: list[dict]) -> list[dict]:
    """The child-run entries of a lifetime comparison: validation accuracy / loss against
    inner-loop examples, test accuracy and diagnostics."""
    return [{"name": name, "seed": r["seed"],
             "params": {"method": m["method"], "inner_loop_examples": m["examples"]},
             "curve": [(p["examples"], {"validation_accuracy": p["accuracy"],
                                        "validation_loss": p["loss"]}) for p in m["curve"]],
             "summary": {"test_accuracy": m["test_accuracy"],
                         **{f"diag/{k}": v for k, v in m.get("diagnostics", {}).items()}}}
            for r in runs for name, m in r["methods"].items()]


def compare_lifetime(cfg, ctx) -> dict:
    from ..rules.io import save_rule

    out, sink = Path(ctx.out), ctx.sink
    t0 = time.time()
    from ..data import load_dataset

    data = load_dataset(cfg.dataset, data_seed=cfg.data_seed, inputs=cfg.inputs)
    runs = []
    for s in range(cfg.seeds):
        seed_cfg = dataclasses.replace(cfg, seed=cfg.seed + s)
        run = lifetime_seed(seed_cfg, data, ctx.device, sink, out, ctx.address, ctx.resume)
        for name, rule in run.pop("rules").items():
            path = save_rule(rule, out / f"seed{seed_cfg.seed}" / f"{name}_rule.json")
            sink.rule(f"compare/{name}/seed{seed_cfg.seed}", rule, path)
            run["methods"][name]["rule"] = str(path)
        png = plot_curves(run, out / f"curves_seed{seed_cfg.seed}.png",
                          f"{cfg.dataset}, |V|={cfg.neurons}, T={cfg.T}, seed {seed_cfg.seed}")
        sink.artifact(png)
        runs.append(run)
    text = report(cfg, runs)
    (out / "report.md").write_text(text)
    sink.artifact(out / "report.md")
    summary = {f"{n}_test_accuracy_mean": float(np.mean([r["methods"][n]["test_accuracy"]
                                                        for r in runs]))
               for n in runs[0]["methods"]}
    sink.metrics({f"compare/{k}": v for k, v in summary.items()})
    result = {"command": "compare", "objective": "lifetime", "config": to_dict(cfg), **summary,
              "runs": runs, "report": str(out / "report.md"), "seconds": time.time() - t0,
              "method_runs": method_runs(ctx, lifetime_entries(runs))}
    write_json(out / "result.json", result)
    return result
