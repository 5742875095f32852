"""Rule references, as every command takes them (``--rule``, ``sources=``, ``lift_rnn=``): a classic
name (``perceptron``, ...), a rule shipped with the package (``fig3_T1``, ``fig3_T3``: the Fig. 3
rules, in ``rules/data/``), a rule JSON file, or a registered ``models:/NAME/VERSION``."""

from __future__ import annotations

from pathlib import Path

from .. import PlasticityError

SHIPPED_DIR = Path(__file__).with_name("data")
SHIPPED = {
    "fig3_T1": "T=1 output rule meta-learned on Halfspace (|V|=100, k=50; Fig. 3)",
    "fig3_T3": "T=3 RNN + output rules meta-learned on ReLU1 (|V|=100, k=50, horizon 10000; Fig. 3)",
}


def shipped_path(name: str) -> Path:
    """The JSON file of a shipped rule."""
    if name not in SHIPPED:
        raise PlasticityError(f"no shipped rule '{name}': shipped are {', '.join(SHIPPED)}")
    return SHIPPED_DIR / f"{name}.json"


def load_rule_ref(ref: str, T: int, eta: float, tracking: str | None = None):
    """A rule from a classic name, a shipped name, a JSON path, or a registered
    ``models:/NAME/VERSION`` (fetched from the store ``tracking``)."""
    from .classic import CLASSIC, classic_rule
    from .io import load_rule

    if ref in CLASSIC:
        return classic_rule(ref, T, eta)
    if ref in SHIPPED:
        return load_rule(shipped_path(ref))
    if ref.startswith("models:/"):
        from ..tracking import fetch_rule

        return fetch_rule(ref, tracking)
    if not ref.endswith(".json") and not Path(ref).exists():
        raise PlasticityError(f"rule '{ref}' is neither a rule JSON file, a shipped rule "
                              f"({', '.join(SHIPPED)}) nor one of {CLASSIC}")
    return load_rule(ref)
