"""The `plasticity` command: shared flags, JSON output, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from plasticity.cli import main, run
from plasticity.commands import config_commands as all_commands
from plasticity.rules.classic import classic_rule
from plasticity.rules.io import save_rule


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m plasticity ARGS` as a user would."""
    return subprocess.run([sys.executable, "-m", "plasticity", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """Run the console entry point in this process (fast); same result shape as `cli`."""
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    cap = capsys.readouterr()
    return subprocess.CompletedProcess(args, exc.value.code, cap.out, cap.err)


PRESETS = [(name, preset) for name, command in all_commands().items() for preset in command.presets]


@pytest.mark.parametrize("name, preset", PRESETS, ids=[f"{n}-{p}" for n, p in PRESETS])
def test_every_preset_of_every_command_builds(name, preset):
    """Every preset is a valid config; an evolution preset that sets no strategy's own field
    (nor the strategy) is one for every strategy of the registry too."""
    from plasticity.evolution.strategies import STRATEGIES

    command = all_commands()[name]
    cfg = command.build(preset, {}, None)
    assert all(getattr(cfg, k) == v for k, v in command.presets[preset].items())
    owned = {f for spec in STRATEGIES.values() for f in spec.fields} | {"strategy"}
    if hasattr(cfg, "strategy") and not owned & set(command.presets[preset]):
        for strategy in STRATEGIES:
            assert command.build(preset, {"strategy": strategy}, None).strategy == strategy


@pytest.mark.parametrize("args, needle", [
    (["train", "--set", "k=500"], "k=500"),
    (["train", "--set", "T=0"], "T=0"),
    (["meta-train", "--set", "p=0"], "p=0"),
    (["meta-train", "--set", "p=1.5"], "p=1.5"),
    (["baseline", "--set", "neurons=abc"], "neurons"),
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--set", "noequals"], "key=value"),
    (["train", "--set", "dataset=cifar", "--preset", "smoke"], "unknown dataset 'cifar'"),
    (["study", "fig3", "--set", "seeds=0"], "seeds=0"),
    (["train", "--set", "update_on=margin", "--set", "gamma=-1"], "gamma=-1.0 must be >= 0"),
    (["train", "--set", "update_on=margin"], "needs gamma > 0"),
    (["meta-train", "--set", "gamma=0.5"], "applies to update_on=margin"),
    (["evolve", "--set", "update_on=margin_rel", "--set", "gamma=-0.1"], "must be >= 0"),
])
def test_bad_input_is_one_line_exit_2(args, needle, capsys, tmp_path):
    assert_one_line_error(in_process(capsys, *args, "--out", str(tmp_path / "o")), needle)


def test_bad_input_from_a_real_process(tmp_path):
    assert_one_line_error(cli("train", "--set", "bogus=1", "--out", str(tmp_path / "o")),
                          "unknown train config key 'bogus'")


def test_missing_data_root_is_one_line_exit_2(tmp_path):
    proc = cli("train", "--preset", "smoke", "--set", "dataset=mnist", "--out", str(tmp_path / "o"),
               env={"PLASTICITY_DATA": str(tmp_path / "nowhere")})
    assert_one_line_error(proc, "train-images-idx3-ubyte", "prepare-data")


def test_malformed_rule_file_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "rule.json"
    bad.write_text('{"format": "plasticity-rule", "version": 1, "T": 1, "output": {"par')
    assert_one_line_error(in_process(capsys, "train", "--preset", "smoke", "--rule", str(bad),
                                     "--out", str(tmp_path / "o")), str(bad))


@pytest.mark.parametrize("rule_T, net_T", [(1, 3), (3, 1)])
def test_rule_of_wrong_T_is_one_line_exit_2_and_writes_nothing(rule_T, net_T, tmp_path, capsys):
    path = save_rule(classic_rule("hebb+perceptron", rule_T), tmp_path / f"t{rule_T}.json")
    out = tmp_path / "run"
    proc = in_process(capsys, "train", "--preset", "smoke", "--no-progress", "--rule", str(path),
                      "--set", f"T={net_T}", "--out", str(out))
    assert_one_line_error(proc, f"rule has T={rule_T}", f"network has T={net_T}")
    assert not (out / "result.json").exists()


def test_meta_train_then_train_with_learned_rule_json(tmp_path, capsys):
    out = tmp_path / "mt"
    assert run(["meta-train", "--preset", "smoke", "--out", str(out), "--no-progress",
                "--json"]) == 0
    meta = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rule_path = Path(meta["rule"])
    assert rule_path.exists() and meta["skipped_steps"] == 0
    assert run(["train", "--preset", "smoke", "--rule", str(rule_path), "--out",
                str(tmp_path / "tr"), "--no-progress", "--json", "--seed", "3"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["config"]["seed"] == 3 and res["config"]["rule"] == str(rule_path)
    assert res["rule_provenance"]["method"] == "gd"
    assert 0.6 < res["test_accuracy_mean"] <= 1.0  # halfspace, well above chance (0.5)
    assert (tmp_path / "tr" / "result.json").exists()


def test_baseline_json(tmp_path, capsys):
    batch = 20
    assert run(["baseline", "--preset", "smoke", "--out", str(tmp_path), "--no-progress",
                "--json", "--set", f"batch={batch}"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["command"] == "baseline" and res["test_accuracy_mean"] > 0.6
    # one pass over the preset's examples in minibatches: that many GD updates, no more
    assert res["curve"]["updates"][-1] == all_commands()["baseline"].presets["smoke"]["n_train"] // batch


def test_device_cuda_without_cuda_is_refused(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    assert_one_line_error(in_process(capsys, "train", "--preset", "smoke", "--device", "cuda",
                                     "--out", str(tmp_path / "o")), "CUDA")


def test_study_smoke_json_is_one_object(tmp_path, capsys):
    assert run(["study", "fig3", "--preset", "smoke", "--set", "datasets=halfspace", "--out",
                str(tmp_path), "--json", "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    res = json.loads(out[0])
    assert set(res["cells"]) == {f"halfspace/{s}/T={T}" for s in ("small", "large")
                                 for T in (1, 3)}
    assert (tmp_path / "report.md").exists() and (tmp_path / "rule_T3.json").exists()


def test_a_study_runs_through_the_registered_handlers_tracked_as_child_runs(tmp_path, capsys):
    """``study`` runs what ``reproduce`` runs: meta-train and train handlers, each with its own
    output folder (result.json, events.jsonl) and MLflow child run under the study's run."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert run(["study", "fig3", "--preset", "smoke", "--set", "datasets=halfspace", "--set",
                "task_seeds=1", "--out", str(tmp_path / "s"), "--json", "--no-progress",
                "--tracking-uri", uri]) == 0
    res = json.loads(capsys.readouterr().out)
    parts = sorted(p.name for p in (tmp_path / "s" / "cells").iterdir())
    assert parts == sorted(f"halfspace-{s}-T{T}-task0" for s in ("small", "large") for T in (1, 3))
    for p in parts:  # each cell is a train run: its result.json holds what the study reports
        cell = json.loads((tmp_path / "s" / "cells" / p / "result.json").read_text())
        assert cell["command"] == "train"
    large3 = json.loads((tmp_path / "s" / "cells" / "halfspace-large-T3-task0" / "result.json")
                        .read_text())
    assert res["cells"]["halfspace/large/T=3"]["mean"] == pytest.approx(
        100 * sum(large3["test_accuracy"]) / len(large3["test_accuracy"]))
    assert res["cells"]["halfspace/large/T=3"]["diagnostics"] == large3["diagnostics"]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("plasticity").experiment_id])
    parent = [r for r in runs if r.data.tags.get("plasticity.command") == "study"]
    assert len(parent) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert sorted(r.data.tags["plasticity.command"] for r in children) == ["meta-train"] * 2 + ["train"] * 4


def test_a_margin_rule_is_learned_saved_and_trained_with_its_own_scheme(tmp_path, capsys):
    """meta-train under update_on=margin saves the scheme with its gamma; train with the rule's
    own scheme updates on more examples than the same tables on mistakes only."""
    assert run(["meta-train", "--preset", "smoke", "--set", "update_on=margin", "--set",
                "gamma=0.05", "--out", str(tmp_path / "mt"), "--no-progress", "--json"]) == 0
    rule = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rule"]
    assert json.loads(Path(rule).read_text())["scheme"] == {
        "update_on": "margin", "output_rows": "label_pred", "gamma": 0.05}
    updates = {}
    for scheme in ("rule", "mistakes"):
        assert run(["train", "--preset", "smoke", "--rule", rule, "--set", f"update_on={scheme}",
                    "--out", str(tmp_path / scheme), "--no-progress", "--json"]) == 0
        updates[scheme] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["updates"]
    assert updates["rule"][0] > updates["mistakes"][0]
