"""``plasticity sweep SPACE``: a named search space on Ray Tune, every trial an MLflow child run.

The driver opens the tracking store (creating a sqlite schema) before Ray starts a worker, makes
the sweep's parent run, and logs every trial from a Tune callback: trials only report to Tune, so
workers never touch a sqlite store. The sweep lives in ``--out`` (``tune/`` is Tune's
experiment folder, ``sweep.json`` the parent run's id): after the driver is killed,
``--resume`` restores it; finished trials are not run again (Tune knows them, and a trial that
finished after Tune's last snapshot finds its DONE.json and only re-reports it). A trial's child
run that was cut off is deleted and logged afresh. A trial whose worker or node dies is restarted
by Tune up to ``--retries`` times, in the same child run (an evolve / compare trial continues from
its checkpoint; steps it reports again are not logged twice). Seeded: the search algorithm draws from
``--seed``; PBT's perturbations from Python's ``random`` seeded the same way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import ray
from ray import tune

from .. import PlasticityError
from ..files import write_json
from ..report import markdown_table
from ..rules.io import load_rule
from .base import Command, check_cluster

EXPERIMENT = "plasticity"


class TrialLogger(tune.Callback):
    """Log each trial as a child run of the sweep's parent run (driver side, batched)."""

    def __init__(self, uri: str, parent_run_id: str, command: str):
        self.uri, self.parent_run_id, self.command = uri, parent_run_id, command
        self._store, self._sinks, self._last, self._existing = None, {}, {}, None
        self._seen: dict[str, set] = {}  # trial id -> the steps this driver logged
        self._floor: dict[str, int] = {}  # restarted trial -> the last step logged before

    def __getstate__(self):  # pickled into Tune's experiment state: no live client
        return {"uri": self.uri, "parent_run_id": self.parent_run_id, "command": self.command}

    def __setstate__(self, state):
        self.__init__(**state)

    def _sink(self, trial):
        tid = trial.trial_id
        if tid in self._sinks:
            return self._sinks[tid]
        from ..tracking import child_runs, open_store

        if self._store is None:
            self._store = open_store(self.uri)
        if self._existing is None:  # the children before this driver started: searched once
            self._existing = {}
            for run in child_runs(self._store, self.parent_run_id, EXPERIMENT):
                self._existing.setdefault(run.data.tags.get("trial_id"), []).append(run)
        sink = None
        for run in self._existing.get(tid, []):
            if run.info.status == "FINISHED":
                self._sinks[tid] = None  # logged completely before a restart: leave it
                return None
            self._store.sink(tid, run_id=run.info.run_id).delete()  # cut off: log afresh
        sink = self._store.sink(str(trial), experiment=EXPERIMENT, parent_run_id=self.parent_run_id,
                                tags={"trial_id": tid, "plasticity.command": self.command},
                                register=False)
        sink.params(trial.config)
        sink.start()
        self._sinks[tid] = sink
        return sink

    def on_trial_start(self, iteration, trials, trial, **info):
        self._sink(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        sink = self._sink(trial)
        if sink is None:
            return
        sink.params(trial.config)  # PBT mutations become hparam/<key> metrics
        step = int(result.get("step", result.get("training_iteration", 0)))
        if step <= self._floor.get(trial.trial_id, -1):  # re-reported after a restart: logged
            return
        self._seen.setdefault(trial.trial_id, set()).add(step)
        last = self._last.setdefault(trial.trial_id, {})
        keys = result.get("new_keys")
        new = {k: v for k, v in result.items() if "/" in k and isinstance(v, (int, float))
               and not isinstance(v, bool) and last.get(k) != (step, v)
               and (keys in (None, "") or k in keys.split(","))}
        last.update({k: (step, v) for k, v in new.items()})
        if new:
            sink.metrics(new, step=step)

    def on_trial_complete(self, iteration, trials, trial, **info):
        sink = self._sink(trial)
        if sink is None:
            return
        ckpt = trial.checkpoint
        if ckpt is None:  # stopped by the scheduler (ASHA) before its end: no result, no rule
            sink.tags["tune.stopped_early"] = "true"
            sink.close("KILLED")
            print(f"[sweep] {trial} stopped early by the scheduler", file=sys.stderr, flush=True)
            return
        with ckpt.as_directory() as d:
            if (Path(d) / "result.json").is_file():  # the full config, preset fields included
                sink.params(json.loads((Path(d) / "result.json").read_text()).get("config", {}))
            rules = Path(d) / "rules.json"
            for name, r in (json.loads(rules.read_text()) if rules.is_file() else {}).items():
                f = Path(d) / r["file"]
                sink.rule(name, load_rule(f), f if r["learned"] else None,
                          heatmap=Path(d) / r["heatmap"] if r.get("heatmap") else None)
            self._replay_missing(sink, trial.trial_id, Path(d) / "events.jsonl")
            sink.out = Path(d)
            sink.close("FINISHED")
        print(f"[sweep] {trial} finished", file=sys.stderr, flush=True)

    def _replay_missing(self, sink, tid: str, events: Path) -> None:
        """A trial that finished while the driver was down only re-reports its end to this one:
        the steps this driver never saw come from the trial's events.jsonl (the store is asked
        which it holds, so none is logged twice)."""
        if not events.is_file():
            return
        history = []
        for line in events.read_text().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") == "metrics" and e.get("step") is not None:
                history.append(({k: float("nan") if v is None else v
                                  for k, v in e["metrics"].items() if "/" in k}, int(e["step"])))
        seen = self._seen.get(tid, set())
        if any(step not in seen for _, step in history):
            sink.rewind(2**62, history)

    def on_trial_recover(self, iteration, trials, trial, **info):
        """Tune restarts the trial (its node was lost, or it raised: Tune does not tell the two
        apart, so a trial that raises is tried 1 + ``--retries`` times). It runs again from its
        checkpoint, or from its start, in the same child run; the steps it reports again are
        logged already (the first values stay: equal but for timings, the trials being
        seeded)."""
        seen = self._seen.get(trial.trial_id)
        if seen:
            self._floor[trial.trial_id] = max(max(seen), self._floor.get(trial.trial_id, -1))
        failures = getattr(getattr(trial, "run_metadata", None), "num_failures", "?")
        print(f"[sweep] {trial} failed (its worker or node lost, or an error): restarted "
              f"(failure {failures}; --retries {trial.max_failures})", file=sys.stderr, flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        sink = self._sink(trial)
        if sink is not None:
            sink.close("FAILED")
        print(f"[sweep] {trial} FAILED (see {trial.local_path})", file=sys.stderr, flush=True)


def _scheduler(name: str, space, seed: int):
    if name == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(time_attr="training_iteration", grace_period=2, reduction_factor=2,
                             max_t=10**6)
    if name == "pbt":
        from ray.tune.schedulers import PopulationBasedTraining

        if not space.pbt:
            raise PlasticityError("this search space defines no PBT mutations: use --scheduler asha or none")
        random.seed(seed)
        np.random.seed(seed % 2**32)
        return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=2,
                                       hyperparam_mutations=dict(space.pbt), require_attrs=False)
    return None


def _trainable(space, cpus: float, gpus: float, root: Path):
    from trainables import command_trainable

    fn = tune.with_parameters(command_trainable, command=space.command, preset=space.preset,
                              root=str(root), metric=space.metric)
    return tune.with_resources(fn, {"cpu": cpus, "gpu": gpus})


def _start_ray(address: str | None) -> bool:
    """Connect to ``address`` or start a local Ray; True when this call started it."""
    from .. import ray_cluster

    if ray.is_initialized():
        return False
    ray_cluster.init(address or "local", log_to_driver=False, configure_logging=False)
    return True


def sweep_flags(p) -> None:
    p.add_argument("space", help="search space name (search_spaces.SPACES: smoke, fig3_transfer, "
                   "...); --preset replaces the space's command preset, --set fixes a field")
    p.add_argument("--samples", type=int, default=1, help="samples per grid point (Tune num_samples)")
    p.add_argument("--scheduler", default="none", choices=("none", "asha", "pbt"))
    p.add_argument("--address", help="Ray cluster address (default: a new local Ray)")
    p.add_argument("--resume", action="store_true", help="resume the sweep in --out after a crash")
    p.add_argument("--retries", type=int, default=2,
                   help="restarts of a trial whose worker or node died (Tune max_failures; an "
                        "evolve/compare trial continues from its checkpoint; default 2)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float,
                   help="GPUs per trial (default: the space's, when the cluster has GPUs; else 0)")


def sweep_options(args) -> dict:
    return {"space": args.space, "samples": args.samples, "scheduler": args.scheduler,
            "retries": args.retries,
            "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial}


def sweep_handler(_cfg, ctx) -> dict:
    """Run (or resume) a sweep; returns the per-trial table and the best trial."""
    from search_spaces import get_space, sample

    from . import MODULES, get

    opt = {"samples": 1, "scheduler": "none", "cpus_per_trial": 1.0, "gpus_per_trial": None,
           "retries": 2, **ctx.options}
    name = opt["space"]
    space = get_space(name)
    if space.command not in MODULES:
        raise PlasticityError(f"space '{name}' runs '{space.command}', which this build lacks")
    # --preset replaces the space's preset, --set fixes fields; checked on one sample here
    space = dataclasses.replace(space, preset=ctx.preset or space.preset,
                                params={**space.params, **ctx.sets})
    get(space.command).build(space.preset, sample(space, 1, seed=0)[0], None)
    if opt["samples"] < 1:
        raise PlasticityError(f"--samples {opt['samples']} must be >= 1")
    if opt["retries"] < 0:
        raise PlasticityError(f"--retries {opt['retries']} must be >= 0")
    check_cluster(ctx.address)
    seed = 0 if ctx.seed is None else ctx.seed
    out = (ctx.out or Path("runs") / f"sweep-{name}").resolve()
    exp_dir, state_file = out / "tune", out / "sweep.json"
    uri = ctx.tracking
    store = None
    if uri is not None:
        from ..tracking import open_store

        store = open_store(uri)  # the driver creates the store before any worker runs
    if ctx.resume:
        if not (state_file.is_file() and tune.Tuner.can_restore(str(exp_dir))):
            raise PlasticityError(f"nothing to resume in {out}: start the sweep without --resume")
        state = json.loads(state_file.read_text())
        if state["space"] != name:
            raise PlasticityError(f"{out} holds a sweep of '{state['space']}', not '{name}'")
    elif exp_dir.exists():
        raise PlasticityError(f"{exp_dir} exists: pass --resume to continue it, or another --out")
    else:
        state = {"space": name, "samples": opt["samples"], "scheduler": opt["scheduler"],
                 "seed": seed, "command": space.command, "preset": space.preset,
                 "tracking_uri": uri, "parent_run_id": None}
    parent = None
    if store is not None:
        parent = store.sink(f"sweep {name}", experiment=EXPERIMENT,
                            tags={"plasticity.command": "sweep", "sweep.space": name},
                            run_id=state.get("parent_run_id"), register=False)
        parent.params({k: v for k, v in state.items() if k not in ("parent_run_id", "tracking_uri")}
                      | {"metric": space.metric, "mode": space.mode})
        parent.reopen() if state.get("parent_run_id") else parent.start()
        state["parent_run_id"] = parent.run_id
    out.mkdir(parents=True, exist_ok=True)
    write_json(state_file, state)

    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 is quiet; our callback reports
    # Tune's own period for its experiment-state snapshot: at least 10 s and at most ~5% of the
    # driver's time. A fixed 1 s made the driver pickle every trial every second: its CPU per
    # trial doubled over a 1,000-trial sweep (bench_tracking_load). A --resume does not need a
    # fresh snapshot: the restored search algorithm makes the same trial ids again, and a trial
    # that finished after the snapshot finds its DONE.json and only re-reports.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "auto")
    owned = _start_ray(ctx.address)
    t0 = time.time()
    try:
        gpus = opt["gpus_per_trial"]
        if gpus is None:
            gpus = space.gpus if ray.cluster_resources().get("GPU", 0) >= space.gpus > 0 else 0.0
        trainable = _trainable(space, opt["cpus_per_trial"], gpus, out / "trials")
        callbacks = [] if parent is None else [TrialLogger(uri, parent.run_id, space.command)]
        if ctx.resume:
            tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            from ray.tune.search.basic_variant import BasicVariantGenerator

            tuner = tune.Tuner(
                trainable, param_space=dict(space.params),
                tune_config=tune.TuneConfig(
                    num_samples=opt["samples"], metric=space.metric, mode=space.mode,
                    search_alg=BasicVariantGenerator(random_state=seed),
                    scheduler=_scheduler(opt["scheduler"], space, seed), reuse_actors=True),
                run_config=tune.RunConfig(
                    name="tune", storage_path=str(out), callbacks=callbacks, verbose=0,
                    failure_config=tune.FailureConfig(max_failures=opt["retries"])))
        grid = tuner.fit()
    except KeyboardInterrupt:
        if parent is not None:
            parent.close("KILLED")
        raise
    finally:
        if owned:
            ray.shutdown()
    rows, best = [], None
    for r in grid:
        value = (r.metrics or {}).get(space.metric)
        row = {"trial_id": (r.metrics or {}).get("trial_id"), "config": r.config,
               space.metric: value, "error": None if r.error is None else str(r.error).splitlines()[0],
               "error_message": None if r.error is None else _last_line(str(r.error))}
        rows.append(row)
        if value is not None and (best is None or (value < best[space.metric]) == (space.mode == "min")):
            best = row
    rows.sort(key=lambda r: str(r["trial_id"]))
    keys = sorted({k for r in rows for k in (r["config"] or {})})
    failed = [r for r in rows if r["error"] is not None]
    table = markdown_table(["trial", *keys, space.metric, *(["error"] if failed else [])],
                           [[r["trial_id"], *[_short(r["config"].get(k)) for k in keys],
                             _short(r[space.metric]), *([_cell(r["error_message"])] if failed else [])]
                            for r in rows])
    if failed:  # a failed trial is never silent: named in the table and in one line after it
        table += f"\n**{len(failed)} of {len(rows)} trials failed (error)**:\n\n" + "".join(
            f"- {r['trial_id']}: {r['error_message']}\n" for r in failed)
    result = {"command": "sweep", "space": name, "metric": space.metric, "mode": space.mode,
              "trials": rows, "best": best, "errors": sum(r["error"] is not None for r in rows),
              "parent_run_id": state["parent_run_id"], "out": str(out), "seconds": time.time() - t0}
    (out / "sweep.md").write_text(f"# Sweep {name} ({space.command}, preset {space.preset})\n\n"
                                  + table)
    write_json(out / "result.json", result)
    if parent is not None:
        parent.metrics({"sweep/trials": len(rows), "sweep/errors": result["errors"],
                        **({"sweep/best": best[space.metric]} if best else {})})
        if best:
            parent.tags["sweep.best_trial"] = str(best["trial_id"])
        parent.out = out
        parent.artifact(out / "sweep.md")
        parent.close("FINISHED" if result["errors"] == 0 else "FAILED")
    return {**result, "summary": table}


def _last_line(text: str) -> str:
    """The exception's own message: the last non-empty line of a (remote) traceback."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "error"


def _cell(text: str | None) -> str:
    if text is None:
        return "-"
    text = text.replace("|", "/")
    return text if len(text) <= 100 else text[:97] + "..."


def _short(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    s = str(v)
    return s if len(s) < 40 else "..." + s[-37:]


COMMAND = Command("sweep", "run a named Ray Tune search space, tracked in MLflow", sweep_handler,
                  arguments=sweep_flags, options=sweep_options)
