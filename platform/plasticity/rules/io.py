"""Rules as JSON files: versioned, human-readable, never pickled.

Format (version 1)::

    {"format": "plasticity-rule", "version": 1, "T": 3, "mode": "additive",
     "scheme": {"update_on": "mistakes", "output_rows": "label_pred"},
     "output": {"param": "table", "shape": [8, 2], "values": [[...], ...],
                "params": {"table": [[...]]}, "hidden": null},
     "rnn": null or {... as "output" ...},
     "provenance": {...}}

``values`` is the evaluated table (for reading and plotting); ``params`` is what is loaded: the
named tensors of the layer's parametrization (``tables.PARAMETRIZATIONS``: its ``keys``, checked
by its ``check``). The loader recomputes the table from ``params`` and refuses a file whose
``values`` differ.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .. import PlasticityError
from ..files import atomic_write_text
from . import LayerRule, Rule, Scheme
from .tables import PARAMETRIZATIONS

FORMAT = "plasticity-rule"
VERSION = 1
MAX_HIDDEN = 4096
MAX_BYTES = 16 * 2**20  # a rule file is kilobytes; anything this large is refused unread


def rule_to_dict(rule: Rule) -> dict:
    """A JSON-ready dict of ``rule``."""

    def layer(lr: LayerRule | None):
        if lr is None:
            return None
        return {
            "param": lr.param,
            "shape": list(lr.table().shape),
            "values": lr.table().tolist(),
            "params": {k: v.detach().to(torch.float64).cpu().tolist() for k, v in lr.params.items()},
            "hidden": lr.hidden,
        }

    return {
        "format": FORMAT,
        "version": VERSION,
        "T": rule.T,
        "mode": rule.mode,
        "scheme": {"update_on": rule.scheme.update_on, "output_rows": rule.scheme.output_rows,
                   **({"gamma": rule.scheme.gamma} if rule.scheme.gamma else {})},
        "output": layer(rule.output),
        "rnn": layer(rule.rnn),
        "provenance": rule.provenance,
    }


def save_rule(rule: Rule, path: str | Path) -> Path:
    """Write ``rule`` as JSON atomically; a rule with NaN or inf values is refused."""
    try:
        text = json.dumps(rule_to_dict(rule), indent=1, allow_nan=False)
    except ValueError:
        raise PlasticityError(f"refusing to save rule to {path}: it holds NaN or inf") from None
    return atomic_write_text(path, text)


def _tensor(value, where: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise PlasticityError(f"{where} is not a numeric array ({exc})".splitlines()[0]) from None
    if not torch.isfinite(t).all():
        raise PlasticityError(f"{where} holds NaN or infinite values")
    return t


def _layer(d, name: str, T: int, src: str) -> LayerRule | None:
    if d is None:
        if name == "output":
            raise PlasticityError(f"{src}: the output rule is missing")
        return None
    if not isinstance(d, dict):
        raise PlasticityError(f"{src}: '{name}' must be an object")
    param = d.get("param", "table")
    if not isinstance(param, str):
        names = " or ".join(f'"{p}"' for p in PARAMETRIZATIONS)
        raise PlasticityError(f"{src}: {name}.param must be {names}")
    hidden = d.get("hidden")
    if hidden is not None and (not isinstance(hidden, int) or isinstance(hidden, bool)
                               or not 0 < hidden <= MAX_HIDDEN):
        raise PlasticityError(f"{src}: {name}.hidden must be an integer in 1..{MAX_HIDDEN}")
    spec = PARAMETRIZATIONS.get(param)
    raw = d.get("params")
    if not isinstance(raw, dict) or not raw:
        if spec is None or not spec.from_values or "values" not in d:
            raise PlasticityError(f"{src}: {name}.params is missing")
        raw = {spec.keys[0]: d["values"]}  # the table itself
    params = {str(k): _tensor(v, f"{src}: {name}.params.{k}") for k, v in raw.items()}
    if spec is None:
        raise PlasticityError(f"{src}: unknown {name}.param '{param}': use "
                              f"{' or '.join(PARAMETRIZATIONS)}")
    if set(params) != set(spec.keys):
        raise PlasticityError(f"{src}: {name}.params must have keys {sorted(spec.keys)}")
    if spec.check is not None:
        try:
            spec.check(name, T, params, hidden)
        except PlasticityError as exc:
            raise PlasticityError(f"{src}: {exc}") from None
    try:
        lr = LayerRule(name, T, param, params, hidden)
    except (RuntimeError, ValueError) as exc:  # parameters that do not fit together
        raise PlasticityError(f"{src}: {name} {param} parameters have inconsistent shapes") from exc
    except PlasticityError as exc:
        raise PlasticityError(f"{src}: {exc}") from None
    if "values" in d:
        values = _tensor(d["values"], f"{src}: {name}.values")
        if values.shape != lr.table().shape or not torch.allclose(values, lr.table(), atol=1e-9):
            raise PlasticityError(f"{src}: {name}.values disagree with {name}.params")
    return lr


def rule_from_dict(d, src: str = "rule") -> Rule:
    """Validate and build a Rule from a parsed JSON object; errors name the file and the field."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise PlasticityError(f"{src}: not a plasticity rule file (missing \"format\": \"{FORMAT}\")")
    if d.get("version") != VERSION:
        raise PlasticityError(f"{src}: rule format version {d.get('version')!r} is not supported "
                              f"(this build reads version {VERSION})")
    T = d.get("T")
    if not isinstance(T, int) or isinstance(T, bool) or not 1 <= T <= 8:
        raise PlasticityError(f"{src}: T must be an integer in 1..8, got {T!r}")
    scheme = d.get("scheme") or {}
    if not isinstance(scheme, dict):
        raise PlasticityError(f"{src}: scheme must be an object")
    try:
        return Rule(
            T=T,
            output=_layer(d.get("output"), "output", T, src),
            rnn=_layer(d.get("rnn"), "rnn", T, src),
            mode=d.get("mode", "additive"),
            scheme=Scheme(**{k: scheme[k] for k in ("update_on", "output_rows", "gamma")
                             if k in scheme}),
            provenance=d.get("provenance") if isinstance(d.get("provenance"), dict) else {},
        )
    except PlasticityError as exc:
        msg = str(exc)
        raise PlasticityError(msg if msg.startswith(src) else f"{src}: {msg}") from None


def load_rule(path: str | Path) -> Rule:
    """Read a rule JSON file; any problem is one PlasticityError naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise PlasticityError(f"rule file {path} is {size:,} bytes: a rule file is at most "
                                  f"{MAX_BYTES:,} bytes")
        text = path.read_text()
    except FileNotFoundError:
        raise PlasticityError(f"rule file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlasticityError(f"rule file {path} cannot be read: {exc}") from None
    try:
        d = json.loads(text, parse_constant=lambda c: math.nan)
    except json.JSONDecodeError as exc:
        raise PlasticityError(f"rule file {path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise PlasticityError(f"rule file {path} is nested too deeply to be a rule") from None
    return rule_from_dict(d, src=f"rule file {path}")
