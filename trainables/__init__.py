"""Ray Tune function trainables: a config dict in, a registered command's handler, tune.report.

One adapter serves every command (meta-learning by GD, evolution, rule-based training/transfer,
attacks): a trial is ``Command.handler`` of a registered command with its config built from the
trial's sampled fields over a preset, and a sink that forwards the handler's metrics to
``tune.report``. The last report carries a checkpoint (the trial's output folder: result.json,
events.jsonl, the rules). A trial that already finished (its folder holds DONE.json) reports its
stored result instead of running again, so a resumed sweep never re-runs a finished trial. A
trial restarted by Tune (its node was lost, ``sweep --retries``) whose folder holds a checkpoint
of a resumable command (``Command.resumable``: evolve, compare) continues from it.
Trials never talk to MLflow: the driver logs them (plasticity.commands.sweep).
"""

from __future__ import annotations

import json
from pathlib import Path

from plasticity.commands import get, prepare, run_handler
from plasticity.events import Sink
from plasticity.files import atomic_write_text
from plasticity.rules.io import save_rule

DONE = "DONE.json"  # final metrics of a finished trial
RULES = "rules.json"  # {name: {"file": path relative to the folder, "learned": bool}}


class TuneSink(Sink):
    """Forward each metrics event to ``tune.report``; collect rules; report the end."""

    def __init__(self, out: Path, metric: str | None = None):
        self.out, self.metric, self.latest, self.step, self.rules = out, metric, {}, 0, {}

    def metrics(self, metrics, step=None):
        """One ``tune.report``: these metrics, the objective's latest value (schedulers need it
        in every result) and ``new_keys``, the names actually produced now (what MLflow logs)."""
        from ray import tune

        self.step = self.step if step is None else int(step)
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.latest.update(clean)
        carried = {self.metric: self.latest[self.metric]} if self.metric in self.latest else {}
        tune.report({**carried, **clean, "step": self.step, "new_keys": ",".join(clean)})

    def rule(self, name, rule, path=None):
        """Keep the rule in the trial folder with its heatmap, rendered here in the trial: the
        driver, which logs every trial, then only copies it (rendering was most of its time)."""
        from plasticity.report import heatmap_title, rule_heatmap

        key = name.replace("/", "_")
        learned = path is not None
        if path is None or not Path(path).resolve().is_relative_to(self.out.resolve()):
            path = save_rule(rule, self.out / "rules" / f"{key}.json")
        heatmap = rule_heatmap(rule, self.out / "rules" / f"{key}.heatmap.png",
                               title=heatmap_title(name, rule))
        rel = lambda p: str(Path(p).resolve().relative_to(self.out.resolve()))  # noqa: E731
        self.rules[name] = {"file": rel(path), "learned": learned, "heatmap": rel(heatmap)}

    def finish(self, command: str, result: dict) -> dict:
        """The final metrics: every latest value plus the result's scalars as ``command/key``."""
        final = {**self.latest, "step": self.step, "new_keys": "",
                 **{f"{command}/{k}": float(v) for k, v in result.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)}}
        atomic_write_text(self.out / RULES, json.dumps(self.rules))
        atomic_write_text(self.out / DONE, json.dumps(final))
        return final


def command_trainable(config: dict, command: str, preset: str | None, root: str,
                      metric: str | None = None) -> None:
    """Run ``plasticity <command> --preset <preset>`` with ``config`` as ``--set`` fields, output
    in ``root/<trial id>`` (an absolute path: Tune trials run in other working directories)."""
    import ray
    from ray import tune
    from ray.tune import Checkpoint

    out = Path(root) / tune.get_context().get_trial_id()
    if (out / DONE).is_file():  # finished before the driver was stopped: report, do not re-run
        tune.report(json.loads((out / DONE).read_text()), checkpoint=Checkpoint.from_directory(out))
        return
    resumable = get(command).resumable
    resume = resumable is not None and resumable(out)
    if not resume:
        # a trial cut off (a killed driver, a lost node) runs again from its start: its events
        # start afresh (events.jsonl holds every step once; the driver logs each step once)
        (out / "events.jsonl").unlink(missing_ok=True)
    # else the command's --resume continues from its checkpoint and drops the events past it
    cmd, cfg, ctx = prepare(command, preset, config, out, resume=resume,
                            device="cuda" if ray.get_gpu_ids() else "cpu")
    sink = TuneSink(out, metric)
    result = run_handler(cmd, cfg, ctx, sink)
    tune.report(sink.finish(command, result), checkpoint=Checkpoint.from_directory(out))
