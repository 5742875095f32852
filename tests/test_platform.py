"""The platform around the engine: cluster.yaml against Ray's schema, `plasticity ui`, and
`plasticity reproduce` (stages as MLflow child runs, the summary and the report)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from plasticity.commands.reproduce import SIZES, stages
from plasticity.tracking import child_runs, open_store
from test_cli import assert_one_line_error, in_process

ROOT = Path(__file__).resolve().parents[1]


def _prepared(cfg: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    full = prepare_config(copy.deepcopy(cfg))
    validate_config(full)
    return full


def test_cluster_yaml_passes_rays_schema():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    full = _prepared(cfg)
    nodes = full["available_node_types"]
    assert nodes[full["head_node_type"]]["resources"]["GPU"] == 0
    assert any(n["resources"].get("GPU", 0) >= 1 for n in nodes.values())
    assert any("pip install" in c and "-e ." in c for c in full["setup_commands"])
    assert any("MLFLOW_TRACKING_URI" in c for c in full["worker_setup_commands"])
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["gpu_worker"]["gpus"] = 1  # not a field: the schema says so
    with pytest.raises(Exception, match="gpus"):
        _prepared(bad)


@pytest.mark.parametrize("preset", sorted(SIZES))
def test_every_reproduce_stage_builds_a_valid_config(preset, tmp_path):
    from plasticity.commands import prepare

    plan = stages(preset)
    names = [s.name for s in plan]
    assert len(set(names)) == len(names)  # they name the output folders and the child runs
    for i, stage in enumerate(plan):
        sets = dict(stage.sets)
        for key, refs in stage.rules.items():
            # Catches: a stage fed the rule of a stage that runs after it (or of no stage)
            assert refs and set(refs.split(",")) <= set(names[:i]), (stage.name, refs)
            # an earlier stage's rule: any valid rule of the right T
            sets[key] = str(ROOT / "bench" / "rules" / f"fig3_T{sets.get('T', 1)}.json")
        command, cfg, _ = prepare(stage.command, stage.preset, sets, tmp_path / stage.name)
        assert isinstance(cfg, command.config), stage.name
        # Catches: a stage field the command drops, or a preset that overrides the stage's own
        for key, value in sets.items():
            assert getattr(cfg, key) == value, (stage.name, key, getattr(cfg, key), value)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """`plasticity reproduce --preset smoke`, every stage, tracked in a fresh sqlite store: run
    once (about 7 s) for the two tests below. Returns (exit code, stdout, stderr, out, uri)."""
    from plasticity.cli import run

    tmp = tmp_path_factory.mktemp("reproduce")
    uri, out = f"sqlite:///{tmp}/mlflow.db", tmp / "rep"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = run(["reproduce", "--preset", "smoke", "--out", str(out), "--tracking-uri", uri,
                    "--no-progress"])
    return code, stdout.getvalue(), stderr.getvalue(), out, uri


def test_reproduce_smoke_runs_every_stage(reproduced):
    code, stdout, stderr, out, _ = reproduced
    assert code == 0, stderr
    result = json.loads((out / "result.json").read_text())
    assert result["skipped"] == {}
    assert set(result["stages"]) == {s.name for s in stages("smoke")}
    for section in ("Learned rules", "Evolution vs GD", "Transfer", "Robustness"):
        assert section in stdout
    assert (out / "robustness.png").is_file()
    report = (out / "report.md").read_text()
    assert "## Learned rules" in report and "(rule_meta-T1.png)" in report
    assert (out / "rule_meta-T1.png").stat().st_size > 1000


def test_reproduce_runs_stages_as_child_runs_of_one_parent(reproduced):
    code, _, stderr, _, uri = reproduced
    assert code == 0, stderr
    store = open_store(uri)
    parents = store.client.search_runs([store.experiment_id()],
                                       filter_string="tags.`plasticity.command` = 'reproduce'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert "reproduce/meta-T1/test_accuracy" in parents[0].data.metrics
    arts = {a.path for a in store.client.list_artifacts(parents[0].info.run_id, "report")}
    assert "report/report.md" in arts
    children = {c.data.tags["reproduce.stage"]: c for c in child_runs(store, parents[0].info.run_id)}
    assert set(children) == {s.name for s in stages("smoke")}
    assert all(c.info.status == "FINISHED" for c in children.values())
    assert children["evolve-T1"].data.tags["rule.evolve.method"].startswith(("genetic", "evol"))
    assert "evolution/loss_best" in children["evolve-T1"].data.metrics


def test_reproduce_stages_runs_only_the_named_stages(tmp_path, capsys):
    out = tmp_path / "rep"
    proc = in_process(capsys, "reproduce", "--preset", "smoke", "--stages", "meta-T1", "--out",
                      str(out), "--no-tracking", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    # Catches: --stages ignored (every stage run) or a named stage not run
    assert set(json.loads((out / "result.json").read_text())["stages"]) == {"meta-T1"}
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["meta-T1", "rules"]


@pytest.mark.parametrize("args, needle", [
    (["reproduce", "--preset", "huge"], "unknown preset 'huge'"),
    (["reproduce", "--preset", "smoke", "--stages", "nope"], "unknown stage 'nope'"),
    (["reproduce", "--preset", "smoke", "--set", "seed=1"], "no --set"),
])
def test_bad_reproduce_input_is_one_line_exit_2(args, needle, tmp_path, capsys):
    proc = in_process(capsys, *args, "--out", str(tmp_path / "o"), "--no-tracking")
    assert_one_line_error(proc, needle)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~20 s: the MLflow UI server starts
def test_ui_serves_the_store_on_loopback_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "plasticity", "ui", "--port", str(port),
                           "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          start_new_session=True)
    try:
        line = ui.stdout.readline()
        # the address opens the experiment's training runs, not MLflow 3's GenAI view
        from mlflow import MlflowClient

        exp = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_experiment_by_name("plasticity")
        assert (f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs?"
                "workflowType=machine_learning") in line
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                break
            except OSError:
                assert ui.poll() is None and time.time() < deadline, "the UI did not come up"
                time.sleep(0.5)
        os.kill(ui.pid, signal.SIGINT)
        assert ui.wait(timeout=60) == 0
    finally:
        try:
            os.killpg(ui.pid, signal.SIGKILL)  # anything left in the group this test started
        except ProcessLookupError:
            pass
