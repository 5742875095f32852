"""The compiled one-pass update (plasticity.kernels) against the torch form it replaces."""

from __future__ import annotations

import pytest
import torch

from plasticity import kernels
from plasticity.learning import RuleLearner, example_orders
from plasticity.network import make_networks
from plasticity.rules import LayerRule, Rule
from plasticity.rules.classic import perceptron
from plasticity.seeding import torch_generator

needs_kernel = pytest.mark.skipif(kernels.library() is None,
                                  reason="no C compiler or no AVX2: the torch form runs")


def torch_form(W, graph, tt, hist, live, mult):
    """The update as two torch passes (the form in RuleLearner without the kernel)."""
    n, V = hist.shape
    S = tt.shape[-1]
    P = tt[hist] if tt.dim() == 2 else tt[torch.arange(n).unsqueeze(1), hist]
    Q = (hist.unsqueeze(1) == torch.arange(S).view(1, -1, 1)).to(W.dtype)
    if mult:
        if live is not None:
            P = torch.where(live.view(n, 1, 1), P, 1.0)
        W.mul_(torch.bmm(P, Q))
    else:
        if live is not None:
            P = P * live.view(n, 1, 1)
        W.baddbmm_(P, Q)
        W.mul_(graph)


@needs_kernel
@pytest.mark.parametrize("T", [1, 2, 3])
@pytest.mark.parametrize("mult", [False, True])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("partial", [False, True])
def test_kernel_equals_the_torch_form(T, mult, shared, partial) -> None:
    g = torch.Generator().manual_seed(T * 8 + 4 * mult + 2 * shared + partial)
    n, V, S = 3, 37, 2**T  # V = 37: the 8-wide loop and its scalar tail
    graph = (torch.rand(n, V, V, generator=g) < 0.5).float()
    W = (torch.randn(n, V, V, generator=g) * graph).contiguous()
    tt = torch.randn(*(() if shared else (n,)), S, S, generator=g) * 0.1 + (1.0 if mult else 0.0)
    hist = torch.randint(0, S, (n, V), generator=g)
    live = torch.tensor([True, False, True]) if partial else None
    ref = W.clone()
    torch_form(ref, graph, tt, hist, live, mult)
    kernels.rule_update(W, graph.to(torch.uint8), kernels.pad_tables(tt),
                        hist.to(torch.uint8).contiguous(),
                        None if live is None else live.to(torch.uint8), mult)
    assert torch.equal(W, ref)
    if partial:  # the network left out is untouched
        assert not torch.equal(ref[0], W[0].new_zeros(V, V))


def _learn(T: int, mode: str, n: int, per_network: bool, kernel: bool, monkeypatch):
    monkeypatch.setenv("PLASTICITY_KERNELS", "on" if kernel else "off")
    g = torch.Generator().manual_seed(7)
    x = torch.randn(300, 20, generator=g)
    y = (x[:, :4]).argmax(1)
    nets = make_networks(n, 20, 4, neurons=45, k=20, p=0.5, T=T, seed=3)
    S = 2**T
    rnn = torch.randn(S, S, generator=g, dtype=torch.float64) * 0.05
    rule = Rule(T, perceptron(T), LayerRule.from_table("rnn", T, rnn), mode=mode)
    tables = None
    if per_network:  # each network its own RNN table (a population)
        out = rule.tables(dtype=torch.float32)[1]
        tables = (torch.randn(n, S, S, generator=g) * 0.05, out.expand(n, S, 2).clone())
    learner = RuleLearner(nets, rule, 0.01, tables=tables)
    assert learner.compiled_update == kernel
    order = example_orders(n, 300, 2, torch_generator(1, "kernel-test"))
    learner.learn(x, y, order)
    return learner


@needs_kernel
@pytest.mark.parametrize("T,mode,n,per_network", [
    (3, "additive", 1, False), (3, "additive", 4, False), (2, "multiplicative", 3, False),
    (3, "additive", 4, True), (1, "additive", 2, False)])
def test_learning_with_the_kernel_equals_learning_without(T, mode, n, per_network,
                                                          monkeypatch) -> None:
    a = _learn(T, mode, n, per_network, True, monkeypatch)
    b = _learn(T, mode, n, per_network, False, monkeypatch)
    assert torch.equal(a.updates, b.updates) and int(a.updates.sum()) > 20
    assert torch.equal(a.W, b.W) and torch.equal(a.U, b.U)


def test_no_compiler_falls_back_to_the_torch_form(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setenv("PLASTICITY_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert kernels.library() is None
    W = torch.zeros(1, 10, 10)
    assert not kernels.usable(W, 8)
    with pytest.raises(RuntimeError, match="unavailable"):
        kernels.rule_update(W, torch.ones(1, 10, 10, dtype=torch.uint8),
                            kernels.pad_tables(torch.zeros(2, 2)),
                            torch.zeros(1, 10, dtype=torch.uint8), None, False)
    monkeypatch.setenv("PLASTICITY_KERNELS", "off")
    assert kernels.library() is None


def test_kernel_is_only_for_cpu_float32_and_small_tables() -> None:
    assert not kernels.usable(torch.zeros(1, 4, 4, dtype=torch.float64), 8)
    assert not kernels.usable(torch.zeros(1, 4, 4), 16)


@needs_kernel
def test_processes_compiling_at_once_all_get_a_working_kernel(tmp_path) -> None:
    """Four fresh interpreters compile into one empty cache at the same moment: each writes a
    temporary file and renames it into place, so every one loads a whole library."""
    import os
    import subprocess
    import sys

    code = ("import torch; from plasticity import kernels; "
            "W = torch.zeros(1, 9, 9); "
            "kernels.rule_update(W, torch.ones(1, 9, 9, dtype=torch.uint8), "
            "kernels.pad_tables(torch.full((2, 2), 0.5)), torch.ones(1, 9, dtype=torch.uint8), "
            "None, False); print(float(W.sum()))")
    env = {**os.environ, "PLASTICITY_KERNEL_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e for _, e in outs]
    assert [o.strip() for o, _ in outs] == ["40.5"] * 4  # 81 entries + 0.5 each
    assert len(list((tmp_path / "cache").glob("*.so"))) == 1
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # no temporary left
