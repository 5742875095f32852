"""Plasticity rules (docs/paper.md section 2): a versioned, JSON-serialisable object.

A ``Rule`` bundles what rule-based learning needs: the output rule (always), the RNN rule (when
the recurrent weights are plastic), the round count T, the application mode (additive or
multiplicative), the update scheme, and provenance. Each layer's rule is a ``LayerRule``: its
parametrization (a key of ``tables.PARAMETRIZATIONS``: table, MLP, ...), its parameters, and the
table they evaluate to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import PlasticityError
from .tables import (
    MODES,
    OUTPUT_ROWS,
    PARAMETRIZATIONS,
    UPDATE_ON,
    params_to_table,
    table_shape,
)


@dataclass(frozen=True)
class Scheme:
    """When updates happen (docs/paper.md 2.3)."""

    update_on: str = "mistakes"  # "mistakes" (default) or "all" examples
    output_rows: str = "label_pred"  # "label_pred" (default) or "all" output rows

    def __post_init__(self):
        if self.update_on not in UPDATE_ON:
            raise PlasticityError(f"unknown update_on '{self.update_on}': use one of {UPDATE_ON}")
        if self.output_rows not in OUTPUT_ROWS:
            raise PlasticityError(
                f"unknown output_rows '{self.output_rows}': use one of {OUTPUT_ROWS}")


@dataclass(frozen=True)
class LayerRule:
    """One layer's rule: ``param`` (a key of PARAMETRIZATIONS), its parameters, and its evaluated
    table; ``hidden``: the MLP's hidden size (None for parametrizations without one)."""

    layer: str
    T: int
    param: str
    params: dict[str, torch.Tensor]
    hidden: int | None = None

    def __post_init__(self):
        if self.param not in PARAMETRIZATIONS:
            raise PlasticityError(f"unknown rule parametrization '{self.param}'")
        shape = self.table().shape
        if tuple(shape) != table_shape(self.layer, self.T):
            raise PlasticityError(
                f"{self.layer} rule table has shape {list(shape)}, expected "
                f"{list(table_shape(self.layer, self.T))} for T={self.T}")

    def table(self) -> torch.Tensor:
        """The rule's table [R, C] (float64, detached)."""
        with torch.no_grad():
            return params_to_table(self.param, self.layer, self.T, self.params).to(torch.float64)

    @staticmethod
    def from_table(layer: str, T: int, values) -> LayerRule:
        """A table rule from nested lists or a tensor."""
        return LayerRule(layer, T, "table", {"table": torch.as_tensor(values, dtype=torch.float64)})


@dataclass(frozen=True)
class Rule:
    """A complete plasticity rule set, ready to train a network (docs/paper.md 2.1-2.3)."""

    T: int
    output: LayerRule
    rnn: LayerRule | None = None
    mode: str = "additive"
    scheme: Scheme = field(default_factory=Scheme)
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.mode not in MODES:
            raise PlasticityError(f"unknown rule mode '{self.mode}': use one of {MODES}")
        for lr in (self.output, self.rnn):
            if lr is not None and lr.T != self.T:
                raise PlasticityError(f"{lr.layer} rule has T={lr.T}, the rule set T={self.T}")

    def check_network(self, T: int) -> None:
        """Refuse to train a network of T rounds with a rule of another T."""
        if T != self.T:
            raise PlasticityError(
                f"rule has T={self.T} but the network has T={T}: use a rule learned with T={T} "
                f"or --set T={self.T}")

    def tables(self, dtype=torch.float32, device="cpu") -> tuple[torch.Tensor | None, torch.Tensor]:
        """(RNN table or None, output table), on ``device`` in ``dtype``."""
        rnn = None if self.rnn is None else self.rnn.table().to(device=device, dtype=dtype)
        return rnn, self.output.table().to(device=device, dtype=dtype)
