"""Configuration: small frozen dataclasses and one strict parser (each command's presets live in
its module of :mod:`plasticity.commands`).

Field names are the CLI's ``--set`` keys, the Tune search-space keys and the MLflow param names.
Every command's config is flat so ``--set neurons=1000`` means the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, fields

from . import PlasticityError
from .checks import check_choice, check_positive
from .network import FIRINGS, INPUT_WEIGHTS, RECURRENCES, check_network_shape
from .rules import Scheme, check_margin
from .rules.tables import MODES, OUTPUT_ROWS, PARAMETRIZATIONS, UPDATE_ON

DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Common:
    """Fields shared by every command: data, network shape, rule application."""

    seed: int = 0  # root seed of the run: networks, example orders, rule init
    dataset: str = "halfspace"  # halfspace | relu1 | relu2 | rnn | mnist | fashion_mnist
    data_seed: int = 0  # seed of the synthetic task (the same task across run seeds)
    inputs: str = "normal"  # synthetic inputs: normal (paper) | uniform [-1, 1] (reference code)
    n_train: int = 0  # training examples used (0 = all)
    n_test: int = 0  # test examples used for final accuracies (0 = all)
    neurons: int = 100  # |V|, hidden neurons in the random graph
    k: int = 50  # cap: neurons kept (firing) per round
    p: float = 0.5  # edge probability of the graph and input masks
    T: int = 1  # firing rounds (T = 1: feedforward)
    recurrence: str = "paper"  # paper: cap(ReLU(Wh + Ax)) | code: cap(ReLU(W(h + Ax)))
    firing: str = "positive"  # positive: kept by the cap and > 0 | topk: kept by the cap (code)
    input_weights: str = "normal"  # normal: A ~ N(0,1) | ones (Table 2's starred row)
    dtype: str = "float32"  # float32 | float64
    eta: float = 0.01  # plasticity step size

    def __post_init__(self):
        check_network_shape(neurons=self.neurons, k=self.k, p=self.p, T=self.T)
        check_choice("inputs", self.inputs, ("normal", "uniform"))
        check_choice("recurrence", self.recurrence, RECURRENCES)
        check_choice("firing", self.firing, FIRINGS)
        check_choice("input_weights", self.input_weights, INPUT_WEIGHTS)
        check_choice("dtype", self.dtype, DTYPES)
        check_positive(self, "eta")
        check_positive(self, "n_train", "n_test", allow_zero=True)


@dataclass(frozen=True)
class TrainConfig(Common):
    """Rule-based training (no backprop) of fresh networks by a frozen rule."""

    rule: str = "perceptron"  # classic (perceptron, winnow, hebb+perceptron), shipped (fig3_T1, fig3_T3),
    #                           a rule JSON path or models:/NAME/VERSION
    passes: int = 1  # passes over the training examples
    networks: int = 1  # independent networks (own graph, weights, example order) batched
    eval_every: int = 500  # examples between points of the accuracy curve
    eval_examples: int = 1000  # test examples per curve point (final accuracy uses n_test)
    chunk: int = 0  # examples run ahead per forward pass (0 = adaptive)
    update_on: str = "rule"  # rule: the rule's own scheme | mistakes | all examples | margin |
    #                          margin_rel (a mistake or a margin below gamma: docs/rules.md)
    output_rows: str = "rule"  # rule: the rule's own scheme | label_pred | all output rows
    gamma: float = 0.0  # the margin of update_on=margin | margin_rel (0 otherwise)

    def __post_init__(self):
        super().__post_init__()
        check_choice("update_on", self.update_on, ("rule", *UPDATE_ON))
        check_choice("output_rows", self.output_rows, ("rule", *OUTPUT_ROWS))
        check_margin("mistakes" if self.update_on == "rule" else self.update_on, self.gamma)
        check_positive(self, "passes", "networks", "eval_every", "eval_examples")
        check_positive(self, "chunk", allow_zero=True)


@dataclass(frozen=True)
class RuleSpaceConfig(Common):
    """The rule space and its start, shared by meta-learning GD and evolution: which tables are
    learned, how they are applied, and the episodes (E networks x B examples) a rule is scored on."""

    learn: str = "output"  # output rule alone | both: RNN + output jointly | rnn: RNN rule, perceptron output
    mode: str = "additive"  # additive | multiplicative rule application
    update_on: str = "mistakes"  # mistakes | all examples | margin | margin_rel (a mistake or a
    #                              margin below gamma; raw logits or relative to their spread)
    output_rows: str = "label_pred"  # label_pred | all output rows
    gamma: float = 0.0  # the margin of update_on=margin | margin_rel (0 otherwise)
    rnn_init: float = 1.0  # std of the initial RNN rule table (paper: N(0,1))
    output_init: float = 0.0  # std of the initial output rule table (paper: zeros)
    episodes: int = 16  # E: episodes per step, one batched computation
    batch: int = 100  # B: examples per episode
    lr: float = 1e-2  # Adam learning rate (GD; the ES mean)
    weight_decay: float = 0.01  # Adam (L2) weight decay

    def __post_init__(self):
        super().__post_init__()
        check_choice("learn", self.learn, ("output", "both", "rnn"))
        check_choice("mode", self.mode, MODES)
        check_choice("update_on", self.update_on, UPDATE_ON)
        check_choice("output_rows", self.output_rows, OUTPUT_ROWS)
        check_margin(self.update_on, self.gamma)
        check_positive(self, "episodes", "batch", "lr")
        check_positive(self, "weight_decay", "rnn_init", "output_init", allow_zero=True)
        if self.learn != "output" and self.T < 2:
            raise PlasticityError(f"learn={self.learn} needs T >= 2: with T=1 there is no "
                                  "recurrent step")

    def scheme(self):
        """The update scheme these fields name."""
        return Scheme(self.update_on, self.output_rows, self.gamma)

    def rule_space(self) -> dict:
        """The fields of :class:`RuleSpaceConfig` (with :class:`Common`'s): what GD and evolution
        share."""
        return {f.name: getattr(self, f.name) for f in fields(RuleSpaceConfig)}


@dataclass(frozen=True)
class MetaConfig(RuleSpaceConfig):
    """Meta-learning rules by GD through the unrolled rule-based learning (docs/meta-learning.md)."""

    rule_param: str = "table"  # table | mlp
    meta_loss: str = "logits"  # logits: CE on logits | softmax: CE on softmax outputs (the code)
    hidden: int = 10  # MLP rule hidden units
    steps: int = 200  # outer optimizer steps
    checkpoint_every: int = 0  # recompute-in-backward segment length (0 = store everything)
    horizon: int = 0  # examples an episode's network keeps learning across steps, gradient
    #                   truncated at each step (0 = fresh weights every step, the paper)
    resample_networks: bool = False  # draw new networks every step (else E fixed networks)
    eval_every: int = 50  # steps between evaluations by rule-based training
    eval_train: int = 2000  # training examples for those evaluations
    eval_examples: int = 1000  # test examples for those evaluations
    restarts: int = 0  # new random starts allowed when a start collapses (docs/dynamics.md)
    restart_after: int = 50  # steps after which a start is checked for collapse (accuracy of a
    #                          fresh network within 1 point of the majority class: restart)
    select_starts: int = 1  # independent random starts; the rule that trains fresh networks best
    #                         on the held-out examples is kept (never the test set)
    select_examples: int = 1000  # training examples held out from meta-learning to select on

    def __post_init__(self):
        super().__post_init__()
        check_choice("rule_param", self.rule_param, PARAMETRIZATIONS)
        check_choice("meta_loss", self.meta_loss, ("logits", "softmax"))
        check_positive(self, "hidden", "steps", "eval_every", "eval_train", "eval_examples",
                       "restart_after", "select_starts", "select_examples")
        check_positive(self, "restarts", "checkpoint_every", "horizon", allow_zero=True)
        if self.horizon > 0 and self.resample_networks:
            raise PlasticityError("horizon > 0 keeps networks across steps: it cannot be combined "
                                  "with resample_networks=true")


@dataclass(frozen=True)
class BaselineConfig(Common):
    """The same networks trained by backprop (docs/paper.md Fig. 2 and 'GD, T=3')."""

    method: str = "output"  # output: output layer only | full: recurrent and output weights
    batch: int = 1  # minibatch size
    lr: float = 1e-2  # Adam learning rate
    passes: int = 1  # passes over the training examples
    networks: int = 1  # independent networks batched
    eval_every: int = 500  # examples between curve points
    eval_examples: int = 1000  # test examples per curve point

    def __post_init__(self):
        super().__post_init__()
        check_choice("method", self.method, ("output", "full"))
        check_positive(self, "batch", "lr", "passes", "networks", "eval_every", "eval_examples")


def field_docs(cls) -> dict[str, str]:
    """``{field: one-line doc}`` of a config class, from the comment after each field (and the
    indented comment lines that continue it) in the class bodies along its MRO."""
    import inspect
    import io
    import tokenize

    docs: dict[str, str] = {}
    for klass in reversed([c for c in cls.__mro__ if dataclasses.is_dataclass(c)]):
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):  # pragma: no cover - source not available
            continue
        last, depth = None, 0
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
            elif tok.type == tokenize.NAME and depth == 0 and tok.start[1] == 4 and tok.line[
                    4:].lstrip().startswith(tok.string) and ":" in tok.line and "def " not in tok.line:
                name = tok.line.split(":")[0].strip()
                last = name if name in klass.__dataclass_fields__ else None
            elif tok.type == tokenize.COMMENT and last is not None:
                text = tok.string.lstrip("#").strip()
                if tok.line.strip().startswith("#"):  # a continuation line
                    docs[last] = f"{docs.get(last, '')} {text}".strip()
                else:
                    docs[last] = text
            elif tok.type == tokenize.NAME and tok.string == "def":
                last = None
    return docs


def field_names(cls) -> list[str]:
    """The config keys of a config class."""
    return [f.name for f in fields(cls)]


def _convert(name: str, value, typ):
    if typ is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise PlasticityError(f"{name}={value!r} is not a boolean (use true or false)")
    if typ in (int, float):
        if isinstance(value, bool):
            raise PlasticityError(f"{name}={value!r} must be a number")
        try:
            if typ is int:
                f = float(value)
                if f != int(f):
                    raise ValueError
                return int(f)
            out = float(value)
        except (TypeError, ValueError, OverflowError):
            raise PlasticityError(f"{name}={value!r} is not a valid {typ.__name__}") from None
        if out != out or out in (float("inf"), float("-inf")):
            raise PlasticityError(f"{name}={value!r} must be finite")
        return out
    return str(value)


def from_dict(cls, d: dict, where: str = "config"):
    """Build ``cls`` from a dict; unknown keys and bad values are one-line PlasticityErrors."""
    hints = typing.get_type_hints(cls)
    names = field_names(cls)
    unknown = [k for k in d if k not in names]
    if unknown:
        raise PlasticityError(
            f"unknown {where} key {unknown[0]!r}: valid keys are {', '.join(sorted(names))}")
    try:
        return cls(**{k: _convert(k, v, hints[k]) for k, v in d.items()})
    except TypeError as exc:  # pragma: no cover - guarded by the checks above
        raise PlasticityError(f"bad {where}: {exc}") from None


# Named dynamics (docs/dynamics.md): ``--dynamics NAME`` sets these fields of any config that has
# them (an explicit ``--set`` still wins). "engine" is every default; "reference" is the authors'
# code: W (h + A x), top-k firing with ties broken by index, CE on the softmax outputs.
DYNAMICS = {
    "engine": {"recurrence": "paper", "firing": "positive", "meta_loss": "logits"},
    "reference": {"recurrence": "code", "firing": "topk", "meta_loss": "softmax"},
}


def dynamics_sets(name: str | None, cls) -> dict[str, str]:
    """The ``--set`` fields of the named dynamics that config class ``cls`` has ({} for None)."""
    if name is None:
        return {}
    if name not in DYNAMICS:
        raise PlasticityError(f"unknown dynamics '{name}': use one of {', '.join(DYNAMICS)}")
    have = {f.name for f in fields(cls)}
    return {k: v for k, v in DYNAMICS[name].items() if k in have}


def parse_sets(items: list[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; a malformed item is an error."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PlasticityError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def to_dict(cfg) -> dict:
    """A config as a plain dict (for JSON, MLflow params, Tune)."""
    return dataclasses.asdict(cfg)


SMALL = {"neurons": 100, "k": 50}
LARGE = {"neurons": 1000, "k": 500}

def build_config(cls, command: str, preset: str | None, sets: dict, seed: int | None = None,
                 presets: dict[str, dict] | None = None):
    """Preset (if any, from ``presets``: the command's table), then ``--set`` overrides, then
    ``--seed``: the run's config."""
    d: dict = {}
    if preset is not None:
        presets = presets or {}
        if preset not in presets:
            raise PlasticityError(
                f"unknown preset '{preset}' for {command}: use one of {', '.join(presets)}")
        d.update(presets[preset])
    d.update(sets)
    if seed is not None:
        d["seed"] = seed
    return from_dict(cls, d, where=f"{command} config")
