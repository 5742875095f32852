"""Rule parametrizations (docs/paper.md 2.1) and how a rule table changes weights (docs/paper.md 2.2-2.3).

Every rule, whatever its parametrization, is evaluated into a table before it touches a weight:
- RNN rule: table [S, S] with S = 2^T, indexed [pre history, post history];
- output rule: table [S, 2], indexed [pre history, b], b = 0 for the edge into the true-label node
  and b = 1 for the edge into the predicted (or, with ``output_rows="all"``, any other) node.
Tables may carry a leading network dimension [N, ...] so every network of a batch (every member of a
population) can have its own rule. All functions here are pure and differentiable.

``PARAMETRIZATIONS`` (the registry) maps each parametrization's name to a
:class:`Parametrization` record: how it is initialised, evaluated into a table and stored in a
rule file (docs/extending.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import PlasticityError

MODES = ("additive", "multiplicative")
MARGINS = ("margin", "margin_rel")  # update on mistakes and within gamma of the runner-up
UPDATE_ON = ("mistakes", "all", *MARGINS)
OUTPUT_ROWS = ("label_pred", "all")


def table_shape(layer: str, T: int) -> tuple[int, int]:
    """Shape of a layer's rule table: (2^T, 2^T) for "rnn", (2^T, 2) for "output"."""
    S = 2**T
    if layer == "rnn":
        return (S, S)
    if layer == "output":
        return (S, 2)
    raise PlasticityError(f"unknown rule layer '{layer}': use rnn or output")


def bit_inputs(layer: str, T: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """The MLP rule's inputs for every table cell, [rows * cols, n_bits] of 0/1.

    RNN: the 2T bits of (pre history, post history); output: T bits of the pre history + bit b.
    Row-major over the table, so ``mlp(bit_inputs).view(table_shape)`` is the table.
    """
    rows, cols = table_shape(layer, T)
    col_bits = T if layer == "rnn" else 1
    r = torch.arange(rows, device=device)
    c = torch.arange(cols, device=device)
    rr, cc = torch.meshgrid(r, c, indexing="ij")
    pre = (rr.reshape(-1, 1) >> torch.arange(T - 1, -1, -1, device=device)) & 1
    post = (cc.reshape(-1, 1) >> torch.arange(col_bits - 1, -1, -1, device=device)) & 1
    return torch.cat([pre, post], dim=1).to(dtype)


def _table_init(layer: str, T: int, *, hidden: int, gen: torch.Generator, scale: float,
                dtype=torch.float64) -> dict[str, torch.Tensor]:
    """The table itself ~ N(0, scale^2) (zeros when scale = 0)."""
    return {"table": torch.randn(table_shape(layer, T), generator=gen, dtype=dtype) * scale}


def _table_eval(layer: str, T: int, params: dict[str, torch.Tensor]) -> torch.Tensor:
    return params["table"]


def _mlp_inputs(layer: str, T: int) -> int:
    return 2 * T if layer == "rnn" else T + 1


def _mlp_init(layer: str, T: int, *, hidden: int, gen: torch.Generator, scale: float,
              dtype=torch.float64) -> dict[str, torch.Tensor]:
    """An MLP (n_bits -> hidden ReLU -> 1) with PyTorch's default uniform init, its output layer
    times ``scale``."""
    n_in = _mlp_inputs(layer, T)

    def uniform(*size, fan_in):
        bound = 1.0 / math.sqrt(fan_in)
        return (torch.rand(size, generator=gen, dtype=dtype) * 2 - 1) * bound

    return {
        "w1": uniform(hidden, n_in, fan_in=n_in),
        "b1": uniform(hidden, fan_in=n_in),
        "w2": uniform(1, hidden, fan_in=hidden) * scale,
        "b2": uniform(1, fan_in=hidden) * scale,
    }


def _mlp_eval(layer: str, T: int, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The MLP at every cell's bits (``bit_inputs``), leading dims kept: [..., R, C]."""
    w1 = params["w1"]
    bits = bit_inputs(layer, T, dtype=w1.dtype, device=w1.device)
    hid = torch.relu(torch.matmul(bits, w1.transpose(-1, -2)) + params["b1"].unsqueeze(-2))
    out = torch.matmul(hid, params["w2"].transpose(-1, -2)) + params["b2"].unsqueeze(-2)
    return out.squeeze(-1).reshape(*out.shape[:-2], *table_shape(layer, T))


def _mlp_check(layer: str, T: int, params: dict[str, torch.Tensor], hidden: int | None) -> None:
    """A loaded MLP: w1 [H, n_in], b1 [H], w2 [1, H], b2 [1], H the declared hidden size."""
    H = params["w1"].shape[0] if params["w1"].dim() == 2 else -1
    want = {"w1": (H, _mlp_inputs(layer, T)), "b1": (H,), "w2": (1, H), "b2": (1,)}
    for key, shape in want.items():
        if tuple(params[key].shape) != shape or H < 1:
            raise PlasticityError(f"{layer}.params.{key} has shape {list(params[key].shape)}, "
                                  f"expected {list(shape)}")
    if hidden is not None and hidden != H:
        raise PlasticityError(f"{layer}.hidden={hidden} but w1 has {H} hidden units")


@dataclass(frozen=True)
class Parametrization:
    """One rule parametrization (``MetaConfig.rule_param``, a rule file's ``"param"``).

    ``init(layer, T, *, hidden, gen, scale, dtype) -> params``: the initial parameters (named
    tensors), ``scale`` the config's ``rnn_init`` / ``output_init``, ``gen`` the seeded
    generator; ``table(layer, T, params) -> [..., R, C]``: the rule's table, differentiable,
    leading dims of the params kept (see ``table_shape``). In a rule file the params are stored
    under ``"params"`` by name and must be exactly ``keys``; ``check(layer, T, params, hidden)``
    refuses loaded params of wrong shapes (a PlasticityError naming the field; the table's own
    shape is checked for every parametrization). ``uses_hidden``: the config's ``hidden`` is
    recorded with the rule; ``from_values``: a file may give only the table (``"values"``), which
is then the one parameter."""

    init: Callable[..., dict[str, torch.Tensor]]
    table: Callable[[str, int, dict[str, torch.Tensor]], torch.Tensor]
    keys: tuple[str, ...]
    doc: str
    check: Callable[[str, int, dict[str, torch.Tensor], int | None], None] | None = None
    uses_hidden: bool = False
    from_values: bool = False

    def __post_init__(self):
        if not self.keys or (self.from_values and len(self.keys) != 1):
            raise ValueError("a parametrization has parameter keys, exactly one if from_values")
        if not self.doc or "\n" in self.doc:
            raise ValueError("a parametrization's doc is one non-empty line")


# The registry: name -> Parametrization. A new parametrization is one entry here plus its
# functions; `rule_param=`, rule files and the parametrised tests (tests/test_rules.py) pick it
# up.
PARAMETRIZATIONS: dict[str, Parametrization] = {
    "table": Parametrization(_table_init, _table_eval, ("table",),
                             "the table itself, one free number per cell", from_values=True),
    "mlp": Parametrization(_mlp_init, _mlp_eval, ("w1", "b1", "w2", "b2"),
                           "an MLP of the cell's bits: n_bits -> hidden ReLU -> 1",
                           check=_mlp_check, uses_hidden=True),
}


def parametrization(param: str) -> Parametrization:
    """The registry entry of ``param``; an unknown name is a one-line PlasticityError."""
    spec = PARAMETRIZATIONS.get(param)
    if spec is None:
        raise PlasticityError(f"unknown rule parametrization '{param}': use "
                              f"{' or '.join(PARAMETRIZATIONS)}")
    return spec


def init_params(
    param: str, layer: str, T: int, *, hidden: int, gen: torch.Generator, scale: float,
    dtype=torch.float64,
) -> dict[str, torch.Tensor]:
    """Initial parameters of parametrization ``param`` (a table ~ N(0, scale^2), an MLP, ...)."""
    table_shape(layer, T)  # refuses an unknown layer
    return parametrization(param).init(layer, T, hidden=hidden, gen=gen, scale=scale, dtype=dtype)


def params_to_table(param: str, layer: str, T: int, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Evaluate a rule's parameters into its table (differentiable). Leading dims are kept:
    table params [..., R, C] -> [..., R, C]; MLP params with leading [...] -> [..., R, C]."""
    table_shape(layer, T)  # refuses an unknown layer
    return parametrization(param).table(layer, T, params)


def _batched(table: torch.Tensor, n: int) -> torch.Tensor:
    """[R, C] or [N, R, C] -> [N, R, C] (expand, no copy)."""
    return table.expand(n, *table.shape[-2:]) if table.dim() == 2 else table


def rnn_delta(table: torch.Tensor, hist: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Scaled RNN-rule change of every synapse. table: [S, S] or [N, S, S]; hist: [N, V] int64;
    scale: [N] -> dW [N, V, V] with dW[n, j, i] = scale[n] * table[n, hist[n, i], hist[n, j]].

    Off-graph entries are not masked here: the caller multiplies by the graph (additive) or
    relies on W being zero off the graph (multiplicative)."""
    N, V = hist.shape
    tab = _batched(table, N) * scale.view(N, 1, 1)
    S = tab.shape[-1]
    # row n*S + s: post history s, over presynaptic i: tab[n, hist[n, i], s]
    by_post = torch.gather(tab.transpose(1, 2), 2, hist.unsqueeze(1).expand(N, S, V))
    rows = hist + torch.arange(N, device=hist.device).unsqueeze(1) * S  # [N, V_post]
    return by_post.reshape(N * S, V).index_select(0, rows.reshape(-1)).view(N, V, V)


def output_delta(
    table: torch.Tensor, hist: torch.Tensor, y: torch.Tensor, pred: torch.Tensor,
    scale: torch.Tensor, n_classes: int, rows: str = "label_pred",
) -> torch.Tensor:
    """Scaled output-rule change. table: [S, 2] or [N, S, 2]; hist: [N, V]; y, pred, scale: [N]
    -> dU [N, l, V]: the true-label row gets table[hist, 0]; the predicted row (if it is wrong),
    or with ``rows="all"`` every other row, gets table[hist, 1] (docs/paper.md 2.2-2.3)."""
    N, V = hist.shape
    tab = _batched(table, N)
    r = torch.gather(tab, 1, hist.unsqueeze(-1).expand(N, V, 2)) * scale.view(N, 1, 1)
    classes = torch.arange(n_classes, device=y.device)
    label = (y.unsqueeze(1) == classes).to(r.dtype)  # one-hot, without one_hot's range check
    if rows == "label_pred":
        other = ((pred.unsqueeze(1) == classes) & (pred != y).unsqueeze(1)).to(r.dtype)
    elif rows == "all":
        other = 1.0 - label
    else:
        raise PlasticityError(f"unknown output_rows '{rows}': use one of {OUTPUT_ROWS}")
    return label.unsqueeze(2) * r[:, None, :, 0] + other.unsqueeze(2) * r[:, None, :, 1]


def apply_delta(w: torch.Tensor, delta: torch.Tensor, mode: str, mask: torch.Tensor | None = None,
                inplace: bool = False) -> torch.Tensor:
    """w + delta * mask (additive) or w * (1 + delta) (multiplicative; w is already zero off the
    mask). ``inplace`` (no autograd) overwrites w and may consume ``delta``."""
    if mode == "additive":
        if inplace:
            return w.addcmul_(delta, mask) if mask is not None else w.add_(delta)
        return torch.addcmul(w, delta, mask) if mask is not None else w + delta
    if mode == "multiplicative":
        if inplace:
            return w.mul_(delta.add_(1.0))
        return w * (1.0 + delta)
    raise PlasticityError(f"unknown rule mode '{mode}': use one of {MODES}")
