"""Rule parametrizations (docs/paper.md 2.1) and how a rule table changes weights (docs/paper.md 2.2-2.3).

Every rule, whatever its parametrization, is evaluated into a table before it touches a weight:
- RNN rule: table [S, S] with S = 2^T, indexed [pre history, post history];
- output rule: table [S, 2], indexed [pre history, b], b = 0 for the edge into the true-label node
  and b = 1 for the edge into the predicted (or, with ``output_rows="all"``, any other) node.
Tables may carry a leading network dimension [N, ...] so every network of a batch (every member of a
population) can have its own rule. All functions here are pure and differentiable.
"""

from __future__ import annotations

import math

import torch

from .. import PlasticityError

LAYERS = ("rnn", "output")
PARAMETRIZATIONS = ("table", "mlp")
MODES = ("additive", "multiplicative")
UPDATE_ON = ("mistakes", "all")
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


def init_params(
    param: str, layer: str, T: int, *, hidden: int, gen: torch.Generator, scale: float,
    dtype=torch.float64,
) -> dict[str, torch.Tensor]:
    """Initial parameters: a table ~ N(0, scale^2) (zeros when scale = 0), or an MLP
    (n_bits -> hidden ReLU -> 1) with PyTorch's default uniform init times ``scale``."""
    shape = table_shape(layer, T)
    if param == "table":
        return {"table": torch.randn(shape, generator=gen, dtype=dtype) * scale}
    if param == "mlp":
        n_in = 2 * T if layer == "rnn" else T + 1

        def uniform(*size, fan_in):
            bound = 1.0 / math.sqrt(fan_in)
            return (torch.rand(size, generator=gen, dtype=dtype) * 2 - 1) * bound

        return {
            "w1": uniform(hidden, n_in, fan_in=n_in),
            "b1": uniform(hidden, fan_in=n_in),
            "w2": uniform(1, hidden, fan_in=hidden) * scale,
            "b2": uniform(1, fan_in=hidden) * scale,
        }
    raise PlasticityError(f"unknown rule parametrization '{param}': use table or mlp")


def params_to_table(param: str, layer: str, T: int, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Evaluate a rule's parameters into its table (differentiable). Leading dims are kept:
    table params [..., R, C] -> [..., R, C]; MLP params with leading [...] -> [..., R, C]."""
    shape = table_shape(layer, T)
    if param == "table":
        return params["table"]
    if param == "mlp":
        w1 = params["w1"]
        bits = bit_inputs(layer, T, dtype=w1.dtype, device=w1.device)
        hid = torch.relu(torch.matmul(bits, w1.transpose(-1, -2)) + params["b1"].unsqueeze(-2))
        out = torch.matmul(hid, params["w2"].transpose(-1, -2)) + params["b2"].unsqueeze(-2)
        return out.squeeze(-1).reshape(*out.shape[:-2], *shape)
    raise PlasticityError(f"unknown rule parametrization '{param}': use table or mlp")


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
