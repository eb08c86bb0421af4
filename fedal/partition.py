"""Split a training set across clients with the partitioners of ``flwr-datasets``.

The partitioners run offline on an in-memory ``datasets.Dataset`` built from the label
array, with an ``index`` column that maps every row back to the training array. Every
scheme is deterministic for a seed and puts every sample in exactly one client, except
``shards``: its clients hold ``num_clients * shards_per_client`` equal shards, so the
fewer than ``num_clients * shards_per_client`` samples left over after the last whole
shard (at the end of the label-sorted order) belong to no client.

A split is computed once per machine: :func:`cached_partition` keeps it in memory and on
disk under the fedal cache directory, so Ray workers and deployment processes read the
split the server already computed, and only a process that computes one imports
``datasets`` and ``flwr-datasets`` (about 2 s per process).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedal.config import ConfigError, DataSection
from fedal.datasets import cache_root

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

PartitionerFactory = Callable[[DataSection, np.ndarray, int], "Partitioner"]
LABEL, CLASS_RANK, INDEX = "label", "class_rank", "index"  # the partitioned table's columns


def _iid(data: DataSection, labels: np.ndarray, seed: int) -> Partitioner:
    """Equal-size random shards (rows are shuffled by seed before sharding)."""
    from flwr_datasets.partitioner import IidPartitioner

    return IidPartitioner(num_partitions=data.num_clients)


def _dirichlet(data: DataSection, labels: np.ndarray, seed: int) -> Partitioner:
    """Label skew: per-class client proportions drawn from Dirichlet(alpha)."""
    from flwr_datasets.partitioner import DirichletPartitioner

    return DirichletPartitioner(
        num_partitions=data.num_clients,
        partition_by="label",
        alpha=data.alpha,
        min_partition_size=1,
        self_balancing=False,
        shuffle=True,
        seed=seed,
    )


def _balanced_dirichlet(data: DataSection, labels: np.ndarray, seed: int) -> Partitioner:
    """Equal client sizes (the first ``len % num_clients`` clients hold one more sample),
    each client's class mix drawn from Dirichlet(alpha) (LoGo's ``dir_balance``).

    Partitions by the dense class rank: flwr-datasets' partitioner numbers classes
    ``0..K-1`` by the count of distinct labels, which a subset may not cover.
    """
    from flwr_datasets.partitioner import InnerDirichletPartitioner

    base, extra = divmod(len(labels), data.num_clients)
    return InnerDirichletPartitioner(
        partition_sizes=[base + int(client < extra) for client in range(data.num_clients)],
        partition_by=CLASS_RANK,
        alpha=data.alpha,
        shuffle=True,
        seed=seed,
    )


def _shards(data: DataSection, labels: np.ndarray, seed: int) -> Partitioner:
    """McMahan et al.'s shards: the rows sorted by label are cut into
    ``num_clients * shards_per_client`` equal shards and each client gets
    ``shards_per_client`` of them at random (rows are shuffled by seed first, so a shard
    holds random samples of its classes)."""
    from flwr_datasets.partitioner import ShardPartitioner

    shards = data.num_clients * data.shards_per_client
    if shards > len(labels):
        raise ValueError(f"{shards} shards need at least {shards} samples")
    return ShardPartitioner(
        num_partitions=data.num_clients,
        partition_by=LABEL,
        num_shards_per_partition=data.shards_per_client,
        keep_incomplete_shard=False,
        shuffle=True,
        seed=seed,
    )


def _pathological(data: DataSection, labels: np.ndarray, seed: int) -> Partitioner:
    """Each client holds samples of ``classes_per_client`` classes only."""
    from flwr_datasets.partitioner import PathologicalPartitioner

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
    from flwr_datasets.partitioner import SizePartitioner

    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    weights = rng.lognormal(0.0, data.quantity_sigma, size=data.num_clients)
    spare = len(labels) - data.num_clients  # every client gets one sample, then its share
    sizes = 1 + np.floor(weights / weights.sum() * spare).astype(int)
    sizes[np.argmax(sizes)] += len(labels) - sizes.sum()
    return SizePartitioner(partition_sizes=[int(size) for size in sizes])


PARTITIONERS: dict[str, PartitionerFactory] = {
    "iid": _iid,
    "dirichlet": _dirichlet,
    "balanced-dirichlet": _balanced_dirichlet,
    "pathological": _pathological,
    "shards": _shards,
    "quantity": _quantity,
}

SHUFFLED_BEFORE_PARTITION = {
    "iid",
    "shards",
    "quantity",
}  # their flwr-datasets partitioners shard rows in order (shards: after a stable sort)


def _scheme_settings(data: DataSection) -> str:
    """The fields that shape ``data.partition``'s split, as ``data.key=value`` text."""
    fields = {
        "iid": (),
        "dirichlet": ("alpha",),
        "balanced-dirichlet": ("alpha",),
        "pathological": ("classes_per_client",),
        "shards": ("shards_per_client",),
        "quantity": ("quantity_sigma",),
    }[data.partition]
    return ", ".join(f"data.{name}={getattr(data, name)}" for name in ("num_clients", *fields))


def split_partitioner(
    labels: np.ndarray,
    data: DataSection,
    seed: int,
    class_names: Sequence[str] | None = None,
) -> Partitioner:
    """The configured flwr-datasets partitioner over ``labels``, with every partition
    determined (its table's ``index`` column maps rows back to ``labels``; with
    ``class_names`` its ``label`` column is a ``ClassLabel`` of those names).

    Raises :class:`ConfigError` when flwr-datasets rejects the settings for this data.
    """
    import datasets

    datasets.disable_progress_bars()
    if data.num_clients > len(labels):
        raise ConfigError(
            f"data.num_clients: {data.num_clients} clients but only {len(labels)} training "
            "samples (allowed: at most one client per sample)"
        )
    order = np.arange(len(labels), dtype=np.int64)
    if data.partition in SHUFFLED_BEFORE_PARTITION:
        order = np.random.default_rng(np.random.SeedSequence([seed, 3])).permutation(order)
    ordered = labels[order].astype(np.int64)
    rank = np.unique(ordered, return_inverse=True)[1].astype(np.int64)
    label_type = datasets.ClassLabel(names=list(class_names)) if class_names else None
    features = datasets.Features(
        {
            LABEL: label_type or datasets.Value("int64"),
            CLASS_RANK: datasets.Value("int64"),
            INDEX: datasets.Value("int64"),
        }
    )
    table = datasets.Dataset.from_dict(
        {LABEL: ordered, CLASS_RANK: rank, INDEX: order}, features=features
    )
    try:
        partitioner = PARTITIONERS[data.partition](data, labels, seed)
        partitioner.dataset = table
        with warnings.catch_warnings():  # pyarrow's deprecation inside datasets' sort
            warnings.filterwarnings("ignore", "Specifying null_placement", FutureWarning)
            partitioner.load_partition(0)  # determines every partition
    except ValueError as error:  # flwr-datasets rejects the settings for this data
        reason = " ".join(str(error).split())
        raise ConfigError(
            f"data.partition: '{data.partition}' cannot split {len(labels)} samples with "
            f"{_scheme_settings(data)}: {reason} (allowed: settings flwr-datasets can satisfy)"
        ) from None
    return partitioner


def partition_indices(labels: np.ndarray, data: DataSection, seed: int) -> list[np.ndarray]:
    """Row indices of ``labels`` held by each client (sorted), one array per client.

    Raises :class:`ConfigError` when the scheme cannot place every sample (e.g. a
    pathological split whose clients together cover fewer classes than exist).
    """
    partitioner = split_partitioner(labels, data, seed)
    shards = [
        np.sort(np.asarray(partitioner.load_partition(client)[INDEX], dtype=np.int64))
        for client in range(data.num_clients)
    ]
    placed = sum(len(shard) for shard in shards)
    expected = len(labels)
    if data.partition == "shards":  # the remainder after the last whole shard
        expected -= len(labels) % (data.num_clients * data.shards_per_client)
    if placed != expected:
        raise ConfigError(
            f"data.partition: '{data.partition}' placed {placed} of {len(labels)} samples "
            f"with num_clients={data.num_clients}, classes_per_client={data.classes_per_client} "
            "(allowed: settings whose clients cover every class)"
        )
    return shards


def plot_label_distribution(
    labels: np.ndarray,
    data: DataSection,
    seed: int,
    path: Path,
    title: str,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Save a per-client label-distribution bar chart of the split (flwr-datasets'
    :func:`~flwr_datasets.visualization.plot_label_distributions`) as ``path``; the
    legend names the classes (``class_names``, up to 20 of them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from flwr_datasets.common import telemetry
    from flwr_datasets.visualization import plot_label_distributions

    # the plot helper reports a telemetry event; fedal stays offline unless asked
    telemetry.FLWR_TELEMETRY_ENABLED = os.environ.get("FLWR_TELEMETRY_ENABLED", "0")
    partitioner = split_partitioner(labels, data, seed, class_names)
    figure, _, _ = plot_label_distributions(
        partitioner,
        label_name=LABEL,
        plot_type="bar",
        size_unit="absolute",
        legend=len(np.unique(labels)) <= 20,
        legend_title="class",
        verbose_labels=class_names is not None,
        title=title,
        figsize=(max(6.0, 0.5 * data.num_clients + 2), 4.5),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


@lru_cache(maxsize=8)
def _cached_partition(labels_bytes: bytes, data: DataSection, seed: int) -> tuple[np.ndarray, ...]:
    key = hashlib.sha256(labels_bytes)
    key.update(f"{data.model_dump_json()} {seed} {version('flwr-datasets')}".encode())
    path = cache_root() / "partitions" / f"{key.hexdigest()[:24]}.npz"
    if path.exists():
        with np.load(path) as stored:
            return tuple(stored[f"arr_{k}"] for k in range(data.num_clients))
    labels = np.frombuffer(labels_bytes, dtype=np.int64)
    shards = tuple(partition_indices(labels, data, seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as handle:
        np.savez(handle, *shards)  # arr_0 .. arr_{N-1}, one per client
    os.replace(handle.name, path)  # atomic: readers see no file or the whole one
    return shards


def cached_partition(labels: np.ndarray, data: DataSection, seed: int) -> tuple[np.ndarray, ...]:
    """:func:`partition_indices`, computed once per machine for the same inputs (labels,
    data section, seed, flwr-datasets version): in memory per process, on disk under the
    fedal cache directory's ``partitions/`` for every other process."""
    return _cached_partition(np.ascontiguousarray(labels, dtype=np.int64).tobytes(), data, seed)
