"""Field checks shared by every config: one-line :class:`PlasticityError` messages naming the
field, the bad value and what is allowed. The bottom of the package: imports nothing of it but
the error class."""

from __future__ import annotations

from typing import Callable, Iterable

from . import PlasticityError


def check_choice(name: str, value: str, options: Iterable[str]) -> None:
    """``value`` must be one of ``options`` (a tuple, or a registry dict's keys)."""
    options = tuple(options)
    if value not in options:
        raise PlasticityError(f"{name}={value!r} is not one of {', '.join(options)}")


def check_positive(cfg, *names: str, allow_zero: bool = False) -> None:
    """Each field ``names`` of ``cfg`` must be > 0 (>= 0 with ``allow_zero``)."""
    for name in names:
        v = getattr(cfg, name)
        if v < 0 or (v == 0 and not allow_zero):
            raise PlasticityError(f"{name}={v} must be {'>= 0' if allow_zero else '> 0'}")


def parse_list(name: str, text: str, conv: Callable = str) -> list:
    """'a,b,c' -> [conv(a), ...], strictly: an empty or malformed item is a PlasticityError."""
    items = [t.strip() for t in str(text).split(",")]
    if not text or any(not t for t in items):
        raise PlasticityError(f"{name}='{text}' must be a comma-separated list with no empty items")
    out = []
    for t in items:
        try:
            out.append(conv(t))
        except ValueError:
            raise PlasticityError(f"{name}='{text}': '{t}' is not a valid {conv.__name__}") from None
    if conv is float and any(v != v or abs(v) == float("inf") for v in out):
        raise PlasticityError(f"{name}='{text}' must be finite numbers")
    return out
