"""Sweeps: every search space samples into a valid config; an 8-trial smoke sweep on local Ray is
one MLflow parent run with 8 complete child runs; a killed driver resumes without re-running
finished trials; bad input is one line and exit code 2 with nothing written to the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from plasticity.commands import config_commands as all_commands
from plasticity.evolution.strategies import STRATEGIES
from plasticity.tracking import child_runs, open_store
from test_cli import assert_one_line_error, in_process

from search_spaces import SPACES, get_space, sample

ROOT = Path(__file__).resolve().parents[1]
SMOKE_STEPS = all_commands()["meta-train"].presets["smoke"]["steps"]  # the smoke space's trials


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_space_samples_into_a_valid_config(name):
    space = get_space(name)
    command = all_commands()[space.command]
    configs = sample(space, 2)
    assert configs
    for cfg in configs:
        built = command.build(space.preset, cfg, None)
        for key, value in cfg.items():
            assert getattr(built, key) == value  # the sampled field reaches the config
        if "rule" in cfg and str(cfg["rule"]).endswith(".json"):
            assert Path(cfg["rule"]).is_file() and f"T{built.T}" in Path(cfg["rule"]).name


def test_sampling_is_seeded_and_grid_spaces_expand():
    assert len(sample(get_space("fig3_transfer"))) == 6 * 2 * 2
    assert {c["k"] * 2 for c in sample(get_space("fig3_transfer"))} == {100, 1000}
    smoke = get_space("smoke")
    assert sample(smoke, 3, seed=5) == sample(smoke, 3, seed=5) != sample(smoke, 3, seed=6)
    # the evolution space runs every strategy of the registry, genetic with the preset's model
    evo = sample(get_space("evolution_vs_gd"), 1, seed=0)
    assert [c["strategy"] for c in evo] == list(STRATEGIES)
    assert [c["infinite"] for c in evo] == [s == "genetic" for s in STRATEGIES]


def _children(uri, parent_run_id):
    return child_runs(open_store(uri), parent_run_id)


def test_smoke_sweep_is_a_parent_run_with_8_complete_children(ray_local, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = in_process(capsys, "sweep", "smoke", "--samples", "8", "--seed", "3", "--out",
                      str(tmp_path / "sweep"), "--tracking-uri", uri, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["trials"]) == 8 and result["errors"] == 0
    store = open_store(uri)
    parent = store.client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/trials"] == 8
    children = _children(uri, result["parent_run_id"])
    assert len(children) == 8
    sampled = {round(t["config"]["lr"], 12) for t in result["trials"]}
    assert {round(float(c.data.params["lr"]), 12) for c in children} == sampled
    for c in children:
        assert c.info.status == "FINISHED"
        assert {"lr", "output_init", "seed", "episodes", "dataset"} <= set(c.data.params)
        assert "meta/loss" in c.data.metrics and "meta-train/test_accuracy" in c.data.metrics
        assert len(store.client.get_metric_history(c.info.run_id, "meta/loss")) == SMOKE_STEPS
        arts = {a.path for a in store.client.list_artifacts(c.info.run_id, "rules/meta-train")}
        assert "rules/meta-train/rule.json" in arts and "rules/meta-train/heatmap.png" in arts
    # seeded: the trials ran exactly the configurations the seed draws, in trial order
    assert [t["config"] for t in result["trials"]] == sample(get_space("smoke"), 8, seed=3)
    assert sample(get_space("smoke"), 8, seed=3) != sample(get_space("smoke"), 8, seed=4)


def _starts(trial_dir: Path) -> int:
    """How often the trial's handler started (one params event per start)."""
    f = trial_dir / "events.jsonl"
    if not f.is_file():
        return 0
    return sum(json.loads(line)["event"] == "params" for line in f.read_text().splitlines())


def test_killed_sweep_resumes_without_rerunning_finished_trials(ray_local, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "sweep"
    address = ray_local.get_runtime_context().gcs_address
    args = ["sweep", "smoke", "--samples", "10", "--out", str(out), "--tracking-uri", uri]
    driver = subprocess.Popen([sys.executable, "-m", "plasticity", *args, "--address", address],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                           # the worst case: Tune's only snapshot
                                                           # is its first, older than every finish
                                                           "TUNE_GLOBAL_CHECKPOINT_S": "3600"})
    try:
        deadline = time.time() + 600  # a guard against a hang, not a timing (shared machines)
        while len(list(out.glob("trials/*/DONE.json"))) < 2:
            assert driver.poll() is None, "the driver ended before it could be killed"
            assert time.time() < deadline, "no trial finished in time"
            time.sleep(0.2)
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    done_before = {p.parent.name for p in out.glob("trials/*/DONE.json")}
    assert 2 <= len(done_before) < 10, done_before
    proc = in_process(capsys, "sweep", "smoke", "--resume", "--out", str(out), "--tracking-uri", uri,
                      "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["trials"]) == 10 and result["errors"] == 0
    for tid in done_before:
        assert _starts(out / "trials" / tid) == 1, f"finished trial {tid} was run again"
    assert len(list(out.glob("trials/*/DONE.json"))) == 10
    children = _children(uri, result["parent_run_id"])
    assert sorted(c.data.tags["trial_id"] for c in children) == sorted(
        p.parent.name for p in out.glob("trials/*/DONE.json"))
    assert all(c.info.status == "FINISHED" and "meta/loss" in c.data.metrics for c in children)
    # one sweep run (the killed one, continued), FINISHED; every trial's steps once in MLflow
    # and in its events.jsonl (a trial cut off by the kill ran again from its start)
    store = open_store(uri)
    exp = store.client.get_experiment_by_name("plasticity").experiment_id
    sweeps = store.client.search_runs([exp], "tags.`plasticity.command` = 'sweep'")
    assert [r.info.run_id for r in sweeps] == [result["parent_run_id"]]
    assert sweeps[0].info.status == "FINISHED"
    steps = list(range(1, SMOKE_STEPS + 1))
    for c in children:
        hist = store.client.get_metric_history(c.info.run_id, "meta/loss")
        assert sorted(m.step for m in hist) == steps, c.data.tags["trial_id"]
        events = [json.loads(line) for line in
                  (out / "trials" / c.data.tags["trial_id"] / "events.jsonl").read_text().splitlines()]
        assert sorted(e["step"] for e in events if e["event"] == "metrics"
                      and "meta/loss" in e["metrics"]) == steps


@pytest.mark.parametrize("args, needle", [
    (["sweep", "nope", "--samples", "2"], "unknown search space 'nope'"),
    (["sweep", "smoke", "--resume"], "nothing to resume"),
    (["sweep", "smoke", "--samples", "0"], "--samples 0"),
    (["sweep", "smoke", "--retries", "-1"], "--retries -1"),
    (["sweep", "smoke", "--tracking-uri", "http://127.0.0.1:9"], "unreachable"),
    (["sweep", "smoke", "--address", "127.0.0.1:9"], "cannot reach the Ray cluster"),
    (["sweep", "smoke", "--set", "bogus=1"], "unknown meta-train config key 'bogus'"),
    (["sweep", "smoke", "--preset", "nope"], "unknown preset 'nope'"),
])
def test_bad_sweep_input_is_one_line_exit_2_and_writes_nothing(args, needle, tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    extra = [] if "--tracking-uri" in args else ["--tracking-uri", f"sqlite:///{db}"]
    proc = in_process(capsys, *args, "--out", str(tmp_path / "o"), *extra)
    assert_one_line_error(proc, needle)
    if db.exists():  # opened (schema created) but holds no run
        exp = open_store(f"sqlite:///{db}").client.search_runs(["0"])
        assert exp == []
    assert not (tmp_path / "o" / "tune").exists()


def _bad_start_after_two(config: dict) -> float:
    """output_init of the ASHA test's trials: 0 (loss ~0.69) for seeds 0, 1; then 3 (loss > 3)."""
    return 0.0 if int(config["seed"]) < 2 else 3.0


def test_asha_stops_the_bad_trials_and_closes_them_as_killed(ray_local, tmp_path, capsys,
                                                             monkeypatch):
    """Four smoke trials, two at a time, in grid order: two good starts, then two bad ones. ASHA
    (grace period 2, reduction factor 2) records the good trials at its first rung before a bad
    one reaches it, so both bad trials are stopped there."""
    from ray import tune

    import search_spaces

    space = search_spaces.Space(
        "meta-train", "smoke", {"seed": tune.grid_search([0, 1, 2, 3]), "lr": 0.1,
                                "output_init": tune.sample_from(_bad_start_after_two)},
        metric="meta/loss", mode="min", help="test only: ASHA must stop the bad starts")
    monkeypatch.setitem(search_spaces.SPACES, "asha_forced", space)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = in_process(capsys, "sweep", "asha_forced", "--scheduler", "asha", "--out",
                      str(tmp_path / "sweep"), "--tracking-uri", uri, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    store = open_store(uri)
    children = _children(uri, result["parent_run_id"])
    assert len(children) == 4
    status = {}
    for c in children:
        steps = len(store.client.get_metric_history(c.info.run_id, "meta/loss"))
        rules = store.client.list_artifacts(c.info.run_id, "rules/meta-train")
        status.setdefault(float(c.data.params["output_init"]), []).append(c.info.status)
        if c.info.status == "FINISHED":
            assert steps == SMOKE_STEPS and rules
        else:  # stopped by ASHA at a rung: its curve so far, no rule
            assert c.info.status == "KILLED" and c.data.tags["tune.stopped_early"] == "true"
            assert 1 <= steps < SMOKE_STEPS and not rules
    # Catches: ASHA that stops nothing (no scheduler, or a rung past the trials' end)
    assert status[3.0] == ["KILLED", "KILLED"], status
    assert "FINISHED" in status[0.0], status  # the first good trial at each rung goes on


def test_a_trial_that_finished_while_the_driver_was_down_gets_every_step(tmp_path):
    """The resumed driver sees only the finished trial's final report (its last step): the
    steps before come from the trial's events.jsonl, none twice (found by the kill test above,
    when a trial finished between Tune's last snapshot and the kill: its run held step 6 only)."""
    from plasticity.commands.sweep import TrialLogger
    from plasticity.events import JsonlSink

    store = open_store(f"sqlite:///{tmp_path}/mlflow.db")
    ev = JsonlSink(tmp_path / "trial" / "events.jsonl")
    ev.params({"lr": 0.1})
    for s in range(1, SMOKE_STEPS + 1):
        ev.metrics({"meta/loss": 1.0 / s, "meta/skipped": 0}, step=s)
    ev.close()
    sink = store.sink("trial", experiment="unit")
    sink.metrics({"meta/loss": 1.0 / SMOKE_STEPS}, step=SMOKE_STEPS)  # the re-reported end
    logger = TrialLogger(store.uri, "parent", "meta-train")
    logger._seen["t1"] = {SMOKE_STEPS}
    logger._replay_missing(sink, "t1", tmp_path / "trial" / "events.jsonl")
    sink.close()
    for key in ("meta/loss", "meta/skipped"):
        hist = store.client.get_metric_history(sink.run_id, key)
        assert sorted(m.step for m in hist) == list(range(1, SMOKE_STEPS + 1)), key
