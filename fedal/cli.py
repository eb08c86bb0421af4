"""The ``fedal`` command: run, train, partition, plot, bench."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from fedal.config import ConfigError, ExperimentConfig, load_config

DEFAULT_CONFIG = "experiments/configs/demo.toml"


def _config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    overrides = list(args.set or [])
    if getattr(args, "clients", None):
        overrides.append(f"data.num_clients={args.clients}")
    if getattr(args, "rounds", None):
        overrides.append(f"federation.rounds={args.rounds}")
    if getattr(args, "seed", None) is not None:
        overrides.append(f"experiment.seed={args.seed}")
    if getattr(args, "client_cpus", None):
        overrides.append(f"federation.client_cpus={args.client_cpus}")
    if getattr(args, "client_gpus", None) is not None:
        overrides.append(f"federation.client_gpus={args.client_gpus}")
    if getattr(args, "data_dir", None):
        overrides.append(f'data.data_dir="{args.data_dir}"')
    return load_config(args.config, overrides, strategy=getattr(args, "strategy", None))


def cmd_run(args: argparse.Namespace) -> int:
    """Validate everything (before Ray starts), then simulate the federation."""
    from fedal.preflight import preflight
    from fedal.results import new_run_dir

    config = _config_from_args(args)
    preflight(config)
    run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"fedal: {config.experiment.name} | {config.data.dataset} | "
        f"{config.data.num_clients} clients ({config.data.partition}) | "
        f"strategy {config.query.strategy} | {config.federation.rounds} rounds",
        flush=True,
    )
    from fedal.simulation import simulate

    simulate(config, run_dir, ray_address=args.ray_address, verbose=args.verbose)
    summary = json.loads((run_dir / "summary.json").read_text())
    print(
        f"final accuracy {summary['final_accuracy']:.2%} with {summary['final_labels']} labels; "
        f"AUC {summary['auc_accuracy_vs_labels']:.4f}",
        flush=True,
    )
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
    """Print the partition summary table and optionally save it as JSON."""
    from fedal.preflight import preflight, render_partition

    config = _config_from_args(args)
    summary = preflight(config)
    render_partition(summary)
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=2))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Overlay runs into one PNG."""
    from fedal.plots import plot_runs

    for run_dir in args.run_dirs:
        if not (Path(run_dir) / "rounds.jsonl").is_file():
            raise ConfigError(f"{run_dir}: not a fedal run directory (no rounds.jsonl)")
    out = plot_runs([Path(p) for p in args.run_dirs], Path(args.output), args.title)
    print(out)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run strategies x seeds, then plot them together and print the mean ± std table."""
    from fedal.plots import plot_runs
    from fedal.sweep import markdown_table, run_grid, summary_rows

    strategies = [name.strip() for name in args.strategies.split(",") if name.strip()]
    seeds = [int(seed) for seed in args.seeds.split(",")]
    run_dirs = run_grid(args.config, strategies, seeds, args.set or [], args.verbose)
    print(markdown_table(summary_rows(run_dirs)))
    if args.output:
        print(plot_runs(run_dirs, Path(args.output), args.title))
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    """Print the mean ± std table of finished runs (grouped by everything but the seed)."""
    from fedal.sweep import markdown_table, summary_rows

    for run_dir in args.run_dirs:
        if not (Path(run_dir) / "summary.json").is_file():
            raise ConfigError(f"{run_dir}: not a finished fedal run (no summary.json)")
    print(markdown_table(summary_rows([Path(run) for run in args.run_dirs])))
    return 0


def cmd_selection(args: argparse.Namespace) -> int:
    """Picture of the points a run selected (2-D toy datasets)."""
    from fedal.plots import plot_selection

    print(plot_selection(Path(args.run_dir), Path(args.output)))
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
    sweep.add_argument("-o", "--output", help="overlay plot PNG")
    sweep.add_argument("--title")
    sweep.add_argument("--verbose", action="store_true")
    sweep.set_defaults(handler=cmd_sweep)

    table = commands.add_parser("table", help="mean ± std table of finished runs")
    table.add_argument("run_dirs", nargs="+")
    table.set_defaults(handler=cmd_table)

    selection = commands.add_parser("selection", help="picture of selected points (2-D toys)")
    selection.add_argument("run_dir")
    selection.add_argument("-o", "--output", required=True)
    selection.set_defaults(handler=cmd_selection)

    from fedal.bench import add_bench_parser

    add_bench_parser(commands)
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
    if args.command == "run":
        print(f"done in {time.perf_counter() - started:.0f}s")
    return status


if __name__ == "__main__":
    sys.exit(main())
