"""Early, data-independent validation of an :class:`~fedal.config.ExperimentConfig`.

Each rule raises :class:`~fedal.config.ConfigError` with one line naming the field, the
value and what is allowed. Checks that need the data (sizes) live in
:func:`check_against_partition`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedal.config import ConfigError, ExperimentConfig
from fedal.corruptions import CORRUPTIONS
from fedal.oracle import NOISE_MODELS
from fedal.training import OPTIMIZERS, SCHEDULES

PARTITION_SCHEMES = ("iid", "dirichlet", "pathological", "quantity")
SCORING_MODELS = ("helper", "global")
PRIVATE_DATA = ("candidates", "all")
AGGREGATIONS = ("fedavg", "fedprox", "fedavgm")


def _one_of(field: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{field}: {value!r} is not allowed; allowed: {', '.join(allowed)}")


def _check(field: str, value: Any, ok: Callable[[Any], bool], allowed: str) -> None:
    if not ok(value):
        raise ConfigError(f"{field}: {value!r} is not allowed; allowed: {allowed}")


def validate(config: ExperimentConfig) -> None:
    """Check every field that can be checked without loading data."""
    from fedal.datasets import available_datasets
    from fedal.models import available_models

    data, train, query, fed = config.data, config.training, config.query, config.federation
    _one_of("data.dataset", data.dataset, available_datasets())
    _one_of("data.partition", data.partition, PARTITION_SCHEMES)
    _check("data.alpha", data.alpha, lambda v: v > 0, "a number > 0")
    _check("data.classes_per_client", data.classes_per_client, lambda v: v >= 1, "an integer >= 1")
    _check("data.quantity_sigma", data.quantity_sigma, lambda v: v > 0, "a number > 0")
    _check("data.num_clients", data.num_clients, lambda v: v >= 1, "an integer >= 1")
    _check(
        "data.protected_fraction", data.protected_fraction, lambda v: 0 <= v < 1, "0 <= value < 1"
    )
    _check(
        "data.initial_labels_per_client",
        data.initial_labels_per_client,
        lambda v: v >= 0,
        "an integer >= 0",
    )
    _check("data.train_subset", data.train_subset, lambda v: v >= 0, "0 (all) or a positive count")
    _check("data.test_subset", data.test_subset, lambda v: v >= 0, "0 (all) or a positive count")
    _one_of("data.corruption", data.corruption, CORRUPTIONS)
    _check("data.corruption_share", data.corruption_share, lambda v: 0 <= v < 1, "0 <= value < 1")
    _check("data.corruption_unique", data.corruption_unique, lambda v: v >= 1, "an integer >= 1")
    _one_of("oracle.noise", config.oracle.noise, NOISE_MODELS)
    _check("oracle.rate", config.oracle.rate, lambda v: 0 <= v <= 1, "0 <= value <= 1")
    _one_of("model.helper", config.model.helper, available_models())
    _check("model.dropout", config.model.dropout, lambda v: 0 <= v < 1, "0 <= value < 1")
    _check("training.epochs", train.epochs, lambda v: v >= 0, "an integer >= 0")
    _check("training.batch_size", train.batch_size, lambda v: v >= 1, "an integer >= 1")
    _check("training.eval_batch_size", train.eval_batch_size, lambda v: v >= 1, "an integer >= 1")
    _check("training.lr", train.lr, lambda v: v > 0, "a number > 0")
    _check("training.momentum", train.momentum, lambda v: 0 <= v < 1, "0 <= value < 1")
    _check("training.weight_decay", train.weight_decay, lambda v: v >= 0, "a number >= 0")
    _check("training.finetune_gamma", train.finetune_gamma, lambda v: 0 <= v < 1, "0 <= value < 1")
    _check(
        "training.finetune_iterations",
        train.finetune_iterations,
        lambda v: v >= 0,
        "an integer >= 0",
    )
    _check(
        "training.finetune_ema_decay",
        train.finetune_ema_decay,
        lambda v: 0 <= v < 1,
        "0 <= value < 1",
    )
    _one_of("training.optimizer", train.optimizer, OPTIMIZERS)
    _one_of("training.schedule", train.schedule, SCHEDULES)
    _check("query.budget_per_query", query.budget_per_query, lambda v: v >= 0, "an integer >= 0")
    _check("query.query_every", query.query_every, lambda v: v >= 1, "an integer >= 1")
    _check(
        "query.max_labels_per_client",
        query.max_labels_per_client,
        lambda v: v >= 0,
        "0 (no cap) or a positive count",
    )
    _one_of("query.scoring_model", query.scoring_model, SCORING_MODELS)
    _one_of("query.private_data", query.private_data, PRIVATE_DATA)
    _check("federation.rounds", fed.rounds, lambda v: v >= 1, "an integer >= 1")
    _check("federation.fraction_train", fed.fraction_train, lambda v: 0 < v <= 1, "0 < value <= 1")
    _one_of("federation.aggregation", fed.aggregation, AGGREGATIONS)
    _check("federation.client_cpus", fed.client_cpus, lambda v: v > 0, "a number > 0")
    _check("federation.client_gpus", fed.client_gpus, lambda v: 0 <= v <= 1, "0 <= value <= 1")


def check_against_partition(config: ExperimentConfig, shards: Sequence[np.ndarray]) -> None:
    """Data-dependent checks: every client can draw its initial labelled set."""
    from fedal.shards import open_count

    fraction = config.data.protected_fraction
    wanted = config.data.initial_labels_per_client
    for client, shard in enumerate(shards):
        available = open_count(shard, fraction)
        if wanted > available:
            raise ConfigError(
                f"data.initial_labels_per_client: {wanted} exceeds the {available} "
                f"non-protected samples of client {client} (allowed: <= {available})"
            )
