"""Split a training set across clients with the partitioners of ``flwr-datasets``.

The partitioners run offline on an in-memory ``datasets.Dataset`` built from the label
array, with an ``index`` column that maps every row back to the training array. Every
scheme is deterministic for a seed and puts every sample in exactly one client.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import datasets
import numpy as np
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    Partitioner,
    PathologicalPartitioner,
    SizePartitioner,
)

from fedal.config import ConfigError, DataSection

datasets.disable_progress_bars()

PartitionerFactory = Callable[[DataSection, np.ndarray, int], Partitioner]


def _iid(data: DataSection, labels: np.ndarray, seed: int) -> Partitioner:
    """Equal-size random shards (rows are shuffled by seed before sharding)."""
    return IidPartitioner(num_partitions=data.num_clients)


def _dirichlet(data: DataSection, labels: np.ndarray, seed: int) -> Partitioner:
    """Label skew: per-class client proportions drawn from Dirichlet(alpha)."""
    return DirichletPartitioner(
        num_partitions=data.num_clients,
        partition_by="label",
        alpha=data.alpha,
        min_partition_size=1,
        self_balancing=False,
        shuffle=True,
        seed=seed,
    )


def _pathological(data: DataSection, labels: np.ndarray, seed: int) -> Partitioner:
    """Each client holds samples of ``classes_per_client`` classes only."""
    return PathologicalPartitioner(
        num_partitions=data.num_clients,
        partition_by="label",
        num_classes_per_partition=data.classes_per_client,
        class_assignment_mode="first-deterministic",
        shuffle=True,
        seed=seed,
    )


def _quantity(data: DataSection, labels: np.ndarray, seed: int) -> Partitioner:
    """Size skew: one sample per client plus a share of the rest proportional to
    log-normal(0, quantity_sigma) draws."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    weights = rng.lognormal(0.0, data.quantity_sigma, size=data.num_clients)
    spare = len(labels) - data.num_clients  # every client gets one sample, then its share
    sizes = 1 + np.floor(weights / weights.sum() * spare).astype(int)
    sizes[np.argmax(sizes)] += len(labels) - sizes.sum()
    return SizePartitioner(partition_sizes=[int(size) for size in sizes])


PARTITIONERS: dict[str, PartitionerFactory] = {
    "iid": _iid,
    "dirichlet": _dirichlet,
    "pathological": _pathological,
    "quantity": _quantity,
}

SHUFFLED_BEFORE_PARTITION = {
    "iid",
    "quantity",
}  # their flwr-datasets partitioners shard rows in order


def _scheme_settings(data: DataSection) -> str:
    """The fields that shape ``data.partition``'s split, as ``data.key=value`` text."""
    fields = {
        "iid": (),
        "dirichlet": ("alpha",),
        "pathological": ("classes_per_client",),
        "quantity": ("quantity_sigma",),
    }[data.partition]
    return ", ".join(f"data.{name}={getattr(data, name)}" for name in ("num_clients", *fields))


def partition_indices(labels: np.ndarray, data: DataSection, seed: int) -> list[np.ndarray]:
    """Row indices of ``labels`` held by each client (sorted), one array per client.

    Raises :class:`ConfigError` when the scheme cannot place every sample (e.g. a
    pathological split whose clients together cover fewer classes than exist).
    """
    if data.num_clients > len(labels):
        raise ConfigError(
            f"data.num_clients: {data.num_clients} clients but only {len(labels)} training "
            "samples (allowed: at most one client per sample)"
        )
    order = np.arange(len(labels), dtype=np.int64)
    if data.partition in SHUFFLED_BEFORE_PARTITION:
        order = np.random.default_rng(np.random.SeedSequence([seed, 3])).permutation(order)
    table = datasets.Dataset.from_dict({"label": labels[order].astype(np.int64), "index": order})
    try:
        partitioner = PARTITIONERS[data.partition](data, labels, seed)
        partitioner.dataset = table
        shards = [
            np.sort(np.asarray(partitioner.load_partition(client)["index"], dtype=np.int64))
            for client in range(data.num_clients)
        ]
    except ValueError as error:  # flwr-datasets rejects the settings for this data
        reason = " ".join(str(error).split())
        raise ConfigError(
            f"data.partition: '{data.partition}' cannot split {len(labels)} samples with "
            f"{_scheme_settings(data)}: {reason} (allowed: settings flwr-datasets can satisfy)"
        ) from None
    placed = sum(len(shard) for shard in shards)
    if placed != len(labels):
        raise ConfigError(
            f"data.partition: '{data.partition}' placed {placed} of {len(labels)} samples "
            f"with num_clients={data.num_clients}, classes_per_client={data.classes_per_client} "
            "(allowed: settings whose clients cover every class)"
        )
    return shards


@lru_cache(maxsize=8)
def _cached_partition(labels_bytes: bytes, data: DataSection, seed: int) -> tuple[np.ndarray, ...]:
    labels = np.frombuffer(labels_bytes, dtype=np.int64)
    return tuple(partition_indices(labels, data, seed))


def cached_partition(labels: np.ndarray, data: DataSection, seed: int) -> tuple[np.ndarray, ...]:
    """:func:`partition_indices`, computed once per process for the same inputs."""
    return _cached_partition(np.ascontiguousarray(labels, dtype=np.int64).tobytes(), data, seed)
