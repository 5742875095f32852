"""The command layer: one module per ``plasticity`` subcommand, and the registry of them.

Each module in :data:`MODULES` defines ``COMMAND``, a :class:`~plasticity.commands.base.Command`
(handler, config class, presets, extra flags). Modules are imported when a command is looked up,
so ``plasticity --help`` stays fast. A new command is one module plus one entry here; the CLI,
``plasticity config``, Tune trials (``trainables``) and ``reproduce`` stages all find it here.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .. import PlasticityError
from .base import Command, Context, parent_run, resolve_device, run_handler

# command name -> module of plasticity.commands (CLI order)
MODULES = {
    "meta-train": "meta_train",
    "train": "train",
    "baseline": "baseline",
    "transfer": "transfer",
    "attack": "attack",
    "evolve": "evolve",
    "compare": "compare",
    "evolve-theory": "evolve_theory",
    "study": "study",
    "reproduce": "reproduce",
    "sweep": "sweep",
    "config": "config",
    "log": "log",
    "ui": "ui",
    "server": "server",
    "prepare-data": "prepare_data",
}


def get(name: str) -> Command:
    """The registered command ``name``; an unknown name is a one-line error."""
    if name not in MODULES:
        raise PlasticityError(f"unknown command '{name}': available are {', '.join(MODULES)}")
    return importlib.import_module(f"{__name__}.{MODULES[name]}").COMMAND


def all_commands() -> dict[str, Command]:
    """Every registered command, in CLI order."""
    return {name: get(name) for name in MODULES}


def config_commands() -> dict[str, Command]:
    """The commands with a config dataclass (the ones ``--set``, presets and Tune trials use)."""
    return {name: c for name, c in all_commands().items() if c.config is not None}


def prepare(name: str, preset: str | None, sets: dict, out: Path, seed: int | None = None,
            **context) -> tuple[Command, object, Context]:
    """``(command, cfg, ctx)`` for ``plasticity NAME --preset PRESET --set k=v ... --out OUT``
    without a command line (Tune trials, reproduce stages): no progress bars, no tracking
    unless ``tracking=`` is given."""
    command = get(name)
    cfg = command.build(preset, sets, seed)
    Path(out).mkdir(parents=True, exist_ok=True)
    ctx = Context(out=Path(out), preset=preset, seed=seed, **{"progress": False, **context})
    return command, cfg, ctx


def run_child(name: str, cfg, ctx: Context, out: Path, run_name: str | None = None) -> dict:
    """Run the registered command ``name`` with ``cfg`` in ``out`` as a part of ``ctx``'s run (a
    study's meta-learning or cell): exactly ``plasticity NAME --set ...`` (its own result.json
    and events.jsonl), and, when ``ctx`` is tracked, an MLflow child run of ``ctx``'s run."""
    sub = Context(out=Path(out), device=ctx.device, progress=ctx.progress, tracking=ctx.tracking,
                  seed=ctx.seed)
    child = None
    parent = parent_run(ctx)
    if ctx.tracking is not None and parent is not None and parent.failed is None:
        from ..tracking import GuardedSink, open_store

        inner = open_store(ctx.tracking).sink(run_name or name, parent_run_id=parent.inner.start(),
                                              out=Path(out), tags={"plasticity.command": name},
                                              register=False)
        child = GuardedSink(inner, ctx.tracking, Path(out))
    return run_handler(get(name), cfg, sub, child)


__all__ = ["MODULES", "Command", "Context", "all_commands", "config_commands", "get", "prepare",
           "resolve_device", "run_child", "run_handler"]
