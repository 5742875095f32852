"""A slow, obvious float64 reference of the paper's model, written from the spec (docs/paper.md 1-3).

Nothing here calls the engine's functions: one network and one example at a time, in plain
numpy (rule-based learning) or plain per-example torch (meta-learning, for autograd). The engine's
batched, speculative code is checked against it in ``test_engine.py`` and timed against it in
``bench/bench_engine.py``. Only the engine's *data* is used as input (a network's input weights
``A`` [V, d] and graph mask ``G`` [V, V]).

Conventions (docs/paper.md 1.3, 2.1-2.3):
- ``W[j, i]`` is the weight of the edge from presynaptic ``i`` to postsynaptic ``j``; the
  pre-activation of ``j`` is ``sum_i W[j, i] h[i]``; every weight is used as ``W * G``.
- ``U[c, i]`` is the weight from hidden neuron ``i`` to output ``c``.
- A round: ``z = A x`` (round 1), then ``z = W h + A x`` ("paper") or ``W (h + A x)`` ("code");
  ``h = cap_k(ReLU(z))``, the cap keeping the k largest with ties to the lowest index; a neuron
  fires when it is kept by the cap AND its value is > 0 (``firing="positive"``), or when it is
  kept by the cap (``"topk"``, the reference code's firing).
- History: ``hist = 2 * hist + fired`` each round, so the first round is the most significant bit.
- RNN rule table ``r[pre_hist, post_hist]``: ``dW[j, i] = r[hist[i], hist[j]]``, graph edges only.
- Output rule table ``r_o[hist, b]``: the true-label row gets ``r_o[hist, 0]``; the (wrongly)
  predicted row gets ``r_o[hist, 1]`` (``output_rows="all"``: every other row does).
- Additive ``w += eta * r``; multiplicative ``w *= 1 + eta * r``; start from 0 / 1.
- Predictions are ``argmax`` with ties to the lowest index.
"""

from __future__ import annotations

import numpy as np
import torch

# ------------------------------------------------------------------------------ rule-based


def keep_mask(z: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k largest entries of z [V] (the cap)."""
    keep = np.zeros(z.shape[0], dtype=bool)
    keep[np.argsort(-z, kind="stable")[:k]] = True
    return keep


def cap_tie(z: np.ndarray, k: int, rel: float = 1e-9) -> bool:
    """Whether the cap's boundary (k-th vs (k+1)-th largest of z >= 0) is a tie up to rounding:
    then which neuron is kept depends on summation order, and no two codes need agree."""
    if k >= z.shape[0]:
        return False
    v = np.sort(z)[::-1]
    return bool(v[k] > 0 and v[k - 1] - v[k] <= rel * v[k - 1])


def forward_one(A, G, W, U, x, k: int, T: int, recurrence: str = "paper", stats=None,
                firing: str = "positive"):
    """One example through one network. A [V, d], G [V, V], W [V, V], U [l, V], x [d]
    -> (logits [l], h_T [V], hist [V] ints in [0, 2^T)). ``stats["cap_ties"]`` (if given) counts
    rounds whose cap boundary is a tie (see ``cap_tie``)."""
    WG = W * G
    ax = A @ x
    h = np.zeros(A.shape[0])
    hist = np.zeros(A.shape[0], dtype=np.int64)
    for t in range(T):
        if t == 0:
            z = ax
        elif recurrence == "paper":
            z = WG @ h + ax
        else:
            z = WG @ (h + ax)
        z = np.maximum(z, 0.0)
        if stats is not None and cap_tie(z, k):
            stats["cap_ties"] = stats.get("cap_ties", 0) + 1
        keep = keep_mask(z, k)
        h = np.where(keep, z, 0.0)
        fired = keep if firing == "topk" else keep & (z > 0)
        hist = 2 * hist + fired.astype(np.int64)
    logits = np.array([U[c] @ h for c in range(U.shape[0])])
    return logits, h, hist


def first_argmax(v) -> int:
    """Index of the largest entry, the lowest index on ties."""
    best = 0
    for c in range(1, len(v)):
        if v[c] > v[best]:
            best = c
    return best


def decide(logits, y: int, update_on: str, gamma: float = 0.0) -> tuple[bool, int]:
    """Whether one example updates, and the class whose row gets the rule's second column:
    the prediction (mistakes, all), or under a margin scheme the best-scoring wrong class (the
    lowest index on ties), updating on a mistake or a margin z_y - z_runner below gamma (raw
    ``margin``) or below gamma * (max z - min z) (``margin_rel``)."""
    z = [float(v) for v in logits]
    pred = first_argmax(z)
    if update_on == "all":
        return True, pred
    if update_on == "mistakes":
        return pred != y, pred
    runner = None
    for c in range(len(z)):
        if c != y and (runner is None or z[c] > z[runner]):
            runner = c
    bar = gamma if update_on == "margin" else gamma * (max(z) - min(z))
    return pred != y or z[y] - z[runner] < bar, runner


def _change(w: np.ndarray, r: np.ndarray, eta: float, mode: str) -> np.ndarray:
    return w + eta * r if mode == "additive" else w * (1.0 + eta * r)


def update_one(W, U, G, hist, y: int, pred: int, rnn_table, out_table, eta: float, mode: str,
               output_rows: str):
    """One rule update of one network from the histories [V] of one example. Returns (W, U)."""
    U = U.copy()
    r = out_table[hist]  # [V, 2]
    for c in range(U.shape[0]):
        if c == y:
            U[c] = _change(U[c], r[:, 0], eta, mode)
        elif output_rows == "all" or c == pred:
            U[c] = _change(U[c], r[:, 1], eta, mode)
    if rnn_table is not None:
        R = rnn_table[hist[None, :], hist[:, None]]  # R[j, i] = r[hist[i] (pre), hist[j] (post)]
        W = np.where(G > 0, _change(W, R, eta, mode), W)
    return W, U


def fresh(V: int, n_classes: int, G, mode: str):
    """W, U at the start of rule-based learning: 0 (additive) or 1 (multiplicative), on edges."""
    if mode == "additive":
        return np.zeros((V, V)), np.zeros((n_classes, V))
    return np.ones((V, V)) * (G > 0), np.ones((n_classes, V))


def train_one(A, G, k, T, n_classes, rnn_table, out_table, x, y, order, *, eta=0.01,
              mode="additive", update_on="mistakes", output_rows="label_pred",
              recurrence="paper", stats=None, firing="positive", gamma=0.0):
    """Rule-based training of ONE network on the examples ``order`` (one at a time).

    Returns (W, U, number of updates); ``stats`` as in ``forward_one``."""
    V = A.shape[0]
    W, U = fresh(V, n_classes, G, mode)
    updates = 0
    for idx in order:
        logits, _, hist = forward_one(A, G, W, U, x[idx], k, T, recurrence, stats, firing)
        update, pred = decide(logits, int(y[idx]), update_on, gamma)
        if not update:
            continue
        W, U = update_one(W, U, G, hist, int(y[idx]), pred, rnn_table, out_table, eta, mode,
                          output_rows)
        updates += 1
    return W, U, updates


def accuracy_one(A, G, W, U, k, T, x, y, recurrence="paper", firing="positive") -> float:
    """Test accuracy of one network."""
    hits = sum(first_argmax(forward_one(A, G, W, U, x[i], k, T, recurrence, None, firing)[0]) == y[i]
               for i in range(x.shape[0]))
    return hits / max(x.shape[0], 1)


def numpy64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def train_all(nets, rnn_table, out_table, x, y, order, **kw):
    """``train_one`` for every network of an engine ``Networks`` batch, in a Python loop.

    Returns (W [N, V, V], U [N, l, V], updates [N], cap ties seen [N]) as numpy arrays."""
    xs, ys, orders = numpy64(x), y.cpu().numpy(), order.cpu().numpy()
    rt = None if rnn_table is None else numpy64(rnn_table)
    ot = numpy64(out_table)
    Ws, Us, ups, ties = [], [], [], []
    for n in range(nets.n):
        stats: dict = {}
        W, U, u = train_one(numpy64(nets.A[n]), numpy64(nets.graph[n]), nets.k, nets.T,
                            nets.n_classes, rt, ot, xs, ys, orders[n],
                            recurrence=nets.recurrence, stats=stats, firing=nets.firing, **kw)
        Ws.append(W)
        Us.append(U)
        ups.append(u)
        ties.append(stats.get("cap_ties", 0))
    return np.stack(Ws), np.stack(Us), np.array(ups), np.array(ties)


# ------------------------------------------------------------------------------ rule tables


def mlp_table(w1, b1, w2, b2, layer: str, T: int) -> torch.Tensor:
    """The table of an MLP rule (n_bits -> hidden ReLU -> 1), cell by cell (docs/paper.md 2.1).

    The MLP's input for cell [pre, post] (RNN) is pre's T bits then post's T bits, and for cell
    [pre, b] (output) pre's T bits then b; a history's first round is its most significant bit."""
    S = 2**T
    cols = S if layer == "rnn" else 2
    col_bits = T if layer == "rnn" else 1
    rows = []
    for a in range(S):
        row = []
        for b in range(cols):
            bits = [(a >> (T - 1 - t)) & 1 for t in range(T)]
            bits += [(b >> (col_bits - 1 - t)) & 1 for t in range(col_bits)]
            inp = torch.tensor(bits, dtype=w1.dtype)
            hid = torch.relu(w1 @ inp + b1)
            row.append((w2 @ hid + b2).reshape(()))
        rows.append(torch.stack(row))
    return torch.stack(rows)


# ------------------------------------------------------------------------------ meta-learning


def forward_torch(A, G, W, U, x, k: int, T: int, recurrence: str, margins: list | None = None,
                  firing: str = "positive"):
    """``forward_one`` in torch (differentiable in W, U). Appends to ``margins`` the distance of
    this forward pass's discrete decisions (ReLU sign, cap boundary) from a tie."""
    WG = W * G
    ax = A @ x
    h = torch.zeros(A.shape[0], dtype=A.dtype)
    hist = torch.zeros(A.shape[0], dtype=torch.int64)
    for t in range(T):
        if t == 0:
            z = ax
        elif recurrence == "paper":
            z = WG @ h + ax
        else:
            z = WG @ (h + ax)
        zd = z.detach()
        pos = torch.relu(zd)
        keep = torch.from_numpy(keep_mask(pos.numpy(), k))
        if margins is not None:
            nz = zd[zd != 0]
            if nz.numel():
                margins.append(float(nz.abs().min()))
            srt = torch.sort(pos, descending=True).values
            if k < srt.numel() and srt[k] > 0:
                margins.append(float(srt[k - 1] - srt[k]))
        h = torch.relu(z) * keep
        fired = keep if firing == "topk" else keep & (zd > 0)
        hist = 2 * hist + fired.to(torch.int64)
    logits = torch.stack([U[c] @ h for c in range(U.shape[0])])
    return logits, h, hist


def episode_loss_one(A, G, k, T, n_classes, rnn_table, out_table, xs, ys, *, eta, mode="additive",
                     update_on="mistakes", output_rows="label_pred", recurrence="paper",
                     margins: list | None = None, firing: str = "positive",
                     loss: str = "logits", gamma: float = 0.0) -> torch.Tensor:
    """One meta-learning episode (docs/paper.md 3): fresh W, U; learn xs [B, d] one example at a time
    (differentiably in the rule tables); mean cross-entropy of the final weights on xs (of the
    logits, or with ``loss="softmax"`` of the softmax outputs, the reference code's loss)."""
    V = A.shape[0]
    if mode == "additive":
        W = torch.zeros(V, V, dtype=A.dtype)
        U = torch.zeros(n_classes, V, dtype=A.dtype)
    else:
        W = torch.ones(V, V, dtype=A.dtype) * G
        U = torch.ones(n_classes, V, dtype=A.dtype)

    def change(w, r):
        return w + eta * r if mode == "additive" else w * (1.0 + eta * r)

    for t in range(xs.shape[0]):
        logits, _, hist = forward_torch(A, G, W, U, xs[t], k, T, recurrence, margins, firing)
        ld = logits.detach()
        y = int(ys[t])
        update, pred = decide(ld.tolist(), y, update_on, gamma)
        if margins is not None:
            srt = torch.sort(ld, descending=True).values
            if srt.numel() > 1 and srt[0] != srt[1]:
                margins.append(float(srt[0] - srt[1]))
            if update_on in ("margin", "margin_rel") and first_argmax(ld.tolist()) == y \
                    and srt[0] != srt[-1]:  # on a correct example the margin test decides too
                bar = gamma if update_on == "margin" else gamma * float(srt[0] - srt[-1])
                runner = max(float(v) for c, v in enumerate(ld) if c != y)
                margins.append(abs(float(ld[y]) - runner - bar))
        if not update:
            continue
        r = out_table[hist]  # [V, 2]
        rows = []
        for c in range(n_classes):
            if c == y:
                rows.append(change(U[c], r[:, 0]))
            elif output_rows == "all" or c == pred:
                rows.append(change(U[c], r[:, 1]))
            else:
                rows.append(U[c])
        U = torch.stack(rows)
        if rnn_table is not None:
            R = rnn_table[hist[None, :], hist[:, None]]
            W = torch.where(G > 0, change(W, R), W)
    losses = []
    for t in range(xs.shape[0]):
        logits, _, _ = forward_torch(A, G, W, U, xs[t], k, T, recurrence, margins, firing)
        if loss == "softmax":
            e = torch.exp(logits - logits.max())
            logits = e / e.sum()
        losses.append(torch.logsumexp(logits, 0) - logits[int(ys[t])])
    return torch.stack(losses).mean()


def meta_step_reference(nets, rnn_table, out_table, xs, ys, *, eta, mode="additive",
                        update_on="mistakes", output_rows="label_pred", margins=None,
                        loss="logits", gamma=0.0):
    """The meta-loss of one step, episode by episode in a Python loop, in float64: the mean over
    episodes of ``episode_loss_one``. xs: [E, B, d], ys: [E, B]; ``nets`` an engine batch of E
    networks (only its A, graph, k, T are read). Differentiable in the tables."""
    total = 0.0
    E = xs.shape[0]
    for e in range(E):
        A = nets.A[e].to(torch.float64)
        G = nets.graph[e].to(torch.float64)
        total = total + episode_loss_one(
            A, G, nets.k, nets.T, nets.n_classes, rnn_table, out_table,
            xs[e].to(torch.float64), ys[e], eta=eta, mode=mode, update_on=update_on,
            output_rows=output_rows, recurrence=nets.recurrence, margins=margins,
            firing=nets.firing, loss=loss, gamma=gamma)
    return total / E
