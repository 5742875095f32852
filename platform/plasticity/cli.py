"""The ``plasticity`` command line: it only parses. Every subcommand is a registered
:class:`~plasticity.commands.base.Command` (``plasticity.commands``); this module builds its
flags, turns them into a config and a :class:`~plasticity.commands.base.Context`, runs the
handler and prints the result.

Config commands take the shared flags ``--preset``, ``--set key=value`` (repeatable, checked
against the command's config fields, listed by ``plasticity COMMAND --help``), ``--seed``,
``--dynamics``, ``--device``, ``--out DIR``, ``--json``, ``--no-progress`` and the tracking
flags. A bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import PlasticityError, __version__
from .commands import MODULES, get
from .commands.base import (
    Command,
    Context,
    check_out,
    default_out,
    resolve_device,
    run_handler,
    tracking_sink,
    tracking_uri,
)
from .config import dynamics_sets, field_docs, parse_sets
from .files import jsonable


def _config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="named preset: smoke (seconds on a CPU), quick, paper")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field (repeatable; the fields are listed below)")
    p.add_argument("--seed", type=int, help="root seed of the run (config field 'seed')")
    p.add_argument("--dynamics", help="named dynamics: engine (the defaults) or reference (the "
                   "authors' code: recurrence=code, firing=topk, meta_loss=softmax); --set wins")


def _tracking_flags(p: argparse.ArgumentParser, run: bool) -> None:
    p.add_argument("--tracking-uri", help="MLflow store (default $PLASTICITY_TRACKING_URI, "
                   "$MLFLOW_TRACKING_URI or sqlite:///mlflow.db here; none = off)")
    if run:
        p.add_argument("--no-tracking", action="store_true",
                       help="no MLflow tracking (--tracking-uri none)")
    p.add_argument("--json", action="store_true", help="print one JSON result object on stdout")


def _run_flags(p: argparse.ArgumentParser) -> None:
    _config_flags(p)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--out", type=Path, help="output folder (default runs/<command>-<time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _tracking_flags(p, run=True)


def fields_help(command: Command) -> str:
    """The ``--help`` epilog: every config field with its default and one-line doc."""
    import dataclasses

    if command.config is None:
        return ""
    docs = field_docs(command.config)
    rows = [(f.name, json.dumps(f.default)) for f in dataclasses.fields(command.config)]
    width = max(len(f"{n} = {d}") for n, d in rows)
    lines = [f"config fields (--set KEY=VALUE; presets: {', '.join(command.presets) or '-'}):"]
    lines += [f"  {f'{n} = {d}':<{width}}  {docs.get(n, '')}".rstrip() for n, d in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plasticity", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"plasticity {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in MODULES:
        command = get(name)
        p = sub.add_parser(name, help=command.help, description=command.help,
                           epilog=fields_help(command),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if command.arguments is not None:
            command.arguments(p)
        if command.flags == "run":
            _run_flags(p)
        elif command.flags == "tracking":
            _tracking_flags(p, run=False)
        elif command.flags == "config":
            _config_flags(p)
    return parser


def context(args: argparse.Namespace, command: Command) -> Context:
    """The run context of parsed flags (every flag a command lacks takes its default)."""
    options = command.options(args) if command.options is not None else {}
    out = getattr(args, "out", None)
    if command.config is not None:
        name = command.out_name(options) if command.out_name is not None else command.name
        out = default_out(out, name)
    return Context(
        out=out, device=resolve_device(getattr(args, "device", "auto")),
        progress=not getattr(args, "no_progress", False), resume=getattr(args, "resume", False),
        address=getattr(args, "address", None),
        tracking=tracking_uri(getattr(args, "tracking_uri", None), getattr(args, "no_tracking", False))
        if command.flags in ("run", "tracking") else None,
        preset=getattr(args, "preset", None), seed=getattr(args, "seed", None),
        sets=parse_sets(getattr(args, "sets", [])), options=options,
        dynamics=getattr(args, "dynamics", None))


def _print_human(result: dict) -> None:
    if "summary" in result:
        print(result["summary"])
        return
    if result.get("report") and result.get("command") == "study":
        print(Path(result["report"]).read_text())
    keys = ("rule", "test_accuracy_mean", "test_accuracy_std", "test_accuracy", "final_loss",
            "skipped_steps", "seconds", "report")
    for k in keys:
        if k in result:
            v = result[k]
            print(f"{k:>20}: {v:.4f}" if isinstance(v, float) else f"{k:>20}: {v}")


def run(argv: list[str] | None = None) -> int:
    """Parse, run, print. Returns the exit code."""
    args = build_parser().parse_args(argv)
    check_out(getattr(args, "out", None))
    command = get(args.command)
    ctx = context(args, command)
    if command.config is None:
        result = command.handler(None, ctx)
    else:
        sets = {**dynamics_sets(ctx.dynamics, command.config), **ctx.sets}
        if command.sets_from_options is not None:
            sets.update(command.sets_from_options(ctx.options))
        cfg = command.build(ctx.preset, sets, ctx.seed)
        result = run_handler(command, cfg, ctx, tracking_sink(ctx, command.name))
    if getattr(args, "json", False):
        print(json.dumps(result, default=jsonable))
    else:
        _print_human(result)
    return 1 if result.get("errors") else 0  # a sweep with failed trials is not a success


def main(argv: list[str] | None = None) -> None:
    """Console entry point: PlasticityError -> one line on stderr, exit code 2."""
    try:
        code = run(argv)
    except PlasticityError as exc:
        print(f"plasticity: error: {str(exc).splitlines()[0] if str(exc) else 'failed'}",
              file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("plasticity: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # stdout closed early (`plasticity config train | head`): no traceback
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)


__all__ = ["build_parser", "context", "fields_help", "main", "run"]

if __name__ == "__main__":
    main()
