"""The four synthetic binary tasks of docs/paper.md section 4.1: halfspace, relu1, relu2 and rnn.

Each task is a random labelling function of 10-dimensional inputs (standard normal by default,
uniform [-1, 1] as the reference code's option), with 10,000 train and 10,000 test points. All
randomness comes from ``data_seed`` through :func:`plasticity.seeding.torch_generator`, keyed on the
task name, so one seed gives bit-identical data and different names or seeds give different tasks:

- the points from ``(data_seed, "data", name, inputs, "train" | "test")``;
- the labelling function from ``(data_seed, "data", name, "task", attempt)`` for attempt = 0, 1, ...:
  the first function whose rarer class is at least 10% of the TRAIN labels is kept. Random ReLU and
  RNN teachers are often lopsided (about 1 draw in 4 gives under 10%, some give a single class);
  the redraw keeps the paper's natural imbalance ("classes are unbalanced in ReLU data") but rules
  out degenerate tasks. Halfspaces through the origin are always near 50/50.

Labels are computed in float64 from the float32 points that are returned, so every stored label is
exactly the function's value at the stored point. Nothing is cached on disk; generation takes a few
tens of milliseconds per set.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from plasticity import PlasticityError
from plasticity.data.dataset import Dataset
from plasticity.seeding import torch_generator

DIM = 10
N_TRAIN = 10_000
N_TEST = 10_000
N_CLASSES = 2
INPUT_KINDS = ("normal", "uniform")

RELU_WIDTH = 1000  # hidden width of the relu1/relu2 teacher nets (PAPER 4.1)
RNN_NEURONS = 100  # |V| of the rnn teacher (PAPER 1.2)
RNN_CAP = 50  # k: neurons kept by the cap
RNN_P = 0.5  # edge probability of the input and graph masks
RNN_ROUNDS = 3  # T
RNN_INIT = 0.5  # weights and biases uniform [-RNN_INIT, RNN_INIT] (the code's full_gd init)
MIN_MINORITY = 0.25  # a drawn labelling function is redrawn if its rarer class is below this
MAX_ATTEMPTS = 100

_F64 = torch.float64
Labeller = Callable[[torch.Tensor], torch.Tensor]


def check_inputs(inputs: str) -> None:
    """Raise PlasticityError unless ``inputs`` names a known input distribution."""
    if inputs not in INPUT_KINDS:
        raise PlasticityError(f"unknown inputs {inputs!r}: choose one of {', '.join(INPUT_KINDS)}")


def _uniform(gen: torch.Generator, *shape: int, bound: float) -> torch.Tensor:
    """Uniform [-bound, bound) float64 tensor of ``shape``."""
    return (torch.rand(*shape, generator=gen, dtype=_F64) * 2.0 - 1.0) * bound


def sample_inputs(n: int, inputs: str, gen: torch.Generator, dim: int = DIM) -> torch.Tensor:
    """Points [n, dim] float32: standard normal or uniform [-1, 1]."""
    check_inputs(inputs)
    if inputs == "normal":
        x = torch.randn(n, dim, generator=gen, dtype=_F64)
    else:
        x = _uniform(gen, n, dim, bound=1.0)
    return x.to(torch.float32)


def cap(h: torch.Tensor, k: int) -> torch.Tensor:
    """k-winners-take-all on each row of h [n, m]: keep the k largest entries, zero the rest."""
    if k >= h.shape[-1]:
        return h
    values, idx = torch.topk(h, k, dim=-1)
    return torch.zeros_like(h).scatter_(-1, idx, values)


def halfspace_labeller(gen: torch.Generator, dim: int = DIM) -> Labeller:
    """Labels [w.x > 0] for a random Gaussian normal vector w [dim] (no offset)."""
    w = torch.randn(dim, generator=gen, dtype=_F64)
    return lambda x: (x @ w > 0).to(torch.int64)


def relu_labeller(gen: torch.Generator, dim: int = DIM, width: int = RELU_WIDTH) -> Labeller:
    """Argmax of a random ReLU net dim -> width -> 2, with nn.Linear's default uniform init."""
    b1, b2 = 1.0 / math.sqrt(dim), 1.0 / math.sqrt(width)
    w1, c1 = _uniform(gen, width, dim, bound=b1), _uniform(gen, width, bound=b1)
    w2, c2 = _uniform(gen, N_CLASSES, width, bound=b2), _uniform(gen, N_CLASSES, bound=b2)

    def label(x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(x @ w1.T + c1)
        return (hidden @ w2.T + c2).argmax(dim=1)

    return label


def rnn_labeller(
    gen: torch.Generator,
    dim: int = DIM,
    n_neurons: int = RNN_NEURONS,
    k: int = RNN_CAP,
    p: float = RNN_P,
    rounds: int = RNN_ROUNDS,
) -> Labeller:
    """Argmax of a random simple RNN (PAPER 1.1/1.3): h <- cap(relu(W h + A x + b)), T rounds.

    Masks: input [n_neurons, dim] and graph [n_neurons, n_neurons] Bernoulli(p), no self-loops,
    rows postsynaptic. All weights and biases uniform [-0.5, 0.5]; the readout U [2, n_neurons]
    with bias is fully connected; h starts at 0.
    """
    a_mask = torch.rand(n_neurons, dim, generator=gen, dtype=_F64) < p
    g_mask = torch.rand(n_neurons, n_neurons, generator=gen, dtype=_F64) < p
    g_mask.fill_diagonal_(False)
    a = _uniform(gen, n_neurons, dim, bound=RNN_INIT) * a_mask
    w = _uniform(gen, n_neurons, n_neurons, bound=RNN_INIT) * g_mask
    b = _uniform(gen, n_neurons, bound=RNN_INIT)
    u = _uniform(gen, N_CLASSES, n_neurons, bound=RNN_INIT)
    b_out = _uniform(gen, N_CLASSES, bound=RNN_INIT)

    def label(x: torch.Tensor) -> torch.Tensor:
        drive = x @ a.T + b
        h = torch.zeros(x.shape[0], n_neurons, dtype=_F64)
        for _ in range(rounds):
            h = cap(torch.relu(h @ w.T + drive), k)
        return (h @ u.T + b_out).argmax(dim=1)

    return label


LABELLERS: dict[str, Callable[[torch.Generator], Labeller]] = {
    "halfspace": halfspace_labeller,
    "relu1": relu_labeller,
    "relu2": relu_labeller,  # same family as relu1; the name in the seed path makes it differ
    "rnn": rnn_labeller,
}


def make_synthetic(name: str, data_seed: int = 0, inputs: str = "normal") -> Dataset:
    """Build synthetic task ``name``: x [10000, 10] float32, y [10000] int64, for train and test."""
    if name not in LABELLERS:
        raise PlasticityError(
            f"unknown synthetic dataset {name!r}: choose one of {', '.join(LABELLERS)}"
        )
    check_inputs(inputs)
    seed = int(data_seed)
    x_train = sample_inputs(N_TRAIN, inputs, torch_generator(seed, "data", name, inputs, "train"))
    x_test = sample_inputs(N_TEST, inputs, torch_generator(seed, "data", name, inputs, "test"))
    x_train64, x_test64 = x_train.to(_F64), x_test.to(_F64)
    for attempt in range(MAX_ATTEMPTS):
        labeller = LABELLERS[name](torch_generator(seed, "data", name, "task", attempt))
        y_train = labeller(x_train64)
        if minority_fraction(y_train) >= MIN_MINORITY:
            return Dataset(name, x_train, y_train, x_test, labeller(x_test64), N_CLASSES)
    raise PlasticityError(  # practically unreachable: about 1 draw in 4 is rejected
        f"no {name!r} task with a {MIN_MINORITY:.0%} minority class in {MAX_ATTEMPTS} draws "
        f"(data_seed={seed}, inputs={inputs}); try another data_seed"
    )


def minority_fraction(y: torch.Tensor) -> float:
    """Fraction of the rarest class among N_CLASSES in labels y [n] (0 if a class is absent)."""
    counts = torch.bincount(y, minlength=N_CLASSES)
    return float(counts.min()) / max(1, y.numel())
