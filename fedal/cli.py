"""The ``fedal`` command: run, train, partition, plot, bench, annotate."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fedal.app.arguments import config_from_args, overrides
from fedal.config import (
    ConfigError,
    apply_overrides,
    from_dict,
)

if TYPE_CHECKING:
    from fedal.rundir import RunDirectory

DEFAULT_CONFIG = "experiments/configs/demo.toml"


def cmd_run(args: argparse.Namespace) -> int:
    """Validate everything (before Ray starts), then simulate the federation."""
    from fedal.app.preflight import preflight
    from fedal.rundir import RunDirectory

    config = config_from_args(args)
    preflight(config)
    run = RunDirectory(Path(args.run_dir)) if args.run_dir else RunDirectory.create(config)
    run.refuse_if_taken()
    run.check_free()
    print(
        f"fedal: {config.query.privacy_mode} | {config.experiment.name} | "
        f"{config.data.dataset} | "
        f"{config.data.num_clients} clients ({config.data.partition}) | "
        f"strategy {config.query.strategy} | {config.federation.rounds} rounds",
        flush=True,
    )
    from fedal.app.simulation import simulate

    config = config.replace("experiment", run_dir=str(run.path))
    simulate(config, ray_address=args.ray_address, verbose=args.verbose)
    _print_summary(run)
    return 0


def _print_summary(run: RunDirectory) -> None:
    summary = run.read_summary()
    print(
        f"final accuracy {summary['final_accuracy']:.2%} with {summary['final_labels']} labels; "
        f"AUC {summary['auc_accuracy_vs_labels']:.4f}",
        flush=True,
    )


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue a run directory from its checkpoint (after a crash, or to add rounds)."""
    from fedal.checkpoint import load_server_checkpoint
    from fedal.resume import check_results, check_resume
    from fedal.rundir import RunDirectory

    run = RunDirectory.existing(args.run_dir)
    tables = run.read_config_tables()
    config = from_dict(apply_overrides(tables, overrides(args)))
    check_resume(from_dict(tables), config)
    run.check_free()
    try:
        checkpoint = load_server_checkpoint(run)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    done = checkpoint.round
    if done >= config.federation.rounds:
        raise ConfigError(
            f"{run.path} already has {done} of federation.rounds={config.federation.rounds} "
            f"rounds; pass --rounds N (N > {done}) to continue it"
        )
    check_results(run, done, checkpoint.ledger_rows)
    from fedal.app.simulation import simulate

    config = config.replace("experiment", resume=True, run_dir=str(run.path))
    simulate(config, ray_address=args.ray_address, verbose=args.verbose)
    _print_summary(run)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Central sanity check: train on a random labelled subset, print test accuracy."""
    from fedal.central import train_central

    accuracy, seconds = train_central(
        dataset_name=args.dataset,
        model_name=args.model,
        labels=args.labels,
        epochs=args.epochs,
        seed=args.seed,
        data_dir=args.data_dir,
        lr=args.lr,
        batch_size=args.batch_size,
    )
    print(
        f"{args.dataset} | {args.model} | {args.labels} random labels | {args.epochs} epochs | "
        f"test accuracy {accuracy:.2%} | {seconds:.1f}s"
    )
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    """Print the partition summary table; optionally save it as JSON and plot each
    client's label distribution (flwr-datasets' plot helper)."""
    from fedal.app.preflight import preflight, render_partition

    config = config_from_args(args)
    summary = preflight(config)
    render_partition(summary)
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=2))
    if args.plot:
        from fedal.datasets import load_dataset
        from fedal.partition import plot_label_distribution
        from fedal.shards import training_indices

        data, seed = config.data, config.experiment.seed
        dataset = load_dataset(data.dataset, data.data_dir or None, seed)
        labels = dataset.train_y[training_indices(config, dataset)]
        title = f"{data.dataset} | {data.partition} | {data.num_clients} clients | seed {seed}"
        names = dataset.meta.class_names
        print(plot_label_distribution(labels, data, seed, Path(args.plot), title, names))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Overlay runs into one PNG."""
    from fedal.plots import plot_runs
    from fedal.rundir import RunDirectory

    for run_dir in args.run_dirs:
        RunDirectory.existing(run_dir)
    out = plot_runs([Path(p) for p in args.run_dirs], Path(args.output), args.title)
    print(out)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run strategies x seeds, then plot them together and print the mean ± std table."""
    from fedal.app.sweep import AS_WRITTEN, Variant, markdown_table, run_grid, summary_rows
    from fedal.plots import plot_runs

    strategies = [name.strip() for name in args.strategies.split(",") if name.strip()]
    seeds = [int(seed) for seed in args.seeds.split(",")]
    variants = [AS_WRITTEN, *(Variant.parse(text) for text in args.variant or [])]
    into = Path(args.into) if args.into else None
    run_dirs = run_grid(
        args.config, strategies, seeds, args.set or [], args.verbose, variants, into
    )
    print(markdown_table(summary_rows(run_dirs, args.reference), args.reference))
    if args.output:
        print(plot_runs(run_dirs, Path(args.output), args.title))
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    """Print the mean ± std table of finished runs (grouped by everything but the seed)."""
    from fedal.app.sweep import markdown_table, summary_rows
    from fedal.rundir import RunDirectory

    for run_dir in args.run_dirs:
        RunDirectory.existing(run_dir).read_summary()
    rows = summary_rows([Path(run) for run in args.run_dirs], args.reference)
    print(markdown_table(rows, args.reference))
    return 0


def cmd_selection(args: argparse.Namespace) -> int:
    """Picture of the points a run selected (2-D toy datasets)."""
    from fedal.plots import plot_selection

    print(plot_selection(Path(args.run_dir), Path(args.output)))
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    """Serve the labelling page of a node folder (see :mod:`fedal.app.annotate`)."""
    from fedal.app.annotate import TOKEN_ENV, serve

    token = args.token or os.environ.get(TOKEN_ENV, "")
    serve(
        Path(args.node_dir).expanduser().resolve(), args.host, args.port, token, args.allow_remote
    )
    return 0


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help="experiment TOML")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set training.lr=0.01",
    )
    parser.add_argument("--clients", type=int, help="number of clients (data.num_clients)")
    parser.add_argument("--rounds", type=int, help="federated rounds")
    parser.add_argument("--strategy", help="query strategy name")
    parser.add_argument("--seed", type=int, help="experiment seed")
    parser.add_argument("--data-dir", help="dataset directory (torchvision layout)")


REFERENCE_HELP = (
    "what to pair against: a strategy, an experiment name or EXPERIMENT/STRATEGY "
    "(each group pairs with the match in its own experiment, else the only match)"
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fedal`` command."""
    parser = argparse.ArgumentParser(prog="fedal", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="simulate a federation (Flower + Ray)")
    _add_config_arguments(run)
    run.add_argument("--client-cpus", type=float, help="CPUs per simulated client")
    run.add_argument("--client-gpus", type=float, help="GPU fraction per simulated client")
    run.add_argument("--ray-address", help="join an existing Ray cluster (e.g. 'auto')")
    run.add_argument("--run-dir", help="write results here instead of a new directory")
    run.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    run.set_defaults(handler=cmd_run)

    resume = commands.add_parser("resume", help="continue a run from its checkpoint")
    resume.add_argument("run_dir", help="the run directory to continue")
    resume.add_argument("--rounds", type=int, help="raise federation.rounds to continue a run")
    resume.add_argument("--set", action="append", help="runtime overrides, e.g. client_cpus")
    resume.add_argument("--client-cpus", type=float, help="CPUs per simulated client")
    resume.add_argument("--client-gpus", type=float, help="GPU fraction per simulated client")
    resume.add_argument("--ray-address", help="join an existing Ray cluster (e.g. 'auto')")
    resume.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    resume.set_defaults(handler=cmd_resume)

    train = commands.add_parser("train", help="central sanity check on random labels")
    train.add_argument("--dataset", default="fashion-mnist")
    train.add_argument("--model", default="resnet8")
    train.add_argument("--labels", type=int, default=1000)
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--lr", type=float, default=0.1)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--data-dir")
    train.set_defaults(handler=cmd_train)

    partition = commands.add_parser("partition", help="show how data splits across clients")
    _add_config_arguments(partition)
    partition.add_argument("-o", "--output", help="save the summary as JSON")
    partition.add_argument("--plot", metavar="FILE", help="save each client's label counts (PNG)")
    partition.set_defaults(handler=cmd_partition)

    plot = commands.add_parser("plot", help="overlay runs (mean/std over seeds)")
    plot.add_argument("run_dirs", nargs="+")
    plot.add_argument("-o", "--output", required=True)
    plot.add_argument("--title")
    plot.set_defaults(handler=cmd_plot)

    sweep = commands.add_parser("sweep", help="run strategies x seeds, then plot and tabulate")
    sweep.add_argument("config")
    sweep.add_argument("--strategies", required=True, help="comma-separated strategy names")
    sweep.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    sweep.add_argument("--set", action="append", metavar="KEY=VALUE")
    sweep.add_argument(
        "--variant",
        action="append",
        metavar="'NAME: KEY=VALUE ...'",
        help="also run the grid with these overrides (repeatable), named <experiment>-NAME",
    )
    sweep.add_argument(
        "--into",
        metavar="DIR",
        help="runs in DIR/[NAME-]STRATEGY-sSEED; finished ones are kept, so a rerun continues",
    )
    sweep.add_argument("-o", "--output", help="overlay plot PNG")
    sweep.add_argument("--title")
    sweep.add_argument("--verbose", action="store_true")
    sweep.add_argument("--reference", default="random", help=REFERENCE_HELP)
    sweep.set_defaults(handler=cmd_sweep)

    table = commands.add_parser("table", help="mean ± std table of finished runs")
    table.add_argument("run_dirs", nargs="+")
    table.add_argument("--reference", default="random", help=REFERENCE_HELP)
    table.set_defaults(handler=cmd_table)

    selection = commands.add_parser("selection", help="picture of selected points (2-D toys)")
    selection.add_argument("run_dir")
    selection.add_argument("-o", "--output", required=True)
    selection.set_defaults(handler=cmd_selection)

    annotate = commands.add_parser("annotate", help="label a node folder's queued images")
    annotate.add_argument("node_dir", help="the folder a SuperNode serves as data-dir")
    annotate.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    annotate.add_argument("--port", type=int, default=8765)
    annotate.add_argument("--token", default="", help="required beyond localhost")
    annotate.add_argument(
        "--allow-remote", action="store_true", help="allow an address beyond localhost"
    )
    annotate.set_defaults(handler=cmd_annotate)

    from fedal.app.bench.cli import add_bench_parser
    from fedal.app.diagnose import add_diagnose_parser

    add_bench_parser(commands)
    add_diagnose_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; configuration and data errors print one line and exit with status 2."""
    from fedal.datasets import DatasetNotFoundError

    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    started = time.perf_counter()
    try:
        status = handler(args)
    except (ConfigError, DatasetNotFoundError) as error:
        print(f"fedal: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, a permission: the OS's words, no traceback
        print(f"fedal: error: {error}", file=sys.stderr)
        return 1
    if args.command == "run":
        print(f"done in {time.perf_counter() - started:.0f}s")
    return status


if __name__ == "__main__":
    sys.exit(main())
