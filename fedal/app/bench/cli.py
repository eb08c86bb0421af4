"""``fedal bench``: the parser, settings validation and a handler per kind of bench.

:mod:`fedal.cli` imports this module to build its parser, so it imports nothing heavy at
import time: the measuring (:mod:`fedal.app.bench.sampling`, which imports torch and the
query strategies) and the rendering (:mod:`fedal.app.bench.render`) are imported when a
command runs. A kind of bench is a subcommand of ``fedal bench``: an ``_add_*_parser``
registered in :func:`add_bench_parser` whose parser sets its ``cmd_bench_*`` handler.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fedal.config import ConfigError

if TYPE_CHECKING:
    from fedal.app.bench.sampling import SamplingSettings


def add_bench_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``fedal bench`` and its kinds on the ``fedal`` command's subparsers."""
    bench = subparsers.add_parser("bench", help="benchmarks")
    kinds = bench.add_subparsers(dest="bench", required=True)
    _add_sampling_parser(kinds)
    _add_federation_parser(kinds)


# ---------------------------------------------------------------------------- sampling


def _add_sampling_parser(kinds: argparse._SubParsersAction) -> None:
    sampling = kinds.add_parser("sampling", help="time every query strategy on one synthetic pool")
    sampling.add_argument("--pool", type=int, default=50_000, help="candidate images")
    sampling.add_argument("--budget", type=int, default=1000, help="labels to select")
    sampling.add_argument("--labelled", type=int, default=1000)
    sampling.add_argument("--strategies", "--strategy", help="comma-separated names (default: all)")
    sampling.add_argument("--models", default="resnet8", help="scorers, e.g. resnet8,resnet18")
    sampling.add_argument("--output", default="bench.json", help="JSON results file")
    sampling.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")
    sampling.add_argument("--batch-size", type=int, default=512)
    sampling.add_argument("--dropout", type=float, default=0.3)
    sampling.add_argument("--seed", type=int, default=0)
    sampling.add_argument(
        "--bf16",
        choices=("cuda", "always", "off"),
        default="cuda",
        help="bf16 autocast: on CUDA only (default), everywhere, or off",
    )
    sampling.add_argument(
        "--channels-last",
        choices=("cuda", "always", "off"),
        default="cuda",
        help="channels_last layout: on CUDA only (default), everywhere, or off",
    )
    sampling.set_defaults(handler=cmd_bench_sampling)


def cmd_bench_sampling(args: argparse.Namespace) -> int:
    """Run the sampling bench, print the table, write the JSON."""
    from fedal.app.bench.render import render_sampling_report
    from fedal.app.bench.sampling import run_sampling_bench

    settings = _sampling_settings(args)
    report = run_sampling_bench(settings, progress=lambda line: print(line, file=sys.stderr))
    render_sampling_report(report)
    Path(args.output).write_text(json.dumps(report.as_dict(), indent=2))
    print(args.output)
    return 0


def _sampling_settings(args: argparse.Namespace) -> SamplingSettings:
    """The settings ``args`` give; bad sizes and unknown strategy or model names raise a
    one-line :class:`fedal.config.ConfigError`."""
    from fedal.app.bench.sampling import SamplingSettings
    from fedal.models import available_models
    from strategies import strategy_class

    settings = SamplingSettings(
        pool=args.pool,
        budget=args.budget,
        labelled=args.labelled,
        strategies=_split(args.strategies),
        models=_split(args.models),
        device=args.device,
        batch_size=args.batch_size,
        dropout=args.dropout,
        seed=args.seed,
        bf16=args.bf16,
        channels_last=args.channels_last,
    )
    sizes = {"pool": settings.pool, "batch-size": settings.batch_size}
    counts = {"budget": settings.budget, "labelled": settings.labelled}
    bad = [f"--{k} {v} (must be >= 1)" for k, v in sizes.items() if v < 1]
    bad += [f"--{k} {v} (must be >= 0)" for k, v in counts.items() if v < 0]
    if not 0 <= settings.dropout < 1:
        bad.append(f"--dropout {settings.dropout} (must be in [0, 1))")
    if bad:
        raise ConfigError(f"bench sampling: {'; '.join(bad)}")

    for name in settings.strategies:
        try:
            strategy_class(name)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    unknown = sorted(set(settings.models) - set(available_models()))
    if unknown:
        raise ConfigError(f"unknown model(s) {unknown}; available: {', '.join(available_models())}")
    return settings


# -------------------------------------------------------------------------- federation


def _add_federation_parser(kinds: argparse._SubParsersAction) -> None:
    federation = kinds.add_parser(
        "federation", help="run one simulation and account for its time, phase by phase"
    )
    federation.add_argument("config", help="experiment TOML")
    federation.add_argument("--clients", type=int, help="number of clients (data.num_clients)")
    federation.add_argument("--rounds", type=int, help="federated rounds")
    federation.add_argument("--strategy", help="query strategy name")
    federation.add_argument("--set", action="append", metavar="KEY=VALUE")
    federation.add_argument("--ray-address", help="join an existing Ray cluster")
    federation.add_argument("--output", default="bench.json", help="JSON results file")
    federation.set_defaults(handler=cmd_bench_federation)


def cmd_bench_federation(args: argparse.Namespace) -> int:
    """Validate the config (before Ray starts), run the bench, print the table, write JSON."""
    from fedal.app.arguments import config_from_args
    from fedal.app.bench.federation import run_federation_bench, write_report
    from fedal.app.bench.render import render_federation_report
    from fedal.app.preflight import preflight

    config = config_from_args(args)
    preflight(config)
    report = run_federation_bench(config, args.config, args.ray_address)
    render_federation_report(report)
    write_report(report, Path(args.output))
    print(args.output)
    return 0


def _split(names: str | None) -> tuple[str, ...]:
    """The names in a comma-separated option, blanks dropped."""
    return tuple(name.strip() for name in (names or "").split(",") if name.strip())
