"""``plasticity config COMMAND [--preset P] [--set k=v ...]``: the resolved config of a command as
JSON (the preset, then ``--set``, then ``--seed``, exactly as the command would run it). Every
printed field fed back as ``--set key=value`` gives the same JSON."""

from __future__ import annotations

import json

from ..config import to_dict
from .base import Command


def target_arg(p) -> None:
    from . import MODULES

    p.add_argument("target", metavar="COMMAND", choices=[n for n in MODULES],
                   help="the command whose config to print")


def config_handler(_cfg, ctx) -> dict:
    from .. import PlasticityError
    from ..config import dynamics_sets
    from . import get

    name = ctx.options["target"]
    command = get(name)
    if command.config is None:
        raise PlasticityError(f"plasticity {name} has no config fields (its flags are in "
                              f"`plasticity {name} --help`)")
    sets = {**dynamics_sets(ctx.dynamics, command.config), **ctx.sets}
    cfg = to_dict(command.build(ctx.preset, sets, ctx.seed))
    return {"command": "config", "target": name, "config": cfg,
            "summary": json.dumps(cfg, indent=1)}


COMMAND = Command("config", "print a command's resolved config (preset, --set, --seed) as JSON",
                  config_handler, flags="config", arguments=target_arg,
                  options=lambda a: {"target": a.target})
