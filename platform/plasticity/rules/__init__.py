"""Plasticity rules (docs/paper.md section 2): a versioned, JSON-serialisable object.

A ``Rule`` bundles what rule-based learning needs: the output rule (always), the RNN rule (when
the recurrent weights are plastic), the round count T, the application mode (additive or
multiplicative), the update scheme, and provenance. Each layer's rule is a ``LayerRule``: its
parametrization (a key of ``tables.PARAMETRIZATIONS``: table, MLP, ...), its parameters, and the
table they evaluate to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .. import PlasticityError
from .tables import (
    MARGINS,
    MODES,
    OUTPUT_ROWS,
    PARAMETRIZATIONS,
    UPDATE_ON,
    params_to_table,
    table_shape,
)


def check_margin(update_on: str, gamma: float) -> None:
    """gamma belongs to the margin schemes (> 0 there, 0 elsewhere): a one-line error if not."""
    if gamma < 0:
        raise PlasticityError(f"gamma={gamma} must be >= 0 (the margin of update_on=margin)")
    if update_on in MARGINS and gamma <= 0:
        raise PlasticityError(f"update_on={update_on} needs gamma > 0 (--set gamma=...)")
    if update_on not in MARGINS and gamma != 0:
        raise PlasticityError(f"gamma={gamma} applies to update_on={' | '.join(MARGINS)} only "
                              f"(update_on is {update_on})")


@dataclass(frozen=True)
class Scheme:
    """When updates happen (docs/paper.md 2.3, docs/rules.md). ``update_on``: ``mistakes``
    (default), ``all`` examples, or a margin scheme (Theorem 4): a mistake OR a correct example
    whose logit margin z_y - max_{j != y} z_j is below ``gamma`` (``margin``: on the raw logit
    scale U h the readout uses; ``margin_rel``: below gamma times the logits' spread max_j z_j -
    min_j z_j, which does not grow with the weights). Under a margin scheme the second row an
    update changes (``output_rows="label_pred"``) is the best-scoring wrong class, which on a
    mistake is the prediction."""

    update_on: str = "mistakes"
    output_rows: str = "label_pred"  # "label_pred" (default) or "all" output rows
    gamma: float = 0.0  # the margin of update_on=margin | margin_rel

    def __post_init__(self):
        if self.update_on not in UPDATE_ON:
            raise PlasticityError(f"unknown update_on '{self.update_on}': use one of {UPDATE_ON}")
        if self.output_rows not in OUTPUT_ROWS:
            raise PlasticityError(
                f"unknown output_rows '{self.output_rows}': use one of {OUTPUT_ROWS}")
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)) or \
                not math.isfinite(self.gamma):
            raise PlasticityError(f"gamma must be a finite number, got {self.gamma!r}")
        check_margin(self.update_on, self.gamma)

    def triggers(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [..., l], y [...] -> (update [...] bool, other [...] int64): which examples
        update, and the class whose row gets the rule's second column (the prediction; under a
        margin scheme the best-scoring wrong class)."""
        pred = logits.argmax(-1)
        if self.update_on == "all":
            return torch.ones_like(y, dtype=torch.bool), pred
        if self.update_on == "mistakes":
            return pred != y, pred
        yy = y.unsqueeze(-1)
        z = logits.detach()
        runner, other = z.scatter(-1, yy, float("-inf")).max(-1)
        margin = z.gather(-1, yy).squeeze(-1) - runner
        bar = self.gamma if self.update_on == "margin" else self.gamma * (z.amax(-1) - z.amin(-1))
        return (pred != y) | (margin < bar), other


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
