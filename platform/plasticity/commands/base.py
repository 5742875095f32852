"""What every ``plasticity`` subcommand shares: the :class:`Command` record, the run
:class:`Context` handlers take, devices, output folders, tracking, and :func:`run_handler`.

A handler is ``handler(cfg, ctx) -> dict``: ``cfg`` is the command's frozen config dataclass
(None for the platform commands that have none: ``sweep``, ``ui``, ...), ``ctx`` says where
and how to run (output folder, device, progress, resume, cluster address, tracking store, the
event sink). Handlers never see argparse: ``cli.py`` builds the context from flags, a Tune
trial (``trainables``) and a ``reproduce`` stage build it directly.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import PlasticityError
from ..config import build_config, to_dict
from ..events import FanOut, JsonlSink, Sink


@dataclass(frozen=True)
class Command:
    """One subcommand: its handler, config class and presets, and extra command-line flags."""

    name: str
    help: str
    handler: Callable  # (cfg, ctx) -> JSON-able result dict
    config: type | None = None  # frozen config dataclass (its fields = the --set keys)
    presets: dict[str, dict] = field(default_factory=dict)  # preset -> field overrides ("smoke")
    arguments: Callable | None = None  # (argparse parser) -> None: the command's own flags
    options: Callable | None = None  # (argparse namespace) -> dict: those flags' values (ctx.options)
    sets_from_options: Callable | None = None  # (options) -> config fields the flags set (--rule)
    default_preset: str | None = None  # preset used when --preset is not given
    out_name: Callable | None = None  # (options) -> default folder name under runs/ (else name)
    flags: str = "run"  # shared flags: run (all) | tracking (--tracking-uri, --json) | config | none
    # (out) -> True when ``out`` holds a checkpoint this command's ``--resume`` continues: a Tune
    # trial restarted after its node was lost resumes there instead of starting over
    resumable: Callable | None = None

    def build(self, preset: str | None = None, sets: dict | None = None, seed: int | None = None):
        """The run's config: preset, then ``--set`` fields, then ``--seed``."""
        if self.config is None:
            raise PlasticityError(f"plasticity {self.name} has no config fields")
        return build_config(self.config, self.name, preset or self.default_preset, dict(sets or {}),
                            seed=seed, presets=self.presets)


@dataclass
class Context:
    """Where and how one command runs; handlers read it instead of argparse's namespace."""

    out: Path  # the run's output folder
    device: str = "cpu"  # resolved: cpu, cuda, cuda:N
    progress: bool = True  # progress bars on stderr
    resume: bool = False  # continue the run in ``out`` from its checkpoint
    address: str | None = None  # Ray cluster address (None: an embedded local Ray)
    tracking: str | None = None  # resolved MLflow store URI (None: tracking off)
    preset: str | None = None
    seed: int | None = None
    sets: dict = field(default_factory=dict)  # the --set fields as given (platform commands)
    options: dict = field(default_factory=dict)  # the command's own flags (``Command.options``)
    dynamics: str | None = None  # --dynamics NAME (platform commands pass it on)
    sink: Sink = field(default_factory=Sink)  # set by :func:`run_handler`


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; a CUDA request without CUDA is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PlasticityError(f"--device {name} asked for, but CUDA is not available: use cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise PlasticityError(f"unknown --device '{name}': use auto, cpu, cuda or cuda:N")
    return name


def check_out(out: Path | None) -> None:
    """``--out`` must be a folder, or a path where one can be made: never a file."""
    if out is None:
        return
    for p in (Path(out), *Path(out).parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == Path(out) else f"is inside {p}, a file"
                raise PlasticityError(f"--out {out} {what}, not a folder: give a folder (new or "
                                      "existing)")
            return


def default_out(out: Path | None, command: str) -> Path:
    """``--out`` or ``runs/<command>-<time>``."""
    if out is not None:
        return Path(out)
    return Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"


def tracking_uri(uri: str | None = None, off: bool = False) -> str | None:
    """The run's MLflow store URI (flag, environment, default), or None when tracking is off."""
    import os

    uri = uri or os.environ.get("PLASTICITY_TRACKING_URI", os.environ.get("MLFLOW_TRACKING_URI"))
    if off or (uri is not None and uri.strip().lower() in ("none", "off", "false", "0", "")):
        return None  # decided without importing MLflow (seconds per process)
    from ..tracking import resolve_uri

    return resolve_uri(uri)


def require_tracking(ctx: Context, command: str) -> str:
    """The context's store, or a one-line error for a command that needs one."""
    if ctx.tracking is None:
        raise PlasticityError(f"plasticity {command} needs a tracking store: pass --tracking-uri")
    return ctx.tracking


def tracking_sink(ctx: Context, name: str) -> Sink | None:
    """The MLflow observer for this run, or None when tracking is off (plasticity.tracking)."""
    if ctx.tracking is None:
        return None
    from ..tracking import sink_for_command

    return sink_for_command(ctx.tracking, name, {"plasticity.preset": ctx.preset or "-"}, ctx.out,
                            resume=ctx.resume)


def run_handler(command: Command, cfg, ctx: Context, *sinks: Sink | None) -> dict:
    """Run one handler with ``events.jsonl`` in ``ctx.out`` plus ``sinks`` (tracking, Tune);
    the config is logged first, and every sink is closed with the run's status. A run refused
    as bad input (a PlasticityError) before it produced anything leaves no ``events.jsonl`` (or
    the one it appended to as it was) and no folder it made."""
    out = Path(ctx.out)
    new_dirs = [p for p in (out, *out.parents) if not p.exists()]  # made for this run
    jsonl = JsonlSink(out / "events.jsonl")
    ctx.sink = sink = FanOut(jsonl, *sinks)
    sink.params(to_dict(cfg))
    status = "FAILED"
    try:
        result = command.handler(cfg, ctx)
        status = "FINISHED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        sink.close(status)
        if status == "FAILED" and jsonl.produced == 0 and isinstance(sys.exc_info()[1],
                                                                     PlasticityError):
            jsonl.discard()  # refused (bad input) before producing anything: write nothing
            for d in new_dirs:  # only folders this run made, and only while empty
                try:
                    d.rmdir()
                except OSError:
                    break


def summary(acc) -> dict:
    """Mean, std and the per-network list of test accuracies (a numpy array)."""
    import numpy as np

    return {"test_accuracy_mean": float(np.mean(acc)), "test_accuracy_std": float(np.std(acc)),
            "test_accuracy": acc.tolist()}


def rule_flag(p) -> None:
    """``--rule``: the config field ``rule`` (train, attack)."""
    p.add_argument("--rule", help="rule JSON file, shipped rule or classic name (config field 'rule')")


def rule_options(args) -> dict:
    return {"rule": args.rule}


def rule_sets(options: dict) -> dict:
    return {"rule": options["rule"]} if options.get("rule") else {}


def cluster_flags(p) -> None:
    """``--address`` and ``--resume`` (evolve, compare)."""
    p.add_argument("--address", help="Ray cluster address (default: an embedded local Ray); "
                                     "used when workers > 0")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpointed generation "
                        "(compare: each seed from its own checkpoint)")


def check_cluster(address: str | None) -> None:
    """An unreachable cluster or a refused token is one line now, not a wait in ray.init."""
    from .. import ray_cluster

    ray_cluster.check_cluster(address)


def parent_run(ctx: Context):
    """The MLflow sink of ``ctx``'s run (inside its FanOut), or None when not tracked."""
    return next((s for s in getattr(ctx.sink, "sinks", []) if hasattr(s, "inner")), None)
