"""``plasticity attack``: train (or load) a network, freeze it, attack it at every eps.

Test-time plasticity is off: the attacked network's weights W, U are fixed after training (by a
rule, ``train=rule``, or by GD, ``train=gd``); attacks only read gradients or outputs.
Writes ``result.json`` (curves, budgets, per-example worst case), ``network.pt`` (the frozen
network: reusable with ``load=`` or as another run's ``surrogate=``), ``curves.png``,
``examples.png`` and ``examples.json``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import PlasticityError
from ..checks import check_choice, check_positive, parse_list
from ..config import Common, to_dict
from ..files import atomic_write_text, write_json
from ..network import Networks
from ..rules import check_margin
from ..rules.tables import OUTPUT_ROWS, UPDATE_ON
from ..robustness.attacks import FrozenNet
from ..robustness.evaluate import Budget, check_attacks, diagnostics, robustness_curves
from .base import Command, rule_flag, rule_options, rule_sets

ALL_EPS = "0,0.5,1,1.5,2,2.5,3,3.5,4"  # docs/paper.md 5.4 (L2)


@dataclass(frozen=True)
class AttackConfig(Common):
    """Attack a frozen trained network (docs/paper.md 5.4, Fig. 5; Table 2's robust columns)."""

    dataset: str = "mnist"  # data set of the network (pixels clipped to [0, 1] on images)
    neurons: int = 1000  # |V|
    k: int = 500  # cap
    T: int = 3  # rounds
    train: str = "rule"  # how the network is trained: rule (no backprop) | gd
    rule: str = "perceptron"  # train=rule: a classic, shipped or JSON rule (its T must equal T)
    passes: int = 2  # passes over the training set (Table 2: 2)
    update_on: str = "rule"  # train=rule: rule (its own scheme) | mistakes | all | margin |
    #                          margin_rel (a mistake or a margin below gamma: docs/rules.md)
    output_rows: str = "rule"  # train=rule: rule (its own scheme) | label_pred | all
    gamma: float = 0.0  # the margin of update_on=margin | margin_rel (0 otherwise)
    gd_method: str = "full"  # train=gd: full (W and U through the T rounds) | output (U only)
    gd_lr: float = 1e-3  # train=gd: Adam learning rate
    gd_batch: int = 100  # train=gd: minibatch size
    load: str = ""  # a network.pt of an earlier run: attack it instead of training (shape from it)
    surrogate: str = ""  # network.pt of another run, for the 'transfer' attack
    n_attack: int = 100  # random test examples attacked (docs/paper.md 5.4: 100)
    eps: str = ALL_EPS  # radii of the threat ball, comma-separated, >= 0
    norm: str = "l2"  # threat model: l2 (the paper) | linf
    attacks: str = "paper,fgsm,pgd_linf,pgd_l2,square"  # + paper_ds, transfer, bpda, es, art_apgd_ce,
    #                                                     art_apgd_dlr, art_square, art_hsj (ATTACKS)
    steps: int = 50  # PGD steps per restart
    step_scale: float = 2.5  # PGD step size = step_scale * eps / steps
    restarts: int = 3  # PGD restarts
    paper_steps: int = 50  # the paper's attack: steps per target
    paper_alpha: float = 0.1  # the paper's attack: raw-gradient step size (not given by the paper)
    queries: int = 1000  # gradient-free random search: queries (ART Square: iterations; HSJ: per iteration)
    relax: float = 0.5  # bpda: temperature of the cap's straight-through surrogate (x the row's std)
    es_samples: int = 32  # es: antithetic pairs per step (2 x this queries per step)
    es_sigma: float = 0.5  # es: probe scale, x the radius per coordinate
    images: int = 4  # adversarial examples kept per eps for the picture

    def __post_init__(self):
        super().__post_init__()
        check_choice("train", self.train, ("rule", "gd"))
        check_choice("gd_method", self.gd_method, ("full", "output"))
        check_choice("update_on", self.update_on, ("rule", *UPDATE_ON))
        check_choice("output_rows", self.output_rows, ("rule", *OUTPUT_ROWS))
        check_margin("mistakes" if self.update_on == "rule" else self.update_on, self.gamma)
        if self.train == "gd" and (self.update_on, self.output_rows, self.gamma) != ("rule", "rule", 0):
            raise PlasticityError("update_on, output_rows and gamma apply to train=rule only "
                                  "(train is gd): drop them or use train=rule")
        check_positive(self, "passes", "gd_lr", "gd_batch", "n_attack", "steps", "step_scale",
                  "restarts", "paper_steps", "paper_alpha", "queries", "relax", "es_samples",
                  "es_sigma")
        check_positive(self, "images", allow_zero=True)
        if any(e < 0 for e in self.eps_list):
            raise PlasticityError(f"eps='{self.eps}' has a negative radius: every eps must be >= 0")
        check_attacks(self.attack_list, self.norm)

    @property
    def eps_list(self) -> list[float]:
        return parse_list("eps", self.eps, float)

    @property
    def attack_list(self) -> list[str]:
        return parse_list("attacks", self.attacks)

    def budget(self) -> Budget:
        return Budget(self.steps, self.step_scale, self.restarts, self.paper_steps,
                      self.paper_alpha, self.queries, self.relax, self.es_samples, self.es_sigma)


PRESETS = {
    "smoke": {"dataset": "mnist", "neurons": 60, "k": 30, "T": 3, "passes": 1, "n_train": 600,
              "n_test": 300, "n_attack": 20, "eps": "0,1,2", "steps": 5, "restarts": 1,
              "paper_steps": 5, "queries": 20, "images": 2},
    "quick": {"n_train": 10000, "n_test": 2000, "n_attack": 100, "eps": "0,1,2,3,4",
              "steps": 20, "restarts": 2, "paper_steps": 20, "queries": 300},
    "paper": {"n_attack": 100, "steps": 50, "restarts": 3, "paper_steps": 50, "queries": 1000},
}


def save_network(path: Path, model: FrozenNet, info: dict) -> Path:
    """The frozen network as a dict of tensors (loaded with ``weights_only=True``: no pickle code)."""
    n = model.nets
    torch.save({"A": n.A.cpu(), "graph": n.graph.cpu(), "W": model.W.cpu(), "U": model.U.cpu(),
                "k": n.k, "T": n.T, "n_classes": n.n_classes, "recurrence": n.recurrence,
                "firing": n.firing,
                "info": info}, path)
    return path


def load_network(path: str, device: str, dtype) -> tuple[FrozenNet, dict]:
    """A network saved by :func:`save_network` -> (FrozenNet, info)."""
    if not Path(path).is_file():
        raise PlasticityError(f"network file '{path}' not found: give the network.pt of an "
                              "earlier `plasticity attack` run")
    try:
        d = torch.load(path, map_location=device, weights_only=True)
    except Exception:  # noqa: BLE001 - text, a pickle of code, a truncated or foreign file
        raise PlasticityError(f"network file '{path}' is not a saved network (not a tensors-only "
                              "torch file): give the network.pt of an earlier `plasticity attack` "
                              "run") from None
    try:
        nets = Networks(d["A"].to(dtype), d["graph"].to(dtype), int(d["k"]), int(d["T"]),
                        int(d["n_classes"]), str(d["recurrence"]), str(d.get("firing", "positive")))
        return FrozenNet(nets, d["W"].to(dtype), d["U"].to(dtype)), dict(d.get("info", {}))
    except Exception as exc:  # noqa: BLE001 - tensors, but not those of a saved network
        msg = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise PlasticityError(f"network file '{path}' is not a saved network ({msg}): give the "
                              "network.pt of an earlier `plasticity attack` run") from None


def train_network(cfg: AttackConfig, data, device: str, progress: bool,
                  tracking: str | None = None) -> tuple[FrozenNet, dict]:
    """Train one network of cfg's shape on cfg.dataset (by its rule or by GD); freeze it."""
    from ..baselines import train_baseline
    from ..config import BaselineConfig, TrainConfig
    from ..experiment import run_networks
    from ..rules.refs import load_rule_ref
    from ..transfer import run_train

    shared = {k: getattr(cfg, k) for k in Common.__dataclass_fields__}
    if cfg.train == "rule":
        rule = load_rule_ref(cfg.rule, cfg.T, cfg.eta, tracking)
        rule.check_network(cfg.T)
        tc = TrainConfig(**shared, rule=cfg.rule, passes=cfg.passes, networks=1,
                         eval_every=10**9, eval_examples=1, update_on=cfg.update_on,
                         output_rows=cfg.output_rows, gamma=cfg.gamma)
        res = run_train(tc, rule, device=device, data=data, progress=progress)
        info = {"rule_provenance": rule.provenance, "updates": int(res.updates[0])}
    else:
        bc = BaselineConfig(**shared, method=cfg.gd_method, batch=cfg.gd_batch, lr=cfg.gd_lr,
                            passes=cfg.passes, networks=1, eval_every=10**9, eval_examples=1)
        res = train_baseline(bc, data, device=device, progress=progress)
        info = {}
    nets = run_networks(cfg, data, 1, device)  # the same draw as training used
    info.update(train=cfg.train, test_accuracy=float(res.test_accuracy[0]), config=to_dict(cfg))
    return FrozenNet(nets, res.W, res.U), info


def attack_handler(cfg: AttackConfig, ctx) -> dict:
    from ..data import load_dataset
    from ..data.images import IMAGE_SETS
    from ..robustness.plots import plot_curves, plot_examples
    from ..seeding import torch_generator

    t0 = time.time()
    out, device, sink = ctx.out, ctx.device, ctx.sink
    dtype = getattr(torch, cfg.dtype)
    # the networks handed in are checked before anything is trained or written
    loaded = load_network(cfg.load, device, dtype) if cfg.load else None
    surrogate = load_network(cfg.surrogate, device, dtype)[0] if cfg.surrogate else None
    data = load_dataset(cfg.dataset, data_seed=cfg.data_seed, inputs=cfg.inputs)
    if loaded is not None:
        model, info = loaded
    else:
        model, info = train_network(cfg, data, device, progress=ctx.progress, tracking=ctx.tracking)
    if model.nets.A.shape[2] != data.dim:
        raise PlasticityError(f"network input size {model.nets.A.shape[2]} does not match "
                              f"dataset {cfg.dataset} ({data.dim}): load a network of that set")
    if surrogate is not None and surrogate.nets.A.shape[2] != data.dim:
        raise PlasticityError(f"surrogate network input size {surrogate.nets.A.shape[2]} does not "
                              f"match dataset {cfg.dataset} ({data.dim}): use a network of that set")
    out.mkdir(parents=True, exist_ok=True)
    save_network(out / "network.pt", model, info)
    t_train = time.time() - t0
    how = f"loaded {cfg.load}" if cfg.load else f"trained: {cfg.train}"
    print(f"[{t_train:6.1f}s] network ready ({how}); attacking", file=sys.stderr, flush=True)
    lo, hi = (0.0, 1.0) if cfg.dataset in IMAGE_SETS else (None, None)
    gen = torch_generator(cfg.seed, "attack-subset")
    pick = torch.randperm(data.x_test.shape[0], generator=gen)[:cfg.n_attack]
    x, y = data.x_test[pick].to(device, dtype), data.y_test[pick].to(device)
    curves = robustness_curves(model, x, y, cfg.eps_list, cfg.attack_list, threat=cfg.norm,
                               budget=cfg.budget(), gen=torch_generator(cfg.seed, "attacks"),
                               lo=lo, hi=hi, surrogate=surrogate, keep=cfg.images,
                               log=ctx.progress)
    examples = curves.pop("examples")
    curves["diagnostics"] = diagnostics(model, x, y)
    n_te = cfg.n_test or data.x_test.shape[0]
    clean_full = (model.predict(data.x_test[:n_te].to(device, dtype))
                  == data.y_test[:n_te].to(device)).double().mean().item()
    for i, e in enumerate(curves["eps"]):
        m = {f"attack/{a}/eps_{e:g}": v[i] for a, v in curves["raw"].items()}
        m[f"attack/worst/eps_{e:g}"] = curves["worst"][i]
        sink.metrics(m)
    sink.metrics({"attack/clean_test_accuracy": clean_full})
    result = {"command": "attack", "config": to_dict(cfg), "network": info,
              "test_plasticity": "off (weights frozen after training)",
              "budget": to_dict(cfg.budget()), "clean_test_accuracy": clean_full,
              "attacked_examples": pick.tolist(), **curves,
              "seconds": time.time() - t0, "train_seconds": t_train}
    write_json(out / "result.json", result)
    write_json(out / "examples.json", {"eps": curves["eps"], "examples": examples})
    atomic_write_text(out / "report.md", _report(result))
    result["report"] = str(out / "report.md")
    for p in (plot_curves(result, out / "curves.png"),
              plot_examples(curves["eps"], examples, out / "examples.png")):
        if p is not None:
            sink.artifact(p)
    for name in ("result.json", "examples.json", "network.pt", "report.md"):
        sink.artifact(out / name)
    return result


def _report(result: dict) -> str:
    """Markdown: accuracy % per eps (paper's attack / worst case), every raw curve, budgets."""
    from ..robustness.plots import table

    r, eps = result, result["eps"]
    lines = [f"# Attack ({r['threat']} threat, {r['n']} test examples, seed {r['config']['seed']};"
             f" test-time plasticity off)", "", "Paper's attack / worst case of all attacks:", "",
             table({"network": r}), "| attack | " + " | ".join(f"{e:g}" for e in eps) + " |",
             "|---|" + "---|" * len(eps)]
    for a, v in r["raw"].items():
        lines.append(f"| {a} | " + " | ".join(f"{100 * x:.1f}" for x in v) + " |")
    lines += ["", f"Budgets: {r['budget']}", f"Non-monotone raw curves: {r['non_monotone'] or 'none'}",
              f"Diagnostics: {r['diagnostics']}", ""]
    return "\n".join(lines)


COMMAND = Command("attack", "attack a frozen trained network: robust accuracy against eps",
                  attack_handler, AttackConfig, PRESETS, arguments=rule_flag, options=rule_options,
                  sets_from_options=rule_sets)
