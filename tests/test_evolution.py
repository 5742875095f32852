"""Evolution (docs/paper.md 6.6): the allele model, GA/ES, the population evaluator, the driver's
determinism, resume, and the CLI's one-line errors. Ray tests: tests/test_evolution_ray.py."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from plasticity.cli import main
from plasticity.commands import config_commands as all_commands
from plasticity.data import load_dataset
from plasticity.evolution.config import EvolutionConfig
from plasticity.evolution.driver import CHECKPOINT, run_evolution
from plasticity.evolution.evaluate import PopulationEvaluator, RuleSpace, generation_batches
from plasticity.evolution.genetics import GeneticFinite, GeneticInfinite, gene_map
from plasticity.evolution.strategies import ES, GA, STRATEGIES, centred_ranks
from plasticity.evolution.theory import FORMS, allele_gradient, predicted_step
from plasticity.meta import episode_batches, episode_loss
from plasticity.rules import Scheme
from registry_checks import check_strategy

TINY = dict(n_train=300, n_test=200, neurons=20, k=10, episodes=2, batch=10, population=6,
            generations=4)


def tiny(**kw) -> EvolutionConfig:
    genetic = {"genes": 8} if kw.get("strategy", "genetic") == "genetic" else {}  # its own knob
    return EvolutionConfig(**{**TINY, **genetic, **kw})


TARGET = np.array([-1.0, 1.0, 1.5, -0.5])


def quadratic(c: np.ndarray) -> np.ndarray:
    """A smooth test loss with its minimum at TARGET: [n, P] -> [n]."""
    return 0.5 * ((c - TARGET) ** 2).sum(1)


def evolve_quadratic(strategy, generations: int) -> None:
    for g in range(1, generations + 1):
        members = strategy.ask(g)
        strategy.tell(g, members, quadratic(members))


@pytest.mark.parametrize("make, kw, gens", [
    (GA, dict(strategy="ga", population=20, sigma=0.2), 40),
    (ES, dict(strategy="es", population=20, sigma=0.2, lr=0.1), 60),
    (GeneticFinite, dict(strategy="genetic", population=200, theta=0.3, genes=20, eps=0.15), 40),
    (GeneticInfinite, dict(strategy="genetic", infinite=True, theta=0.3, genes=20, eps=0.15), 40),
    (GeneticInfinite, dict(strategy="genetic", infinite=True, theta=0.3, genes=20, eps=0.15,
                           sharing="random"), 40),
])
def test_strategies_minimise_a_smooth_loss(make, kw, gens):
    start = np.zeros(4)
    strat = make(tiny(**kw), start)
    before = quadratic(strat.center()[None])[0]
    evolve_quadratic(strat, gens)
    after = quadratic(strat.center()[None])[0]
    assert after < 0.25 * before, (before, after)


def test_genetic_start_is_the_gd_start_and_mean_phenotype_is_exact():
    start = np.array([0.3, -1.2, 0.0, 2.0])
    strat = GeneticInfinite(tiny(genes=10, eps=0.25), start)
    assert strat.start_error < 1e-12
    np.testing.assert_allclose(strat.center(), start, atol=1e-12)
    M = gene_map(4, 10, "random", seed=3)
    assert (np.abs(M).sum(1) == 10).all() and set(np.unique(M)) <= {-1.0, 0.0, 1.0}


def test_infinite_selection_follows_the_replicator_form_not_the_printed_one():
    """One generation on a smooth loss: x' - x matches theta x(1-x) dL/dx up to a relative error
    that shrinks with theta (it is the 1 / (1 - theta Lbar) normaliser); the (2-2x) form is off by
    a factor of order 1 / x at every theta and eps."""
    start = np.array([0.4, -0.2, 0.6, 0.1])
    errors = {}
    for theta in (0.1, 0.01):
        for eps in (0.1, 0.01):
            strat = GeneticInfinite(tiny(theta=theta, eps=eps, genes=5), start * 2.5 * eps)
            x = strat.x.copy()
            grad_x = allele_gradient(strat, strat.center() - TARGET)
            members = strat.ask(1)
            strat.tell(1, members, quadratic(members))
            dx = strat.x - x
            errors[theta, eps] = {f: np.linalg.norm(dx - (predicted_step(x, grad_x, theta, f) - x))
                                  / np.linalg.norm(dx) for f in FORMS}
    assert all(e["replicator"] < 0.35 and e["paper"] > 1.0 for e in errors.values()), errors
    for eps in (0.1, 0.01):
        assert errors[0.01, eps]["replicator"] < 0.15 * errors[0.1, eps]["replicator"], errors


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_keeps_the_protocol(name, halfspace, tmp_path):
    """Every registry entry (registry_checks.check_strategy): ask / tell / state_dict, its
    fields, a 2-generation run."""
    check_strategy(name, halfspace, tmp_path)


def test_a_field_of_another_strategy_is_one_line_naming_field_strategy_and_fix():
    from plasticity import PlasticityError

    with pytest.raises(PlasticityError) as info:
        tiny(strategy="genetic", sigma=0.3)
    users = [n for n, spec in STRATEGIES.items() if "sigma" in spec.fields]
    assert len(users) >= 2
    assert str(info.value) == (f"sigma applies to {', '.join(users)}; strategy=genetic does not use "
                               f"it: drop it (default 0.1) or choose strategy={'|'.join(users)}")
    with pytest.raises(PlasticityError, match="^infinite applies to genetic; strategy=es does not"):
        tiny(strategy="es", infinite=True)
    assert tiny(strategy="es", sigma=0.3).sigma == 0.3  # its own field
    assert tiny(strategy="ga", infinite=False).strategy == "ga"  # a default value is fine


def test_centred_ranks():
    np.testing.assert_allclose(centred_ranks(np.array([3.0, 1.0, 2.0])), [0.5, -0.5, 0.0])


@pytest.fixture(scope="module")
def halfspace():
    return load_dataset("halfspace")


def test_population_losses_are_the_meta_learning_loss(halfspace):
    """Member losses (one batched computation) equal meta.episode_loss of each rule alone, and
    the gradient is GD's meta-gradient of the same objective."""
    cfg = tiny(weight_decay=0.05)
    meta = cfg.meta_config()
    ev = PopulationEvaluator(meta, halfspace)
    idx = next(episode_batches(meta, 300, "cpu"))
    assert torch.equal(idx, next(generation_batches(meta, 300)))
    coeffs = np.random.default_rng(0).normal(size=(5, 4))
    batched = ev.losses(coeffs, idx.numpy())
    for i, c in enumerate(coeffs):
        tab = torch.tensor(c, dtype=torch.float32).view(2, 2)
        alone = episode_loss(ev.nets, None, tab, ev.x[idx], ev.y[idx], eta=meta.eta,
                             mode="additive", scheme=Scheme())
        assert batched[i] == pytest.approx(float(alone) + 0.025 * (c**2).sum(), rel=1e-5)
    loss, grad = ev.gradient(coeffs[0], idx.numpy())
    tab = torch.tensor(coeffs[0], dtype=torch.float32).view(2, 2).requires_grad_(True)
    ref = episode_loss(ev.nets, None, tab, ev.x[idx], ev.y[idx], eta=meta.eta, mode="additive",
                       scheme=Scheme()) + 0.025 * (tab**2).sum()
    ref.backward()
    np.testing.assert_allclose(grad, tab.grad.view(-1).numpy(), rtol=1e-4, atol=1e-6)
    assert loss == pytest.approx(batched[0], rel=1e-6)


def test_rule_space_start_is_gd_start():
    from plasticity.meta import RuleParams

    meta = tiny(learn="both", T=2).meta_config()
    space = RuleSpace(meta)
    c = space.initial()
    rnn, out = RuleParams(meta, "cpu").tables(torch.float64)
    assert c.shape == (4 * 2 + 16,)
    rule = space.rule(c, {})
    assert torch.equal(rule.output.table(), out.detach())
    assert torch.equal(rule.rnn.table(), rnn.detach())


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_resume_after_a_stop_equals_an_uninterrupted_run(strategy, halfspace, tmp_path):
    cfg = tiny(strategy=strategy)
    whole = run_evolution(cfg, halfspace, out=tmp_path / "a")
    run_evolution(cfg, halfspace, out=tmp_path / "b", stop_after=2)
    assert json.loads((tmp_path / "b" / CHECKPOINT).read_text())["generation"] == 2
    resumed = run_evolution(cfg, halfspace, out=tmp_path / "b", resume=True)
    np.testing.assert_array_equal(whole.final, resumed.final)
    strip = [{k: v for k, v in h.items() if "seconds" not in k} for h in whole.history]
    assert strip == [{k: v for k, v in h.items() if "seconds" not in k} for h in resumed.history]
    a = json.loads((tmp_path / "a" / CHECKPOINT).read_text())["state"]
    b = json.loads((tmp_path / "b" / CHECKPOINT).read_text())["state"]
    assert a == b


def test_genetic_selection_lowers_the_loss_on_halfspace(halfspace):
    cfg = tiny(strategy="genetic", infinite=True, theta=0.2, generations=10, batch=30,
               neurons=100, k=50, n_train=1000)
    run = run_evolution(cfg, halfspace)
    first, last = run.history[0]["loss_center"], run.history[-1]["loss_center"]
    assert last < 0.5 * first
    assert not np.array_equal(run.start, run.final)


def in_process(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return exc.value.code, capsys.readouterr()


@pytest.mark.parametrize("sets, needle", [
    (["population=1"], "population=1"),
    (["eps=0"], "eps=0"),
    (["eps=-0.1"], "eps=-0.1"),
    (["theta=0"], "theta=0"),
    (["theta=-1"], "theta=-1"),
    (["strategy=cmaes"], "strategy='cmaes'"),
    (["strategy=es", "population=5"], "even population"),
    (["learn=both"], "T >= 2"),
])
def test_bad_input_is_one_line_exit_2(sets, needle, capsys, tmp_path):
    args = [x for s in sets for x in ("--set", s)]
    code, cap = in_process(capsys, "evolve", "--preset", "smoke", "--out", str(tmp_path), *args)
    assert code == 2
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], cap.err


@pytest.mark.parametrize("command, sets, needle", [
    ("evolve-theory", ["thetas=0.1,abc"], "thetas"),
    ("evolve-theory", ["epss=0,0.1"], "epss"),
    ("compare", ["seeds=0"], "seeds=0"),
    ("evolve", ["strategy=ga", "truncation=0"], "truncation=0"),
    ("evolve", ["truncation=0.5"], "truncation applies to ga; strategy=genetic does not use it"),
    ("evolve", ["workers=-1"], "workers=-1"),
])
def test_other_bad_input_is_one_line_exit_2(command, sets, needle, capsys, tmp_path):
    args = [x for s in sets for x in ("--set", s)]
    code, cap = in_process(capsys, command, "--preset", "smoke", "--out", str(tmp_path), *args)
    assert code == 2 and needle in cap.err and len(cap.err.strip().splitlines()) == 1, cap.err


def test_resume_without_a_checkpoint_is_one_line_exit_2(capsys, tmp_path):
    code, cap = in_process(capsys, "evolve", "--preset", "smoke", "--out", str(tmp_path / "none"),
                           "--resume")
    assert code == 2 and "no checkpoint.json" in cap.err


def test_evolve_cli_writes_rule_checkpoint_and_events(capsys, tmp_path):
    code, cap = in_process(capsys, "evolve", "--preset", "smoke", "--out", str(tmp_path),
                           "--json", "--no-progress", "--set", "strategy=ga")
    assert code == 0
    result = json.loads(cap.out)
    rule = json.loads((tmp_path / "rule.json").read_text())
    assert rule["provenance"]["method"] == "ga" and rule["provenance"]["dataset"] == "halfspace"
    smoke = all_commands()["evolve"].presets["smoke"]
    assert rule["provenance"]["seed"] == 0
    assert rule["provenance"]["network"]["neurons"] == smoke["neurons"]
    assert result["generations"] == smoke["generations"] and 0.0 <= result["test_accuracy"] <= 1.0
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    gens = [e for e in events if e["event"] == "metrics" and e["step"] is not None]
    assert [e["step"] for e in gens] == list(range(1, smoke["generations"] + 1))
    assert {"evolution/loss_best", "evolution/loss_mean", "evolution/loss_std"} <= set(
        gens[0]["metrics"])
    # resuming a finished run with a changed setting is refused in one line
    code, cap = in_process(capsys, "evolve", "--preset", "smoke", "--out", str(tmp_path),
                           "--resume", "--set", "strategy=ga", "--set", "sigma=0.5")
    assert code == 2 and "sigma" in cap.err and len(cap.err.strip().splitlines()) == 1
    # ... and with more generations it continues from the checkpoint
    more = smoke["generations"] + 2
    code, cap = in_process(capsys, "evolve", "--preset", "smoke", "--out", str(tmp_path),
                           "--resume", "--json", "--set", "strategy=ga", "--set", f"generations={more}")
    assert code == 0 and json.loads(cap.out)["generations"] == more


def test_compare_spends_equal_inner_loop_examples(capsys, tmp_path):
    code, cap = in_process(capsys, "compare", "--preset", "smoke", "--out", str(tmp_path),
                           "--json", "--no-progress")
    assert code == 0
    run = json.loads(cap.out)["runs"][0]
    assert run["gd"]["examples"] == run["evolution"]["examples"]
    # the same start rule on the same first batch: GD's first loss is evolution's first
    assert run["gd"]["curve"][0]["loss"] == pytest.approx(
        run["evolution"]["curve"][0]["loss_task"], rel=1e-5)
    assert (tmp_path / "report.md").read_text().count("| 0 | genetic |") == 1


def test_theory_sweep_smoke(capsys, tmp_path):
    code, cap = in_process(capsys, "evolve-theory", "--preset", "smoke", "--out", str(tmp_path),
                           "--json")
    assert code == 0
    rows = json.loads(cap.out)["rows"]
    thetas = all_commands()["evolve-theory"].presets["smoke"]["thetas"]
    assert [r["theta"] for r in rows] == [float(t) for t in thetas.split(",")]
    assert all(set(r["step_error"]) == set(FORMS) for r in rows)


def test_finite_population_is_deterministic_per_seed(halfspace):
    a = run_evolution(tiny(), halfspace)
    b = run_evolution(tiny(), halfspace)
    c = run_evolution(dataclasses.replace(tiny(), seed=1), halfspace)
    np.testing.assert_array_equal(a.final, b.final)
    assert not np.array_equal(a.final, c.final)


class _ExplodingPool:
    """In-process losses, except that member 0 of every generation 'explodes' (NaN) and member 1
    overflows (inf): what an unstable rule does to the unrolled loss."""

    def __init__(self, cfg, data):
        from plasticity.evolution.driver import make_pool

        self.inner = make_pool(cfg, data, "cpu")

    def losses(self, coeffs, idx, generation=0):
        out = np.array(self.inner.losses(coeffs, idx, generation), dtype=np.float64)
        out[0], out[1] = np.nan, np.inf
        return out


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_exploding_members_are_contained(halfspace, strategy):
    """Non-finite losses never become the best, the mean or the final rule; they are counted."""
    cfg = tiny(strategy=strategy)
    run = run_evolution(cfg, halfspace, pool=_ExplodingPool(cfg, halfspace))
    assert np.isfinite(run.final).all() and run.rule.output.table().isfinite().all()
    for rec in run.history:
        assert rec["nonfinite"] == 2
        assert np.isfinite([rec["loss_best"], rec["loss_mean"], rec["loss_std"]]).all()


def test_every_member_exploding_is_a_one_line_error(halfspace):
    from plasticity import PlasticityError
    from plasticity.evolution.driver import contain

    with pytest.raises(PlasticityError, match="non-finite losses at generation 3"):
        contain(np.array([np.nan, np.inf, 1.0]), 3)  # the current rule (last) exploded
    with pytest.raises(PlasticityError):
        contain(np.array([np.nan, np.nan, 1.0]), 3)  # every member exploded
    np.testing.assert_array_equal(contain(np.array([np.nan, 2.0, 1.0]), 3), [np.inf, 2.0, 1.0])


def test_compare_logs_one_child_run_per_method_with_shared_metric_names(capsys, tmp_path):
    """The UI overlays evolution and GD on one chart: a child run per (seed, method), each with
    the metric ``loss`` against inner-loop examples and ``test_accuracy``."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code, cap = in_process(capsys, "compare", "--preset", "smoke", "--set", "seeds=2", "--out",
                           str(tmp_path / "c"), "--json", "--no-progress", "--tracking-uri", uri)
    assert code == 0, cap.err
    res = json.loads(cap.out)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("plasticity").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert res["method_runs"] == len(children) == 4
    assert sorted((c.data.tags["compare.method"], c.data.tags["compare.seed"]) for c in children) == [
        ("evolution", "0"), ("evolution", "1"), ("gd", "0"), ("gd", "1")]
    for c in children:
        assert {"loss", "test_accuracy"} <= set(c.data.metrics)
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "loss")]
        assert steps == sorted(steps) and steps[-1] > 0  # against inner-loop examples
