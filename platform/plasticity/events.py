"""Events: how the core reports progress without knowing who listens (PAPER-agnostic plumbing).

A command receives a :class:`Sink` and calls it with what it produced: metrics at a step (one
generation, one meta step, one eps of an attack), learned rules with their provenance, and
files. The CLI hands in a :class:`JsonlSink` (``events.jsonl`` in the output folder) fanned out
with the MLflow observer of ``plasticity.tracking`` when tracking is on. The core never imports
MLflow: tracking is an observer of these calls.

Metric names follow one scheme (documented in docs/tracking.md): ``<family>/<name>`` with lowercase
words joined by ``_``, e.g. ``evolution/loss_best``, ``transfer/mnist``, ``attack/pgd_linf/eps_0.3``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path


class Sink:
    """The listener interface; the base class ignores everything (the null sink)."""

    def params(self, params: dict) -> None:
        """Run parameters (a config dict), logged once."""

    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Scalar metrics, optionally at an integer step (generation, meta step, example)."""

    def rule(self, name: str, rule, path: Path | None = None) -> None:
        """A learned or used rule (``plasticity.rules.Rule``) and its saved JSON, if any."""

    def artifact(self, path: Path, subdir: str | None = None) -> None:
        """A file produced by the run (plot, report, result JSON)."""

    def rewind(self, step: int, history: list[tuple[dict, int]] = (), prefix: str = "") -> None:
        """A resumed run continues after ``step`` (its checkpoint): what the killed run logged
        past it (metrics whose names start with ``prefix``) is dropped or not logged again, and
        the points of ``history`` (``(metrics, step)``, the checkpoint's) the sink lacks are
        logged: exactly-once across a kill."""

    def close(self, status: str = "FINISHED") -> None:
        """The run ended (FINISHED, FAILED or KILLED)."""


class FanOut(Sink):
    """Forward every call to several sinks in order."""

    def __init__(self, *sinks: Sink):
        self.sinks = [s for s in sinks if s is not None]

    def params(self, params):
        for s in self.sinks:
            s.params(params)

    def metrics(self, metrics, step=None):
        for s in self.sinks:
            s.metrics(metrics, step)

    def rule(self, name, rule, path=None):
        for s in self.sinks:
            s.rule(name, rule, path)

    def artifact(self, path, subdir=None):
        for s in self.sinks:
            s.artifact(path, subdir)

    def rewind(self, step, history=(), prefix=""):
        for s in self.sinks:
            s.rewind(step, history, prefix)

    def close(self, status="FINISHED"):
        for s in self.sinks:
            s.close(status)


class JsonlSink(Sink):
    """Append one JSON object per event to a file (flushed per line: a crash loses nothing)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size0 = self.path.stat().st_size if self.path.is_file() else None  # before this run
        self.produced = 0  # events other than params and close: what the run has produced
        self._f = self.path.open("a")

    def _write(self, kind: str, **payload) -> None:
        if self._f.closed:
            return
        self._f.write(json.dumps({"t": round(time.time(), 3), "event": kind, **payload},
                                 default=str) + "\n")
        self._f.flush()
        self.produced += kind not in ("params", "close")

    def discard(self) -> None:
        """Take back what this run appended (a run refused as bad input before it produced
        anything): the file as it was before, or no file."""
        self._f.close()
        if self.size0 is None:
            self.path.unlink(missing_ok=True)
        else:
            os.truncate(self.path, self.size0)

    def rewind(self, step, history=(), prefix=""):
        """Drop the metrics (keys starting with ``prefix``) past ``step`` that the killed run
        logged after its checkpoint, and lines cut off by the kill (an atomic rewrite), then
        append the points of ``history`` (``(metrics, step)`` up to the checkpoint) the file
        lacks: every step once."""
        from .files import atomic_write_text

        self._f.close()
        keep, held = [], set()
        for line in self.path.read_text().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") == "metrics" and e.get("step") is not None:
                metrics = {k: v for k, v in e.get("metrics", {}).items()
                           if not (k.startswith(prefix) and e["step"] > step)}
                if not metrics:
                    continue
                if len(metrics) < len(e.get("metrics", {})):
                    line = json.dumps({**e, "metrics": metrics})
                held.update((k, e["step"]) for k in metrics)
            keep.append(line)
        atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))
        self._f = self.path.open("a")
        for metrics, s in history:
            missing = {k: v for k, v in metrics.items() if (k, s) not in held}
            if missing:
                self.metrics(missing, s)

    def params(self, params):
        self._write("params", params=params)

    def metrics(self, metrics, step=None):
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
        self._write("metrics", step=step, metrics=clean)

    def rule(self, name, rule, path=None):
        self._write("rule", name=name, path=None if path is None else str(path),
                    provenance=getattr(rule, "provenance", {}))

    def artifact(self, path, subdir=None):
        self._write("artifact", path=str(path), subdir=subdir)

    def close(self, status="FINISHED"):
        self._write("close", status=status)
        self._f.close()
