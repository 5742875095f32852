"""``plasticity log FOLDER``: replay a run's events.jsonl into the tracking store (a run whose
tracking failed at start still has its folder; this logs it later)."""

from __future__ import annotations

from pathlib import Path

from .. import PlasticityError
from .base import Command, require_tracking


def folder_arg(p) -> None:
    p.add_argument("folder", type=Path, help="the run's output folder (--out)")


def log_handler(_cfg, ctx) -> dict:
    """Replay a run's ``events.jsonl`` (params, metrics with their steps, rules, artifacts, its
    end) into a new run of the store, with the folder's result files attached."""
    out = Path(ctx.options["folder"]).resolve()
    if not (out / "events.jsonl").is_file():
        raise PlasticityError(f"{out} holds no events.jsonl: give the output folder (--out) of a "
                              "plasticity run")
    uri = require_tracking(ctx, "log")
    run_id, status, n = replay(out, uri)
    return {"command": "log", "run_id": run_id, "status": status, "events": n,
            "summary": f"logged {out} ({n} events) as run {run_id} ({status}) in {uri}"}


def replay(out: Path, uri: str, parent_run_id: str | None = None) -> tuple[str, str, int]:
    """Log the run folder ``out`` (its events.jsonl) into the store at ``uri`` as a new run (a
    child of ``parent_run_id`` when given, rules then not registered again): (run id, status,
    events read)."""
    import json
    import math

    rows = []
    for line in (out / "events.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut off by a kill
    try:
        command = json.loads((out / "result.json").read_text())["command"]
    except (OSError, ValueError, KeyError, TypeError):
        command = out.name.split("-")[0]
    from ..rules.io import load_rule
    from ..tracking import open_store

    tags = {"plasticity.command": command, "plasticity.logged_from": str(out)}
    child = {} if parent_run_id is None else {"parent_run_id": parent_run_id, "register": False}
    sink = open_store(uri).sink(command, tags=tags, out=out, **child)
    status = "FAILED"
    for e in rows:
        kind = e.get("event")
        if kind == "params" and isinstance(e.get("params"), dict):
            sink.params(e["params"])
        elif kind == "metrics" and isinstance(e.get("metrics"), dict):
            sink.metrics({k: math.nan if v is None else v for k, v in e["metrics"].items()},
                         e.get("step"))
        elif kind == "rule" and e.get("path") and Path(e["path"]).is_file():
            sink.rule(e["name"], load_rule(e["path"]), Path(e["path"]))
        elif kind == "artifact" and Path(e.get("path", "")).is_file():
            sink.artifact(Path(e["path"]), e.get("subdir"))
        elif kind == "close":
            status = e.get("status", "FINISHED")
    sink.close(status)
    return sink.run_id, status, len(rows)


COMMAND = Command("log", "log a run's output folder (its events.jsonl) to the tracking store: a "
                  "run whose tracking failed", log_handler, flags="tracking", arguments=folder_arg,
                  options=lambda a: {"folder": a.folder})
