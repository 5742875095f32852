"""What every ``plasticity`` subcommand shares: the Command record, devices, output folders.

A command module (``plasticity.evolution.command``, ``plasticity.robustness.command``, ...)
exposes ``COMMANDS: dict[str, Command]``; ``plasticity.cli`` lists those modules and adds each
command with the shared flags. Handlers take the parsed config, the argparse namespace, the
device and an event :class:`~plasticity.events.Sink`, and return a JSON-able result dict.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import PlasticityError
from .config import build_config, to_dict
from .events import FanOut, JsonlSink, Sink
from .files import jsonable, write_json  # noqa: F401 - re-exported for command modules


@dataclass(frozen=True)
class Command:
    """One subcommand: its config class and presets, extra arguments, and its handler."""

    help: str
    config: type  # a frozen config dataclass (fields = --set keys)
    presets: dict[str, dict]  # preset name -> field overrides (must include "smoke")
    handler: Callable  # (cfg, args, device, sink) -> result dict
    arguments: Callable | None = None  # (argparse parser) -> None: extra command-line arguments
    sets_from_args: Callable | None = None  # (args) -> dict of config fields set by those arguments
    extra: dict = field(default_factory=dict)

    def build(self, name: str, preset: str | None, sets: dict, seed: int | None):
        """The run's config: preset, then ``--set`` fields, then ``--seed``."""
        return build_config(self.config, name, preset, sets, seed=seed, presets=self.presets)


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


def out_dir(args, command: str) -> Path:
    """``--out`` or ``runs/<command>-<time>``."""
    if getattr(args, "out", None) is not None:
        return args.out
    return Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_handler(command: Command, cfg, args, device: str, *sinks: Sink | None) -> dict:
    """Run one handler with ``events.jsonl`` in ``args.out`` plus ``sinks`` (tracking, Tune);
    the config is logged first, and every sink is closed with the run's status. A run refused
    as bad input (a PlasticityError) before it produced anything leaves no ``events.jsonl`` (or
    the one it appended to as it was) and no folder it made."""
    out = Path(args.out)
    new_dirs = [p for p in (out, *out.parents) if not p.exists()]  # made for this run
    jsonl = JsonlSink(out / "events.jsonl")
    sink = FanOut(jsonl, *sinks)
    sink.params(to_dict(cfg))
    status = "FAILED"
    try:
        result = command.handler(cfg, args, device, sink)
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
