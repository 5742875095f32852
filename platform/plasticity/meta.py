"""Meta-learning plasticity rules by gradient descent (docs/paper.md section 3).

One step: E episodes, each a fresh network (W = U = 0) that learns B examples one at a time with
the current rule; then cross-entropy of the final weights on the episode's B examples; backprop
through the whole unrolled sequence of updates into the rule's parameters; one Adam step. The E
episodes are one batched computation. Which examples trigger an update (mistakes), which neurons
fire and which is predicted are constants for the gradient; the values flow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from . import PlasticityError
from .config import MetaConfig, to_dict
from .experiment import run_networks, run_tensors
from .learning import example_orders, progress_bar, train_with_rule
from .network import Networks
from .rules import LayerRule, Rule, Scheme
from .rules.classic import perceptron
from .rules.tables import apply_delta, output_delta, parametrization, rnn_delta
from .seeding import derive_seed, torch_generator


def unroll(nets: Networks, W, U, rnn_table, out_table, xs, ys, *, eta: float, mode: str,
           scheme: Scheme):
    """Differentiable rule-based learning of B examples per network, one at a time.

    xs: [N, B, d], ys: [N, B]; tables [S, S] / [S, 2] (or with a leading N). Returns (W, U).

    Which examples update, which neurons fire and which row is predicted are constants of the
    gradient, so with the additive rule W_B = W_0 + sum_t s_t (r[h_t,i, h_t,j] on the graph) and
    U_B likewise are linear in the tables with coefficients fixed by the (discrete) trajectory.
    The additive rule therefore runs as one autograd node (:class:`_Unrolled`): its forward is
    rule-based learning without autograd (the same updates in the same order, so W_B and U_B are
    bit-identical to the step-by-step graph's), its backward a few batched products over the
    recorded histories instead of B steps of V x V operations. The multiplicative rule, whose
    weights are products over the steps, keeps the step-by-step graph, and so does a call
    without autograd (a population's fitness), where the plain loop measured fastest."""
    if mode == "additive" and torch.is_grad_enabled():
        return _Unrolled.apply(nets, eta, scheme, xs, ys, W, U, out_table, rnn_table)
    # without autograd (evolution's fitness) the plain loop is the cheapest at its sizes
    return unroll_graph(nets, W, U, rnn_table, out_table, xs, ys, eta=eta, mode=mode,
                         scheme=scheme)


def unroll_graph(nets: Networks, W, U, rnn_table, out_table, xs, ys, *, eta: float, mode: str,
                 scheme: Scheme):
    """:func:`unroll` as a step-by-step autograd graph (any mode)."""
    N = nets.n
    # on the CPU a step where no network errs is skipped: its change is exactly zero (W + 0 = W)
    # and so is its contribution to the gradient; on CUDA the test would cost a sync per step
    skip_correct = W.device.type != "cuda"
    for t in range(xs.shape[1]):
        logits, _, hist = nets.forward(xs[:, t:t + 1], W, U)
        hist = hist[:, 0]
        y = ys[:, t]
        if scheme.update_on == "all":
            pred = logits[:, 0].argmax(-1)
            scale = torch.full((N,), eta, dtype=W.dtype, device=W.device)
        else:  # mistakes, or a margin scheme (decisions are constants of the gradient)
            trigger, pred = scheme.triggers(logits[:, 0], y)
            if skip_correct and not bool(trigger.any()):
                continue
            scale = trigger.to(W.dtype) * eta
        dU = output_delta(out_table, hist, y, pred, scale, nets.n_classes, scheme.output_rows)
        U = apply_delta(U, dU, mode)
        if rnn_table is not None:
            W = apply_delta(W, rnn_delta(rnn_table, hist, scale), mode, mask=nets.graph)
    return W, U


class _Unrolled(torch.autograd.Function):
    """The additive rule's unrolled learning as one node (see :func:`unroll`).

    Forward: rule-based learning itself (:class:`plasticity.learning.RuleLearner`: round 1 of
    every example at once, speculative chunks, the rank-2^T update; no autograd), recording
    each update's
    histories, networks, labels and changed rows. Its W_B, U_B equal the step-by-step loop's
    (the same updates, each exact, in the same order; a firing or mistake decision could differ
    only at a float near-tie of the forward pass, whose last bits depend on how many examples one
    product holds).

    Backward, from gW = dL/dW_B and gU = dL/dU_B, with Q_t the one-hot [S, V] of update t's
    histories and s_t its scale (eta where the network updated, else 0):
    - RNN table: dL/dr[a, b] = sum_t s_t sum_{j, i} [h_t,i = a] (gW * graph)[j, i] [h_t,j = b],
      i.e. sum_t s_t Q_t (gW * graph)^T Q_t^T: one batched product over every recorded update;
    - output table: column 0 sums s_t gU[y_t, i] over the neurons i of history a, column 1 the
      same over the other rows that changed (the wrong or best wrong prediction, or every other
      row);
    - W_0, U_0: gW, gU (the start enters additively)."""

    @staticmethod
    def forward(ctx, nets, eta, scheme, xs, ys, W0, U0, out_table, rnn_table):
        from .learning import RuleLearner

        N, B = ys.shape

        def per_network(t):
            return t if t is None or t.dim() == 3 else t.expand(N, *t.shape)

        learner = RuleLearner(nets, None, eta, tables=(per_network(rnn_table),
                                                       per_network(out_table)),
                              mode="additive", scheme=scheme)
        learner.W, learner.U = W0.clone(), U0.clone()
        learner.record = []
        learner.learn(xs.reshape(N * B, -1), ys.reshape(-1),
                      torch.arange(N * B, device=xs.device).view(N, B))
        ctx.nets, ctx.eta, ctx.rows = nets, eta, scheme.output_rows
        ctx.shared = (out_table.dim() == 2, rnn_table is not None and rnn_table.dim() == 2)
        ctx.has_rnn, ctx.S = rnn_table is not None, out_table.shape[-2]
        groups: dict = {}
        for start, hist, live, y, pred in learner.record:
            groups.setdefault(start, []).append((hist, live, y, pred))
        ctx.groups = {a: _stack_updates(v, eta, W0.dtype) for a, v in groups.items()}
        return learner.W, learner.U

    @staticmethod
    def backward(ctx, gW, gU):
        need = ctx.needs_input_grad
        nets, S, N = ctx.nets, ctx.S, ctx.nets.n
        shared_out, shared_rnn = ctx.shared
        want_out = need[7] and gU is not None
        want_rnn = ctx.has_rnn and need[8] and gW is not None
        ref = gU if gU is not None else gW
        g_out = torch.zeros(N, S, 2, dtype=ref.dtype, device=ref.device) if want_out else None
        g_rnn = torch.zeros(N, S, S, dtype=ref.dtype, device=ref.device) if want_rnn else None
        for a, (idx, scale, y, pred) in ctx.groups.items():
            n, K, V = idx.shape
            g = slice(a, a + n)
            if want_out:
                gu = gU[g]
                gy = torch.gather(gu, 1, y.unsqueeze(-1).expand(n, K, V))  # gU[n, y_t, :]
                if ctx.rows == "all":
                    go = gu.sum(1, keepdim=True) - gy
                else:  # label_pred: the (best) wrong prediction's row
                    go = torch.gather(gu, 1, pred.unsqueeze(-1).expand(n, K, V)) * \
                        (pred != y).unsqueeze(-1).to(gu.dtype)
                w, flat = scale.unsqueeze(-1), idx.reshape(n, K * V)
                for col, v in ((0, gy), (1, go)):
                    g_out[g, :, col].scatter_add_(1, flat, (v * w).reshape(n, K * V))
            if want_rnn:
                gm = gW[g] * nets.graph[g]  # [n, V_post j, V_pre i]
                states = torch.arange(S, device=idx.device).view(1, 1, S, 1)
                q = (idx.unsqueeze(2) == states).to(gm.dtype)  # [n, K, S, V]
                # X[n, k, a, j] = s_k sum_i [h_i = a] gm[j, i]; then sum_j X[.., a, j] [h_j = b]
                x = torch.bmm((q * scale.view(n, K, 1, 1)).reshape(n, K * S, V),
                              gm.transpose(1, 2))
                g_rnn[g] = torch.matmul(x.view(n, K, S, V), q.transpose(2, 3)).sum(1)
        if g_out is not None and shared_out:
            g_out = g_out.sum(0)
        if g_rnn is not None and shared_rnn:
            g_rnn = g_rnn.sum(0)
        return None, None, None, None, None, gW, gU, g_out, g_rnn


def _stack_updates(updates: list, eta: float, dtype) -> tuple:
    """One group's recorded updates -> (histories [n, K, V] int64, scale [n, K], y, pred)."""
    hist = torch.stack([u[0] for u in updates], 1).to(torch.int64)
    n, K = hist.shape[:2]
    live = torch.stack([torch.ones(n, dtype=torch.bool, device=hist.device) if u[1] is None
                        else u[1] for u in updates], 1)
    scale = live.to(dtype) * eta
    return hist, scale, torch.stack([u[2] for u in updates], 1), torch.stack([u[3] for u in updates], 1)


META_LOSSES = ("logits", "softmax")
COLLAPSE_MARGIN = 0.01  # a rule whose fresh network is within this of the majority class collapsed


def meta_loss(logits: torch.Tensor, y: torch.Tensor, kind: str = "logits") -> torch.Tensor:
    """Cross-entropy per example. logits: [M, l], y: [M] -> [M].

    ``"logits"``: CE on the logits (softmax once). ``"softmax"``: CE on the softmax outputs, i.e.
    softmax applied twice, as the reference code does (docs/dynamics.md); its loss is bounded
    (between log(l - 1 + e) - 1 and log(l - 1 + e)) and its gradient vanishes for confident
    outputs."""
    if kind == "softmax":
        logits = torch.softmax(logits, -1)
    elif kind != "logits":
        raise PlasticityError(f"unknown meta_loss '{kind}': use one of {', '.join(META_LOSSES)}")
    return torch.nn.functional.cross_entropy(logits, y, reduction="none")


def episode_loss(nets: Networks, rnn_table, out_table, xs, ys, *, eta, mode, scheme,
                 checkpoint_every: int = 0, start=None, return_state: bool = False,
                 per_network: bool = False, loss: str = "logits"):
    """Mean cross-entropy (``loss``: see :func:`meta_loss`), after learning each episode's
    examples, on those same examples.

    Learning starts from fresh weights, or from ``start = (W, U)`` (a network that has already
    learned, see ``MetaConfig.horizon``). With ``return_state`` also returns the final (W, U).
    With ``per_network`` the loss is each network's own mean [N] (a population's losses).
    ``checkpoint_every`` recomputes segments of the multiplicative rule's step-by-step graph in
    the backward pass; the additive rule's unroll stores only its updates' histories
    (:func:`unroll`), so it has nothing to recompute and runs whole."""
    W, U = nets.fresh_weights(mode) if start is None else start
    B = xs.shape[1]
    if mode == "additive":
        checkpoint_every = 0
    seg = checkpoint_every if checkpoint_every > 0 else B
    for s in range(0, B, seg):
        xseg, yseg = xs[:, s:s + seg], ys[:, s:s + seg]
        if checkpoint_every > 0:
            W, U = checkpoint(_segment, nets, W, U, rnn_table, out_table, xseg, yseg, eta, mode,
                              scheme, use_reentrant=False)
        else:
            W, U = unroll(nets, W, U, rnn_table, out_table, xseg, yseg, eta=eta, mode=mode,
                          scheme=scheme)
    logits, _, _ = nets.forward(xs, W, U)
    per_example = meta_loss(logits.flatten(0, 1), ys.flatten(), loss).view(ys.shape)
    value = per_example.mean(1) if per_network else per_example.mean()
    return (value, (W, U)) if return_state else value


def _segment(nets, W, U, rnn_table, out_table, xs, ys, eta, mode, scheme):
    return unroll(nets, W, U, rnn_table, out_table, xs, ys, eta=eta, mode=mode, scheme=scheme)


@dataclass
class MetaResult:
    """The learned rule and the history of the meta-optimisation."""

    rule: Rule
    history: list[dict] = field(default_factory=list)  # {step, loss[, accuracy]} (final start)
    skipped: int = 0  # steps whose meta-gradient was not finite (skipped, never applied)
    collapsed_starts: list[dict] = field(default_factory=list)  # starts abandoned (restarts)
    selection: list[dict] = field(default_factory=list)  # select_starts > 1: each start's score


class RuleParams:
    """The trainable parameters of the rule(s) being meta-learned, and the fixed parts."""

    def __init__(self, cfg: MetaConfig, device, fixed_rnn: LayerRule | None = None,
                 fixed_output: LayerRule | None = None, attempt: int = 0):
        # start 0 is the run's own; a restart r draws from (seed, "rule-init", r)
        gen = torch_generator(cfg.seed, "rule-init", *((attempt,) if attempt else ()))
        if cfg.learn == "rnn" and fixed_output is None:
            fixed_output = perceptron(cfg.T)
        self.cfg = cfg
        self.param = cfg.rule_param
        self.spec = parametrization(cfg.rule_param)  # the registry entry (rules.tables)
        self.out = {} if fixed_output is not None else self._init("output", cfg.output_init,
                                                                   gen, device)
        learn_rnn = cfg.learn in ("both", "rnn")
        self.rnn = self._init("rnn", cfg.rnn_init, gen, device) if learn_rnn else {}
        self.fixed_rnn, self.fixed_output = fixed_rnn, fixed_output

    def _init(self, layer: str, scale: float, gen, device) -> dict:
        params = self.spec.init(layer, self.cfg.T, hidden=self.cfg.hidden, gen=gen, scale=scale)
        return _trainable(params, device)

    def parameters(self) -> list[torch.Tensor]:
        return [*self.out.values(), *self.rnn.values()]

    def tables(self, dtype):
        """(RNN table or None, output table) as differentiable functions of the parameters."""
        cfg = self.cfg
        if self.fixed_output is not None:
            out = self.fixed_output.table()
        else:
            out = self.spec.table("output", cfg.T, self.out)
        if self.rnn:
            rnn = self.spec.table("rnn", cfg.T, self.rnn)
        else:
            rnn = None if self.fixed_rnn is None else self.fixed_rnn.table()
        dev = self.parameters()[0].device if self.parameters() else "cpu"
        return (None if rnn is None else rnn.to(dev, dtype)), out.to(dev, dtype)

    def rule(self, provenance: dict) -> Rule:
        """A frozen snapshot of the current rule."""
        cfg = self.cfg

        def snap(params, layer):
            p = {k: v.detach().to(torch.float64).cpu().clone() for k, v in params.items()}
            return LayerRule(layer, cfg.T, self.param, p, cfg.hidden if self.spec.uses_hidden else None)

        out = self.fixed_output if self.fixed_output is not None else snap(self.out, "output")
        rnn = snap(self.rnn, "rnn") if self.rnn else self.fixed_rnn
        return Rule(cfg.T, out, rnn, cfg.mode, cfg.scheme(), provenance)


def _trainable(params: dict, device) -> dict:
    return {k: v.to(device).requires_grad_(True) for k, v in params.items()}


def meta_train(cfg: MetaConfig, data, *, device="cpu", fixed_rnn: LayerRule | None = None,
               progress: bool = False, on_step=None, on_rule=None) -> MetaResult:
    """Meta-learn the rule of ``cfg`` on ``data`` (a plasticity.data.Dataset) by Adam.

    ``on_step(record)`` is called after every step (for trackers); evaluation records carry the
    test accuracy of a fresh network trained by the current rule on ``eval_train`` examples.
    With ``cfg.restarts`` > 0 a start whose rule has collapsed after ``cfg.restart_after`` steps
    (see :func:`_meta_start`) is abandoned for a new random start, at most ``restarts`` times;
    the result is the last start's, with the abandoned ones in ``collapsed_starts``. Steps given
    to ``on_step`` count on across starts. ``on_rule(step, rule)``, if given, receives a frozen
    snapshot of the rule after every ``eval_every``-th step (curves of another objective).

    With ``cfg.select_starts`` = S > 1, S independent starts (each with its own restarts) learn
    on the training pool minus its last ``select_examples`` examples; each final rule trains
    ``eval_train``-example fresh networks (3 of them) from that pool and is scored on the held-out
    examples; the best start's result is returned, every start's score in ``selection``. Steps
    given to ``on_step`` then count on across the starts too."""
    if cfg.select_starts == 1:
        return _with_restarts(cfg, data, device, fixed_rnn, progress, on_step, on_rule, 0, 0)
    n_pool = (cfg.n_train or data.x_train.shape[0]) - cfg.select_examples
    if n_pool < cfg.batch:
        raise PlasticityError(f"select_examples={cfg.select_examples} leaves {n_pool} training "
                              f"examples to meta-learn on (batch={cfg.batch}): hold out fewer")
    pool = dataclasses.replace(cfg, n_train=n_pool)
    held = (data.x_train[n_pool:n_pool + cfg.select_examples],
            data.y_train[n_pool:n_pool + cfg.select_examples])
    span = cfg.steps + cfg.restarts * cfg.restart_after
    best, scores = None, []
    for s in range(cfg.select_starts):
        res = _with_restarts(pool, data, device, fixed_rnn, progress, on_step, on_rule,
                             s * (cfg.restarts + 1), s * span)
        acc = evaluate_rule(pool, res.rule, data, device, n_train=min(cfg.eval_train, n_pool),
                            n_test=0, networks=3, test=held)
        scores.append({"start": s, "validation_accuracy": acc,
                       "restarted": len(res.collapsed_starts)})
        if best is None or acc > best[0]:
            best = (acc, s, res)
    res = best[2]
    res.selection = [{**sc, "selected": sc["start"] == best[1]} for sc in scores]
    res.rule = dataclasses.replace(res.rule, provenance={
        **res.rule.provenance, "selected_start": best[1], "config": to_dict(cfg)})
    return res


def _with_restarts(cfg: MetaConfig, data, device, fixed_rnn, progress, on_step, on_rule,
                   first: int, offset0: int) -> MetaResult:
    """One start (initialisations ``first``, ``first`` + 1, ... on restarts) with its restarts."""
    collapsed: list[dict] = []
    majority = class_majority(cfg, data)
    for attempt in range(first, first + cfg.restarts + 1):
        last = attempt == first + cfg.restarts
        offset = offset0 + (attempt - first) * cfg.restart_after

        def report(record, offset=offset, start=attempt):
            if on_step is not None:
                on_step({**record, "step": record["step"] + offset, "start": start})

        res = _meta_start(cfg, data, device, fixed_rnn, progress, report, attempt,
                          None if last else (cfg.restart_after, majority), on_rule)
        if res is not None:
            res.collapsed_starts = collapsed
            return res
        collapsed.append({"attempt": attempt, "step": cfg.restart_after})
    raise AssertionError("unreachable: the last start always runs to the end")


def class_majority(cfg: MetaConfig, data) -> float:
    """Frequency of the most common class among the evaluation's test examples."""
    y = data.y_test[:cfg.eval_examples]
    return float(torch.bincount(y).max()) / max(y.shape[0], 1)


def _meta_start(cfg: MetaConfig, data, device, fixed_rnn, progress, on_step, attempt: int,
                check: tuple[int, float] | None, on_rule=None) -> MetaResult | None:
    """One start of meta-learning; None when ``check = (step, majority)`` finds it collapsed
    (a fresh network trained by the rule at that step is within 1 point of the majority)."""
    dtype = getattr(torch, cfg.dtype)
    x_tr, y_tr, _, _ = run_tensors(cfg, data, device)
    params = RuleParams(cfg, device, fixed_rnn=fixed_rnn, attempt=attempt)
    opt = torch.optim.Adam(params.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheme = cfg.scheme()
    nets = run_networks(cfg, data, cfg.episodes, device, key="meta-networks")
    batches = episode_batches(cfg, x_tr.shape[0], device)
    provenance = {"method": "gd", "dataset": cfg.dataset, "config": to_dict(cfg)}
    result = MetaResult(params.rule(provenance))
    bar = progress_bar(cfg.steps, progress, "meta-training", unit="step")
    lives = Lives(cfg, nets)
    for step in range(1, cfg.steps + 1):
        if cfg.resample_networks:
            nets = run_networks(cfg, data, cfg.episodes, device, key=("meta-networks", step))
        idx = next(batches)
        rnn_t, out_t = params.tables(dtype)
        loss, state = episode_loss(nets, rnn_t, out_t, x_tr[idx], y_tr[idx], eta=cfg.eta,
                                   mode=cfg.mode, scheme=scheme,
                                   checkpoint_every=cfg.checkpoint_every,
                                   start=lives.start(nets), return_state=True,
                                   loss=cfg.meta_loss)
        lives.keep(state)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in params.parameters() if p.grad is not None]
        finite = bool(torch.isfinite(loss)) and all(bool(torch.isfinite(g).all()) for g in grads)
        if finite:
            opt.step()
        else:
            result.skipped += 1
        record = {"step": step, "loss": float(loss.detach()), "skipped": result.skipped}
        checking = check is not None and step == check[0]
        if on_rule is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
            on_rule(step, params.rule(provenance))
        if step % cfg.eval_every == 0 or step == cfg.steps or checking:
            rule = params.rule(provenance)
            record["accuracy"] = evaluate_rule(cfg, rule, data, device, n_train=cfg.eval_train,
                                               n_test=cfg.eval_examples, networks=1)
            if checking and record["accuracy"] < check[1] + COLLAPSE_MARGIN:
                if bar is not None:
                    bar.close()
                return None
        result.history.append(record)
        if on_step is not None:
            on_step(record)
        if bar is not None:
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    result.rule = params.rule(provenance)
    return result


def evaluate_rule(cfg, rule: Rule, data, device, *, n_train: int, n_test: int,
                  networks: int = 1, test: tuple | None = None) -> float:
    """Mean test accuracy of fresh networks of ``cfg``'s shape trained by ``rule`` (one pass);
    ``test``: other examples (x, y) to score on instead of the first ``n_test`` test examples."""
    dtype = getattr(torch, cfg.dtype)
    x_tr, y_tr = data.x_train[:n_train].to(device, dtype), data.y_train[:n_train].to(device)
    x_te, y_te = test if test is not None else (data.x_test[:n_test], data.y_test[:n_test])
    x_te, y_te = x_te.to(device, dtype), y_te.to(device)
    nets = run_networks(cfg, data, networks, device, key="eval-networks")
    order = example_orders(networks, x_tr.shape[0], 1, torch_generator(cfg.seed, "eval-order"),
                           device)
    res = train_with_rule(nets, rule, x_tr, y_tr, x_te, y_te, order=order, eta=cfg.eta,
                          eval_every=x_tr.shape[0], eval_examples=1)
    return float(np.mean(res.test_accuracy))


class Lives:
    """Truncated long episodes (``MetaConfig.horizon``): episode slot e keeps its learned weights
    across steps (detached: the gradient is truncated at the step boundary) until it has seen
    ``horizon`` examples, then restarts from fresh weights. Slots are staggered so every step
    sees networks of all ages. With horizon = 0 every step starts fresh (the paper)."""

    def __init__(self, cfg: MetaConfig, nets: Networks):
        self.cfg = cfg
        self.span = max(1, -(-cfg.horizon // cfg.batch)) if cfg.horizon > 0 else 1
        self.age = [(e * self.span) // cfg.episodes for e in range(cfg.episodes)]
        self.state = None

    def start(self, nets: Networks):
        """The (W, U) this step's episodes start from (None: fresh, the paper's default)."""
        if self.span == 1:
            return None
        if self.state is None:  # first step: every slot starts fresh; the stagger persists
            return nets.fresh_weights(self.cfg.mode)
        W, U = self.state
        reset = torch.tensor([a == 0 for a in self.age], device=W.device)
        if reset.any():
            W0, U0 = nets.fresh_weights(self.cfg.mode)
            W = torch.where(reset.view(-1, 1, 1), W0, W)
            U = torch.where(reset.view(-1, 1, 1), U0, U)
        return W, U

    def keep(self, state) -> None:
        if self.span == 1:
            return
        self.state = (state[0].detach(), state[1].detach())
        self.age = [(a + 1) % self.span for a in self.age]


def episode_batches(cfg: MetaConfig, n: int, device):
    """Endless [E, B] index batches: shuffled passes over the training set, seeded."""
    need = cfg.episodes * cfg.batch
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "meta-batches"))
    buf = torch.empty(0, dtype=torch.int64)
    while True:
        while buf.numel() < need:
            buf = torch.cat([buf, torch.randperm(n, generator=gen)])
        idx, buf = buf[:need], buf[need:]
        yield idx.view(cfg.episodes, cfg.batch).to(device)

