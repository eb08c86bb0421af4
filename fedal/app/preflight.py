"""Checks that run before any Ray worker starts: names, options, data-dependent limits.

Part of the application layer (with :mod:`fedal.cli`, :mod:`fedal.app.server` and
:mod:`fedal.app.simulation`): it may import the query strategies to validate their names
and options.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from fedal.config import ConfigError, ExperimentConfig
from fedal.datasets import load_dataset
from fedal.shards import load_experiment, partition_summary
from fedal.validation import check_against_dataset, check_against_partition


def check_strategy(config: ExperimentConfig) -> None:
    """The strategy exists, accepts its options (errors list what exists) and gets the
    model(s) it scores with (``needs_dropout``, ``scoring_models``)."""
    from strategies import build_strategy

    try:
        strategy = build_strategy(config.query.strategy, config.query.options)
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from None
    if strategy.needs_dropout and config.model.dropout == 0:
        raise ConfigError(
            f"model.dropout: 0.0 is not allowed with query.strategy {strategy.name!r} "
            "(Monte-Carlo dropout needs dropout in the model); allowed: 0 < value < 1, e.g. 0.3"
        )
    scoring = config.query.scoring_model
    if scoring not in strategy.scoring_models:
        allowed = ", ".join(repr(value) for value in strategy.scoring_models)
        raise ConfigError(
            f"query.scoring_model: {scoring!r} is not allowed with query.strategy "
            f"{strategy.name!r}; allowed: {allowed}"
        )


def check_aggregation(config: ExperimentConfig) -> None:
    """SCAFFOLD's option II (Karimireddy et al. 2020, Algorithm 1, line 12) recovers the
    clients' mean corrected gradient from (x - y_i) / (K eta_l), which holds only for K
    plain SGD steps at the constant rate eta_l on the supervised loss: refuse anything
    else in one line."""
    if config.federation.aggregation != "scaffold":
        return
    training = config.training
    refusals = [
        (training.optimizer != "sgd", f"training.optimizer: {training.optimizer!r}", "'sgd'"),
        (training.momentum > 0, f"training.momentum: {training.momentum}", "0"),
        (
            training.schedule != "constant",
            f"training.schedule: {training.schedule!r}",
            "'constant'",
        ),
        (training.finetune, "training.finetune: true", "false"),
    ]
    for refused, setting, allowed in refusals:
        if refused:
            raise ConfigError(
                f"{setting} is not allowed with federation.aggregation 'scaffold' (its "
                f"control variates assume plain SGD steps at a constant rate); allowed: {allowed}"
            )


def checked_config(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` once its strategy's name and options and its aggregation's training
    settings passed (the edge check of ``fedal run`` and of the ServerApp under
    ``flwr run``)."""
    check_strategy(config)
    check_aggregation(config)
    return config


def preflight(config: ExperimentConfig) -> dict[str, Any]:
    """Validate strategy, model and partition against the data; return the partition
    summary."""
    check_strategy(config)
    check_aggregation(config)
    data = config.data
    check_against_dataset(
        config, load_dataset(data.dataset, data.data_dir or None, config.experiment.seed)
    )
    experiment = load_experiment(config)
    check_against_partition(config, experiment.shards)
    return partition_summary(config, experiment)


def render_partition(summary: dict[str, Any], console: Console | None = None) -> None:
    """Print a partition summary as a table."""
    table = Table(
        title=f"{summary['dataset']} | {summary['partition']} | "
        f"{summary['num_clients']} clients | protected {summary['protected_fraction']:.0%}"
    )
    columns = ("client", "size", "protected", "candidates", "noisy", "class histogram")
    for column in columns:
        table.add_column(column, justify="right" if column != "class histogram" else "left")
    for client in summary["clients"]:
        table.add_row(
            str(client["client"]),
            str(client["size"]),
            str(client["protected"]),
            str(client["candidates"]),
            str(client["noisy"]),
            " ".join(str(count) for count in client["class_histogram"]),
        )
    table.caption = f"{sum(client['size'] for client in summary['clients'])} samples placed"
    (console or Console()).print(table)
