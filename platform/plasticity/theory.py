"""The paper's theory (docs/paper.md section 6) as executable experiments.

- 6.5: the closed-form MSE-optimal output rule for the scheme "update on every example, all output
  rows" (``Scheme("all", "all")``), additive, W fixed at 0: :func:`update_counts`,
  :func:`closed_form_weights`, :func:`closed_form_mse`, :func:`mse_optimal_output_rule`.
- 6.1 (Theorem 1): GD on an additive T=1 2x2 output rule ends in the perceptron sign pattern
  [-, +; +, -] from any start; also its multiplicative analogue (Winnow, Table 1):
  :func:`theorem1_experiment`.
- 6.3 (Theorem 3): the rule [-a, a; b, -b], b >= a, on a linear threshold unit makes fewer than
  2 b^2 n / (a^2 gamma^2) mistakes: :func:`theorem3_experiment`.

Shapes: ``N`` networks, ``n`` examples, ``V`` neurons, ``l`` classes, ``S = 2^T`` histories.
Output tables are indexed [pre history a, b] with b = 0 the true-label row (rules/tables.py).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import torch

from . import PlasticityError
from .config import MetaConfig
from .meta import RuleParams, meta_train
from .network import Networks
from .rules import LayerRule, Rule, Scheme
from .seeding import torch_generator

CHUNK = 4096  # examples per forward pass when streaming a data set through fixed networks


def _fixed_hidden(nets: Networks, x: torch.Tensor, chunk: int = CHUNK):
    """Yield (start, h_T [N, c, V], histories [N, c, V]) of chunks of x [n, d] with W = 0.

    With no RNN rule and additive mode W stays 0, so the hidden code of every example is fixed
    during learning: this is what makes the final output weights order independent (6.5)."""
    W = torch.zeros_like(nets.graph)
    for s in range(0, x.shape[0], chunk):
        xb = x[s:s + chunk].to(nets.A).unsqueeze(0).expand(nets.n, -1, -1)
        h, hist = nets.hidden(xb, W)
        yield s, h.to(torch.float64), hist


def update_counts(nets: Networks, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """docs/paper.md 6.5: S [N, l, V, S_T, 2] with S[., c, v, a, b] = #{i : hist_i(v) = a,
    [y_i != c] = b}, i.e. how often the engine adds r(a, b) to U[c, v] over one pass of x [n, d],
    y [n] under Scheme("all", "all"). Uses the 0/1 history indicator: the engine adds r(hist)
    whatever the activation value."""
    S_T, n_cls = 2**nets.T, nets.n_classes
    y1 = torch.nn.functional.one_hot(y, n_cls).to(nets.A.device, torch.float64)  # [n, l]
    label = nets.A.new_zeros(nets.n, n_cls, nets.neurons, S_T, dtype=torch.float64)
    total = nets.A.new_zeros(nets.n, nets.neurons, S_T, dtype=torch.float64)
    for s, _, hist in _fixed_hidden(nets, x):
        onehot = torch.nn.functional.one_hot(hist, S_T).to(torch.float64)  # [N, c, V, S_T]
        label += torch.einsum("ic,nivs->ncvs", y1[s:s + hist.shape[1]], onehot)
        total += onehot.sum(1)
    return torch.stack([label, total.unsqueeze(1) - label], dim=-1)


def _table(rule_table: LayerRule | torch.Tensor) -> torch.Tensor:
    t = rule_table.table() if isinstance(rule_table, LayerRule) else torch.as_tensor(rule_table)
    return t.to(torch.float64)


def closed_form_weights(nets: Networks, rule_table: LayerRule | torch.Tensor, x: torch.Tensor,
                        y: torch.Tensor, eta: float = 0.01) -> torch.Tensor:
    """docs/paper.md 6.5: final output weights after one pass of x [n, d], y [n] in ANY order with
    Scheme("all", "all"), additive, U starting at 0 and no RNN rule (W = 0):
    U[c, v] = eta * sum_{a,b} r(a, b) S[c, v, a, b].
    rule_table: [S_T, 2] -> U [N, l, V] float64."""
    r = _table(rule_table).to(nets.A.device)
    return eta * torch.einsum("ncvab,ab->ncv", update_counts(nets, x, y), r)


def closed_form_mse(nets: Networks, rule_table: LayerRule | torch.Tensor, x: torch.Tensor,
                    y: torch.Tensor, eta: float = 0.01) -> torch.Tensor:
    """The 6.5 loss of a rule, per network [N]: (1/n) sum_j (1/l) sum_c (s_c(j) - [y_j = c])^2
    with s_c(j) = U[c] . h_T(x_j) (readout of the capped values, as in the engine) and U the
    closed-form weights after training on the same x, y."""
    U = closed_form_weights(nets, rule_table, x, y, eta)
    sse = torch.zeros(nets.n, dtype=torch.float64, device=U.device)
    for s, h, _ in _fixed_hidden(nets, x):
        target = torch.nn.functional.one_hot(y[s:s + h.shape[1]].to(U.device), nets.n_classes)
        sse += ((torch.bmm(h, U.transpose(1, 2)) - target) ** 2).sum((1, 2))
    return sse / (x.shape[0] * nets.n_classes)


def mse_optimal_output_rule(nets: Networks, x: torch.Tensor, y: torch.Tensor, *,
                            eta: float = 0.01) -> tuple[LayerRule, dict]:
    """docs/paper.md 6.5: the output rule r [S_T, 2] minimising the mean over the N networks of the
    closed-form MSE (:func:`closed_form_mse`), by least squares in float64.

    s_c(j) = sum_p F[j, c, p] r_p is linear in the flattened rule (p = (a, b)), with
    F[j, c, p] = eta * h_T(x_j) . S[c, :, p]; the loss is affine-quadratic in r, so its minimiser
    solves a (2 S_T) x (2 S_T) linear system (Theorem 2's convexity, made exact by this scheme).
    One rule is fitted to all N networks jointly (N = 1: the paper's single network).
    Null directions get the minimum-norm answer (``gelsd``): histories that never occur, and,
    when every class has exactly n / l examples, r(a, b) = u_b with u_1 = -u_0 / (l - 1), which
    adds u_0 n_c + u_1 (n - n_c) = 0 to every weight (then ``rank`` = 2 S_T - 1).
    Returns the rule and info {mse, mse_per_network, rank, singular_values, rule (a Rule with
    Scheme("all", "all"), ready for ``train_with_rule``)}."""
    S = update_counts(nets, x, y)  # [N, l, V, S_T, 2]
    N, n_cls, V = S.shape[:3]
    P = S.shape[-2] * S.shape[-1]
    S = S.reshape(N, n_cls, V, P).permute(0, 2, 1, 3).reshape(N, V, n_cls * P)
    feats, targets = [], []
    for s, h, _ in _fixed_hidden(nets, x):
        c = h.shape[1]
        feats.append((eta * torch.bmm(h, S)).reshape(N, c * n_cls, P))  # rows (j, c)
        targets.append(torch.nn.functional.one_hot(y[s:s + c].to(h.device), n_cls)
                       .to(torch.float64).reshape(1, c * n_cls).expand(N, -1))
    F = torch.cat(feats, 1).reshape(-1, P).cpu()
    t = torch.cat(targets, 1).reshape(-1, 1).cpu()
    sol = torch.linalg.lstsq(F, t, driver="gelsd")
    layer = LayerRule.from_table("output", nets.T, sol.solution.reshape(-1, 2))
    per_net = closed_form_mse(nets, layer, x, y, eta).cpu()
    rule = Rule(nets.T, layer, scheme=Scheme("all", "all"),
                provenance={"method": "closed_form_mse", "eta": eta, "examples": x.shape[0]})
    info = {"mse": float(per_net.mean()), "mse_per_network": per_net.tolist(),
            "rank": int(sol.rank), "singular_values": torch.linalg.svdvals(F).tolist(),
            "rule": rule}
    return layer, info


# ------------------------------------------------------------------------------ Theorem 1 (6.1)

PERCEPTRON_SIGNS = ((-1, 1), (1, -1))  # rows: pre not fired / fired; cols: label / predicted row


def sign_pattern(table: torch.Tensor) -> str:
    """'[-,+;+,-]'-style sign pattern of a table [R, C] (0 prints as '0')."""
    sym = {-1: "-", 0: "0", 1: "+"}
    rows = [",".join(sym[int(v)] for v in row) for row in torch.sign(table).tolist()]
    return "[" + ";".join(rows) + "]"


def theorem1_experiment(cfg: MetaConfig, data, starts: int, *, output_init: float = 1.0,
                        device: str | torch.device = "cpu") -> dict:
    """docs/paper.md 6.1: meta-learn a T=1 2x2 output table by GD (``meta_train``) from ``starts``
    random initial tables N(0, output_init^2), start s using seed ``cfg.seed + s`` (which also
    draws its networks and batches). ``cfg.mode`` picks the variant:

    - additive: does GD end in the perceptron pattern [-, +; +, -] (Theorem 1)?
    - multiplicative (w *= 1 + eta r, weights start at 1): does it end in the Winnow pattern of
      Table 1, fired row r[1, 0] > 0 > r[1, 1] ("fired_row_winnow"), and additionally the
      not-fired row smaller in magnitude than both fired entries ("winnow")?

    With two classes and the default scheme (label and predicted rows) the episode, its mistakes
    and its cross-entropy depend on the table only through the column difference
    d[a] = r[a, 0] - r[a, 1]: the common part (r[a, 0] + r[a, 1]) / 2 is added to both output
    rows alike and cancels in the softmax, so only the L2 term (``weight_decay``) moves it and it
    decays slowly. Hence both the raw sign pattern and the identifiable one, d[0] < 0 < d[1]
    ("difference_perceptron"), are reported.

    Returns {mode, scheme, starts: [{seed, initial, final, pattern, perceptron, difference,
    common, difference_perceptron, fired_row_winnow, winnow, loss_first, loss_last, accuracy}],
    perceptron_count, difference_perceptron_count, winnow_count, fired_row_winnow_count,
    patterns (pattern -> count)}. Nothing is forced: the counts are what GD found."""
    if cfg.T != 1 or cfg.rule_param != "table" or cfg.learn != "output":
        raise PlasticityError("theorem1_experiment needs T=1, rule_param=table, learn=output")
    runs = []
    for s in range(starts):
        cfg_s = dataclasses.replace(cfg, seed=cfg.seed + s, output_init=output_init)
        initial = RuleParams(cfg_s, "cpu").tables(torch.float64)[1].detach()
        res = meta_train(cfg_s, data, device=device)
        final = res.rule.output.table()
        signs = tuple(tuple(int(v) for v in row) for row in torch.sign(final).tolist())
        fired_row = bool(final[1, 0] > 0 > final[1, 1])
        diff = final[:, 0] - final[:, 1]
        acc = [h["accuracy"] for h in res.history if "accuracy" in h]
        runs.append({
            "seed": cfg_s.seed, "initial": initial.tolist(), "final": final.tolist(),
            "pattern": sign_pattern(final), "perceptron": signs == PERCEPTRON_SIGNS,
            "difference": diff.tolist(), "common": ((final[:, 0] + final[:, 1]) / 2).tolist(),
            "difference_perceptron": bool(diff[0] < 0 < diff[1]),
            "fired_row_winnow": fired_row,
            "winnow": fired_row and bool(final[0].abs().max() < final[1].abs().min()),
            "loss_first": res.history[0]["loss"], "loss_last": res.history[-1]["loss"],
            "accuracy": acc[-1] if acc else None,
        })
    return {
        "mode": cfg.mode, "scheme": (cfg.update_on, cfg.output_rows), "starts": runs,
        "perceptron_count": sum(r["perceptron"] for r in runs),
        "difference_perceptron_count": sum(r["difference_perceptron"] for r in runs),
        "winnow_count": sum(r["winnow"] for r in runs),
        "fired_row_winnow_count": sum(r["fired_row_winnow"] for r in runs),
        "patterns": dict(Counter(r["pattern"] for r in runs)),
    }


# ------------------------------------------------------------------------------ Theorem 3 (6.3)

def margin_data(n: int, gamma: float, examples: int, gen: torch.Generator,
                runs: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """docs/paper.md 6.3 data, per run: a unit w* [n] with sum_i w*_i = 0, and ``examples`` points x
    uniform on {-1, 1}^n kept when |w* . x| >= gamma, labelled sign(w* . x).
    Returns w* [R, n], X [R, m, n], y [R, m] in {-1, +1} (float64)."""
    ws, xs = [], []
    for _ in range(runs):
        w = torch.randn(n, generator=gen, dtype=torch.float64)
        w = w - w.mean()
        w = w / w.norm()
        kept = torch.empty(0, n, dtype=torch.float64)
        for _ in range(10_000):
            if kept.shape[0] >= examples:
                break
            cand = torch.randint(0, 2, (4 * examples, n), generator=gen).to(torch.float64) * 2 - 1
            kept = torch.cat([kept, cand[(cand @ w).abs() >= gamma]])
        if kept.shape[0] < examples:
            raise PlasticityError(f"margin gamma={gamma} keeps too few points in n={n}: lower it")
        ws.append(w)
        xs.append(kept[:examples])
    w_star, X = torch.stack(ws), torch.stack(xs)
    return w_star, X, torch.sign(torch.einsum("rmn,rn->rm", X, w_star))


def theorem3_experiment(n: int, gamma: float, a: float, b: float, *, examples: int = 1000,
                        seed: int = 0, passes: int = 100, runs: int = 1) -> dict:
    """docs/paper.md 6.3 (Theorem 3): a linear threshold unit (w starts at 0; predict +1 iff
    w . x > 0, so a tie predicts -1) trained by the rule r = [-a, a; b, -b] on mistakes only,
    with "fired" <=> x_i = +1: on a mistake with label y, w_i += y b where x_i = +1 and
    w_i -= y a where x_i = -1. Passes over the examples (fixed order) until a pass without a
    mistake, at most ``passes``. ``runs`` independent tasks (seeded by ``(seed, "theorem3")``)
    are run as one batch.

    Returns {n, gamma, a, b, bound = 2 b^2 n / (a^2 gamma^2), mistakes [R], converged [R],
    passes [R], margin [R] (the sample's actual min |w* . x|), bound_at_margin [R],
    within_bound [R], train_accuracy [R]}; ``passes`` counts the final mistake-free pass."""
    if not 0 < a <= b:
        raise PlasticityError(f"Theorem 3 needs b >= a > 0, got a={a}, b={b}")
    gen = torch_generator(seed, "theorem3", n, gamma)
    w_star, X, y = margin_data(n, gamma, examples, gen, runs)
    R, m, _ = X.shape
    w = torch.zeros(R, n, dtype=torch.float64)
    mistakes = torch.zeros(R, dtype=torch.int64)
    used = torch.zeros(R, dtype=torch.int64)
    done = torch.zeros(R, dtype=torch.bool)
    arange = torch.arange(m)
    for _ in range(passes):
        if bool(done.all()):
            break
        pos = torch.where(done, m, 0)  # finished runs skip the pass
        used += (~done).to(torch.int64)
        clean = ~done
        while True:  # speculate: find each run's first mistake from pos on, update, continue
            wrong = (torch.where(torch.einsum("rmn,rn->rm", X, w) > 0, 1.0, -1.0) != y)
            wrong &= arange >= pos.unsqueeze(1)
            has = wrong.any(1)
            if not bool(has.any()):
                break
            first = wrong.to(torch.int8).argmax(1)
            rows = has.nonzero().squeeze(1)
            xr, yr = X[rows, first[rows]], y[rows, first[rows]].unsqueeze(1)
            w[rows] += yr * torch.where(xr > 0, xr.new_full((), b), xr.new_full((), -a))  # float64
            mistakes[rows] += 1
            clean[rows] = False
            pos = torch.where(has, first + 1, m)
        done |= clean
    margin = (torch.einsum("rmn,rn->rm", X, w_star)).abs().min(1).values
    bound = 2 * b**2 * n / (a**2 * gamma**2)
    pred = torch.where(torch.einsum("rmn,rn->rm", X, w) > 0, 1.0, -1.0)
    return {
        "n": n, "gamma": gamma, "a": a, "b": b, "examples": m, "seed": seed, "bound": bound,
        "mistakes": mistakes.tolist(), "converged": done.tolist(), "passes": used.tolist(),
        "margin": margin.tolist(),
        "bound_at_margin": (2 * b**2 * n / (a**2 * margin**2)).tolist(),
        "within_bound": (mistakes.to(torch.float64) <= bound).tolist(),
        "train_accuracy": (pred == y).to(torch.float64).mean(1).tolist(),
    }


# ------------------------------------------------------------------------------ Theorem 4 (6.4)

def slack_data(n: int, gamma: float, examples: int, gen: torch.Generator, *, radius: float = 1.0,
               noise: float = 0.0, runs: int = 1) -> tuple[torch.Tensor, ...]:
    """docs/paper.md 6.4 data, per run: a unit w* [n]; ``examples`` points uniform in the ball
    ||x|| <= ``radius`` kept when |w* . x| >= gamma, labelled sign(w* . x), then a fraction
    ``noise`` of the labels flipped (the slack). Returns w* [R, n], X [R, m, n], y [R, m] in
    {-1, +1} and D^2 [R] = sum_i max(0, gamma - y_i w* . x_i)^2 (Freund & Schapire's D; the
    flipped points are all of it). float64."""
    ws, xs = [], []
    for _ in range(runs):
        w = torch.randn(n, generator=gen, dtype=torch.float64)
        w = w / w.norm()
        kept = torch.empty(0, n, dtype=torch.float64)
        for _ in range(10_000):
            if kept.shape[0] >= examples:
                break
            g = torch.randn(4 * examples, n, generator=gen, dtype=torch.float64)
            u = torch.rand(4 * examples, 1, generator=gen, dtype=torch.float64)
            cand = g / g.norm(dim=1, keepdim=True) * radius * u ** (1.0 / n)  # uniform in the ball
            kept = torch.cat([kept, cand[(cand @ w).abs() >= gamma]])
        if kept.shape[0] < examples:
            raise PlasticityError(f"margin gamma={gamma} keeps too few points in the ball of "
                                  f"radius {radius} in n={n}: lower gamma or raise the radius")
        ws.append(w)
        xs.append(kept[:examples])
    w_star, X = torch.stack(ws), torch.stack(xs)
    y = torch.sign(torch.einsum("rmn,rn->rm", X, w_star))
    flip = torch.rand(y.shape, generator=gen, dtype=torch.float64) < noise
    y = torch.where(flip, -y, y)
    d = (gamma - y * torch.einsum("rmn,rn->rm", X, w_star)).clamp(min=0.0)
    return w_star, X, y, (d**2).sum(1)


def theorem4_experiment(n: int, gamma: float, a: float, b: float, *, examples: int = 2000,
                        radius: float = 1.0, noise: float = 0.0, seed: int = 0,
                        runs: int = 1) -> dict:
    """docs/paper.md 6.4 (Theorem 4): a linear threshold unit (w = 0; predict +1 iff w . x > 0)
    learns one online pass over slack data by r = [-a, a; b, -b] applied to every example that
    is misclassified OR within gamma of the threshold (y w . x < gamma, on the raw scale of
    w . x, where the theorem puts gamma), beside the same rule on mistakes only (Theorem 3's
    scheme) on the same sequence. For real x we read the rule as Theorem 3's update with the
    "fired" bit the sign of x_i: w_i += y b x_i where x_i > 0 and w_i += y a x_i where x_i <= 0
    (on {-1, 1}^n exactly Theorem 3's; a = b is the perceptron with step b). ``runs`` tasks
    (seeded by ``(seed, "theorem4")``) run as one batch.

    The theorem's bound is O((b^2 / a^2)(R^2 + D^2 + 2 gamma) / gamma^2) with no constant
    printed: ``bound`` is that expression with constant 1 and ``ratio`` = mistakes / bound.
    Returns per task: mistakes and updates of both schemes, D^2, the final training accuracy."""
    if not 0 < a <= b:
        raise PlasticityError(f"Theorem 4 needs b >= a > 0, got a={a}, b={b}")
    if gamma <= 0:
        raise PlasticityError(f"Theorem 4 needs a margin gamma > 0, got {gamma}")
    gen = torch_generator(seed, "theorem4", n, gamma, noise)
    _, X, y, D2 = slack_data(n, gamma, examples, gen, radius=radius, noise=noise, runs=runs)
    R, m, _ = X.shape
    out = {"n": n, "gamma": gamma, "a": a, "b": b, "examples": m, "radius": radius,
           "noise": noise, "seed": seed, "D2": D2.tolist()}
    for name, threshold in (("margin", gamma), ("mistakes", 0.0)):
        w = torch.zeros(R, n, dtype=torch.float64)
        mistakes = torch.zeros(R, dtype=torch.int64)
        updates = torch.zeros(R, dtype=torch.int64)
        for i in range(m):
            x, yi = X[:, i], y[:, i]
            score = (w * x).sum(1)
            wrong = torch.where(score > 0, 1.0, -1.0) != yi
            update = wrong | (yi * score < threshold) if threshold > 0 else wrong
            step = yi.unsqueeze(1) * x * torch.where(x > 0, x.new_full((), b), x.new_full((), a))
            w += step * update.unsqueeze(1).to(w.dtype)
            mistakes += wrong.to(torch.int64)
            updates += update.to(torch.int64)
        acc = (torch.where(torch.einsum("rmn,rn->rm", X, w) > 0, 1.0, -1.0) == y)
        out[name] = {"mistakes": mistakes.tolist(), "updates": updates.tolist(),
                     "train_accuracy": acc.to(torch.float64).mean(1).tolist()}
    bound = (b / a) ** 2 * (radius**2 + D2 + 2 * gamma) / gamma**2
    out["bound"] = bound.tolist()
    out["ratio"] = (torch.tensor(out["margin"]["mistakes"], dtype=torch.float64) / bound).tolist()
    return out


__all__ = [
    "closed_form_mse", "closed_form_weights", "margin_data", "mse_optimal_output_rule",
    "sign_pattern", "slack_data", "theorem1_experiment", "theorem3_experiment",
    "theorem4_experiment", "update_counts",
]
