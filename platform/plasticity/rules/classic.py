"""Named classic rules (docs/paper.md 2.4 and Table 1), written in this engine's table convention.

Output tables are indexed [pre history, b] with b = 0 the true-label row and b = 1 the predicted
row. For T > 1 the classic output rules look at the last round (the bit that ``h_T`` reflects).
"""

from __future__ import annotations

import torch

from .. import PlasticityError
from . import LayerRule, Rule, Scheme


def _last_round(T: int) -> torch.Tensor:
    return torch.arange(2**T) & 1


def perceptron(T: int = 1) -> LayerRule:
    """Perceptron output rule [[-1, +1], [+1, -1]] (row = fired in the last round)."""
    fired = _last_round(T).to(torch.float64).unsqueeze(1)
    table = (2 * fired - 1) * torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    return LayerRule.from_table("output", T, table)


def winnow(T: int = 1, eta: float = 0.01, factor: float = 2.0) -> LayerRule:
    """Multiplicative weights / Winnow output rule (Table 1), for ``mode="multiplicative"``:
    a fired neuron's weight into the true label is multiplied by ``factor`` and into the
    predicted label by ``1/factor``; non-firing neurons are unchanged. Since multiplicative
    updates are ``w *= 1 + eta * r``, the table holds ``(factor - 1)/eta`` and ``(1/factor - 1)/eta``."""
    fired = _last_round(T).to(torch.float64).unsqueeze(1)
    row = torch.tensor([[(factor - 1.0) / eta, (1.0 / factor - 1.0) / eta]], dtype=torch.float64)
    return LayerRule.from_table("output", T, fired * row)


def temporal_hebb(T: int) -> LayerRule:
    """Temporal Hebb RNN rule: r[pre, post] = #rounds t with pre firing at t and post at t+1;
    for T = 1 the plain Hebb rule (AND of the two bits)."""
    S = 2**T
    pre = torch.arange(S).unsqueeze(1)
    post = torch.arange(S).unsqueeze(0)
    if T == 1:
        table = (pre & post).to(torch.float64)
    else:
        # bit T-1-t holds round t (first round = most significant); pre at t, post at t+1
        table = torch.zeros(S, S, dtype=torch.float64)
        for t in range(T - 1):
            table += ((pre >> (T - 1 - t)) & 1) * ((post >> (T - 2 - t)) & 1)
    return LayerRule.from_table("rnn", T, table)


def classic_rule(name: str, T: int, eta: float = 0.01) -> Rule:
    """A named rule set: perceptron, winnow, hebb+perceptron."""
    prov = {"method": "classic", "name": name}
    if name == "perceptron":
        return Rule(T, perceptron(T), provenance=prov)
    if name == "winnow":
        return Rule(T, winnow(T, eta), mode="multiplicative", provenance=prov)
    if name == "hebb+perceptron":
        return Rule(T, perceptron(T), temporal_hebb(T), provenance=prov)
    raise PlasticityError(f"unknown classic rule '{name}': use one of {', '.join(CLASSIC)}")


CLASSIC = ("perceptron", "winnow", "hebb+perceptron")

__all__ = ["CLASSIC", "Scheme", "classic_rule", "perceptron", "temporal_hebb", "winnow"]
