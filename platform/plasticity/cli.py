"""The ``plasticity`` command: the composition root (config + data + core calls + output).

Every subcommand takes the shared flags ``--preset``, ``--set key=value`` (repeatable, checked
against the command's config fields), ``--seed``, ``--device``, ``--out DIR`` and ``--json``.
A bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import PlasticityError, __version__
from .commands import (
    Command,
    check_out,
    jsonable,
    out_dir,
    resolve_device,
    run_handler,
    write_json,
)
from .config import (
    PRESETS,
    BaselineConfig,
    MetaConfig,
    TrainConfig,
    dynamics_sets,
    parse_sets,
    to_dict,
)
from .events import Sink

# Modules that contribute subcommands: each exposes COMMANDS: dict[str, Command].
COMMAND_MODULES = (
    "plasticity.cli",
    "plasticity.robustness.command",
    "plasticity.transfer_command",
    "plasticity.evolution.command",
)


def _shared(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="named preset: smoke (seconds on a CPU), quick, paper")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field (repeatable)")
    p.add_argument("--seed", type=int, help="root seed of the run (config field 'seed')")
    p.add_argument("--dynamics", help="named dynamics: engine (the defaults) or reference (the "
                   "authors' code: recurrence=code, firing=topk, meta_loss=softmax); --set wins")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--out", type=Path, help="output folder (default runs/<command>-<time>)")
    p.add_argument("--json", action="store_true", help="print one JSON result object on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--tracking-uri", help="MLflow store (default $PLASTICITY_TRACKING_URI, "
                   "$MLFLOW_TRACKING_URI or sqlite:///mlflow.db here; none = off)")
    p.add_argument("--no-tracking", action="store_true", help="no MLflow tracking (--tracking-uri none)")


def all_commands() -> dict[str, Command]:
    """Every config-driven subcommand, from the modules in COMMAND_MODULES."""
    out: dict[str, Command] = {}
    for mod in COMMAND_MODULES:
        out.update(COMMANDS if mod == __name__ else importlib.import_module(mod).COMMANDS)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plasticity", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"plasticity {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in all_commands().items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        _shared(p)
        if command.arguments is not None:
            command.arguments(p)
    p = sub.add_parser("prepare-data", help="prepare the MNIST / Fashion-MNIST data root")
    p.add_argument("--root", type=Path, help="data root (default: $PLASTICITY_DATA or ./data)")
    p.add_argument("--source", type=Path, help="folder of .gz files (default: ../shared/data)")
    p = sub.add_parser("study", help="run a study of the paper (fig3, fig2, table2, theory)")
    from .studies import STUDIES

    p.add_argument("name", choices=sorted(STUDIES))
    _shared(p)
    from .platform_commands import add_parsers

    add_parsers(sub, _shared)  # sweep, reproduce, ui
    return parser


def _summary(acc: np.ndarray) -> dict:
    return {"test_accuracy_mean": float(np.mean(acc)), "test_accuracy_std": float(np.std(acc)),
            "test_accuracy": acc.tolist()}


def cmd_meta_train(cfg: MetaConfig, args, device: str, sink: Sink) -> dict:
    from .data import load_dataset
    from .meta import evaluate_rule, meta_train
    from .rules.io import save_rule

    data = load_dataset(cfg.dataset, data_seed=cfg.data_seed, inputs=cfg.inputs)
    t0 = time.time()
    res = meta_train(cfg, data, device=device, progress=not args.no_progress)
    out = out_dir(args, "meta-train")
    rule_path = save_rule(res.rule, out / "rule.json")
    sink.rule("meta-train", res.rule, rule_path)
    acc = evaluate_rule(cfg, res.rule, data, device, n_train=cfg.n_train or data.x_train.shape[0],
                        n_test=cfg.n_test or data.x_test.shape[0])
    result = {"command": "meta-train", "config": to_dict(cfg), "rule": str(rule_path),
              "final_loss": res.history[-1]["loss"], "skipped_steps": res.skipped,
              "test_accuracy": acc, "seconds": time.time() - t0,
              "output_table": res.rule.output.table().tolist(),
              "rnn_table": None if res.rule.rnn is None else res.rule.rnn.table().tolist()}
    write_json(out / "history.json", res.history)
    for h in res.history:
        sink.metrics({f"meta/{k}": v for k, v in h.items() if k != "step"}, step=h["step"])
    sink.metrics({"meta/test_accuracy": acc})
    write_json(out / "result.json", result)
    return result


def load_rule_ref(ref: str, T: int, eta: float, tracking: str | None = None):
    """A rule from a JSON path, a classic name, or a registered ``models:/NAME/VERSION``
    (fetched from the store ``tracking``)."""
    from .rules.classic import CLASSIC, classic_rule
    from .rules.io import load_rule

    if ref in CLASSIC:
        return classic_rule(ref, T, eta)
    if ref.startswith("models:/"):
        from .tracking import fetch_rule

        return fetch_rule(ref, tracking)
    if not ref.endswith(".json") and not Path(ref).exists():
        raise PlasticityError(f"rule '{ref}' is neither a rule JSON file nor one of {CLASSIC}")
    return load_rule(ref)


def cmd_train(cfg: TrainConfig, args, device: str, sink: Sink) -> dict:
    from .transfer import dynamics_mismatch, run_train

    t0 = time.time()
    rule = load_rule_ref(cfg.rule, cfg.T, cfg.eta, tracking_uri(args))
    mismatch = dynamics_mismatch(rule, cfg)
    if mismatch:
        print(f"plasticity: warning: {mismatch}; see docs/dynamics.md", file=sys.stderr)
    res = run_train(cfg, rule, device=device, progress=not args.no_progress)
    sink.rule("train", rule)
    out = out_dir(args, "train")
    result = {"command": "train", "config": to_dict(cfg), "rule_provenance": rule.provenance,
              "dynamics_mismatch": mismatch,
              **_summary(res.test_accuracy), "updates": res.updates.tolist(),
              "curve": {"examples": res.examples, "accuracy_mean": res.curve.mean(1).tolist(),
                        "accuracy_std": res.curve.std(1).tolist()},
              "diverged_networks": int(res.diverged.sum()), "seconds": time.time() - t0}
    if result["diverged_networks"]:
        print(f"plasticity: warning: {result['diverged_networks']} of {cfg.networks} networks "
              "diverged (non-finite weights; learning stopped for them): lower eta",
              file=sys.stderr)
    sink.metrics({"train/test_accuracy_mean": result["test_accuracy_mean"],
                  "train/diverged_networks": result["diverged_networks"]})
    write_json(out / "result.json", result)
    return result


def cmd_baseline(cfg: BaselineConfig, args, device: str, sink: Sink) -> dict:
    from .baselines import train_baseline
    from .data import load_dataset

    t0 = time.time()
    data = load_dataset(cfg.dataset, data_seed=cfg.data_seed, inputs=cfg.inputs)
    res = train_baseline(cfg, data, device=device, progress=not args.no_progress)
    out = out_dir(args, "baseline")
    result = {"command": "baseline", "config": to_dict(cfg),
              **_summary(res.test_accuracy),
              "curve": {"examples": res.examples, "updates": res.updates_at,
                        "accuracy_mean": res.curve.mean(1).tolist(),
                        "accuracy_std": res.curve.std(1).tolist()},
              "seconds": time.time() - t0}
    write_json(out / "result.json", result)
    return result


def _rule_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rule", help="rule JSON file or classic name (config field 'rule')")


COMMANDS = {
    "meta-train": Command("meta-learn plasticity rules by GD through unrolled learning",
                          MetaConfig, PRESETS["meta-train"], cmd_meta_train),
    "train": Command("train fresh networks with a frozen rule (no backprop)", TrainConfig,
                     PRESETS["train"], cmd_train, arguments=_rule_arg,
                     sets_from_args=lambda a: {"rule": a.rule} if a.rule else {}),
    "baseline": Command("train the same networks by gradient descent", BaselineConfig,
                        PRESETS["baseline"], cmd_baseline),
}


def _print_human(result: dict) -> None:
    keys = ("rule", "test_accuracy_mean", "test_accuracy_std", "test_accuracy", "final_loss",
            "skipped_steps", "seconds", "report")
    for k in keys:
        if k in result:
            v = result[k]
            print(f"{k:>20}: {v:.4f}" if isinstance(v, float) else f"{k:>20}: {v}")


def tracking_uri(args) -> str | None:
    """The run's MLflow store URI (flag, environment, default), or None when tracking is off."""
    import os

    uri = getattr(args, "tracking_uri", None) or os.environ.get(
        "PLASTICITY_TRACKING_URI", os.environ.get("MLFLOW_TRACKING_URI"))
    if getattr(args, "no_tracking", False) or (uri is not None and uri.strip().lower() in
                                               ("none", "off", "false", "0", "")):
        return None  # decided without importing MLflow (seconds per process)
    from .tracking import resolve_uri

    return resolve_uri(uri)


def tracking_sink(args, name: str, cfg) -> Sink | None:
    """The MLflow observer for this run, or None when tracking is off (plasticity.tracking)."""
    uri = tracking_uri(args)
    if uri is None:
        return None
    from .tracking import sink_for_command

    return sink_for_command(uri, name, {"plasticity.preset": args.preset or "-"}, args.out,
                            resume=bool(getattr(args, "resume", False)))


def run(argv: list[str] | None = None) -> int:
    """Parse, run, print. Returns the exit code."""
    args = build_parser().parse_args(argv)
    check_out(getattr(args, "out", None))
    if getattr(args, "tracking_uri", None):
        tracking_uri(args)  # a malformed URI is refused by every command, before it runs
    if args.command == "prepare-data":
        from .data import prepare_data_root

        root = prepare_data_root(args.root, args.source)
        print(f"data ready in {root}")
        return 0
    from . import platform_commands

    if args.command in platform_commands.NAMES:
        result = platform_commands.run(args)
        print(json.dumps(result, default=jsonable) if getattr(args, "json", False)
              else result.get("summary", ""))
        return 1 if result.get("errors") else 0  # a sweep with failed trials is not a success
    sets = parse_sets(args.sets)
    device = resolve_device(args.device)
    if args.command == "study":
        from .studies import StudyConfig, run_study

        sets = {**dynamics_sets(args.dynamics, StudyConfig), **sets}
        result = run_study(args.name, args.preset or "quick", sets, seed=args.seed,
                           device=device, out=out_dir(args, f"study-{args.name}"),
                           progress=not args.no_progress)
    else:
        command = all_commands()[args.command]
        sets = {**dynamics_sets(args.dynamics, command.config), **sets}
        if command.sets_from_args is not None:
            sets.update(command.sets_from_args(args))
        cfg = command.build(args.command, args.preset, sets, args.seed)
        args.out = out_dir(args, args.command)
        result = run_handler(command, cfg, args, device, tracking_sink(args, args.command, cfg))
    if args.json:
        print(json.dumps(result, default=jsonable))
    else:
        if args.command == "study":
            print(Path(result["report"]).read_text())
        _print_human(result)
    return 0


def main(argv: list[str] | None = None) -> None:
    """Console entry point: PlasticityError -> one line on stderr, exit code 2."""
    try:
        code = run(argv)
    except PlasticityError as exc:
        print(f"plasticity: error: {str(exc).splitlines()[0] if str(exc) else 'failed'}",
              file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("plasticity: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
