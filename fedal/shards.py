"""From a config and a loaded dataset to each client's shard, protected mask and first labels.

Everything here is a pure function of (dataset, partition scheme, seed, number of
clients, client id): a client rebuilds exactly the same shard in any process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedal.choices import FOLDER_DATASET
from fedal.config import ExperimentConfig
from fedal.corruptions import experiment_data, noisy_blocks
from fedal.datasets import LoadedDataset, load_dataset
from fedal.image_folder import load_test_folder
from fedal.oracle import Oracle, superclass_confusion
from fedal.partition import cached_partition
from fedal.pool import ClientPool, split_protected

# Independent random streams per purpose, derived from (seed, client, purpose).
PROTECT_STREAM, INITIAL_STREAM, ROUND_STREAM, SUBSET_STREAM = 11, 12, 13, 14
# Pseudo client ids for streams that belong to no client (seed sequences need ids >= 0).
TRAIN_SUBSET_OWNER, TEST_SUBSET_OWNER = 2**31, 2**31 + 1


def client_rng(seed: int, client: int, stream: int, *extra: int) -> np.random.Generator:
    """A numpy generator for one purpose of one client (reproducible anywhere)."""
    return np.random.default_rng(np.random.SeedSequence([seed, client, stream, *extra]))


def training_indices(config: ExperimentConfig, dataset: LoadedDataset) -> np.ndarray:
    """Global training indices in play: all, or a seeded ``data.train_subset`` of them."""
    total = len(dataset.train_y)
    subset = config.data.train_subset
    if subset == 0 or subset >= total:
        return np.arange(total, dtype=np.int64)
    rng = client_rng(config.experiment.seed, TRAIN_SUBSET_OWNER, SUBSET_STREAM)
    return np.sort(rng.choice(total, size=subset, replace=False)).astype(np.int64)


def client_shards(config: ExperimentConfig, dataset: LoadedDataset) -> list[np.ndarray]:
    """Global training indices of every client under the configured partition scheme."""
    in_play = training_indices(config, dataset)
    local = cached_partition(dataset.train_y[in_play], config.data, config.experiment.seed)
    return [in_play[rows] for rows in local]


@dataclass(frozen=True)
class ExperimentData:
    """The experiment's dataset (clean, or with appended noisy examples) and its split."""

    dataset: LoadedDataset
    shards: list[np.ndarray]
    noisy: list[np.ndarray]

    def new_pool(self, config: ExperimentConfig, client: int) -> ClientPool:
        """Client ``client``'s fresh pool (see :func:`new_client_pool`)."""
        return new_client_pool(
            config, self.dataset, client, self.shards[client], self.noisy[client]
        )


def open_count(shard: np.ndarray, protected_fraction: float) -> int:
    """Non-protected samples of a shard (the same rounding as :func:`split_protected`)."""
    return len(shard) - round(protected_fraction * len(shard))


def load_experiment(config: ExperimentConfig) -> ExperimentData:
    """Dataset, client shards and heteroskedastic blocks for ``config`` (cached per process).

    With node folders (``data.dataset = "image-folder"``) the server holds only the test
    set (``data.test_dir``) and no shard: each node brings its own images."""
    data = config.data
    if data.dataset == FOLDER_DATASET:
        test = load_test_folder(
            Path(data.test_dir).expanduser(), data.class_names, data.image_size, data.image_channels
        )
        return ExperimentData(test, [], [])
    clean = load_dataset(data.dataset, data.data_dir or None, config.experiment.seed)
    shards = client_shards(config, clean)
    open_counts = [open_count(shard, data.protected_fraction) for shard in shards]
    if data.corruption == "none":
        return ExperimentData(clean, shards, [np.empty(0, dtype=np.int64) for _ in shards])
    blocks = noisy_blocks(open_counts, data.corruption_share, first_index=len(clean.train_y))
    dataset = experiment_data(config, total_noisy=sum(len(block) for block in blocks))
    return ExperimentData(dataset, shards, blocks)


def make_oracle(config: ExperimentConfig, dataset: LoadedDataset, pool: ClientPool) -> Oracle:
    """The client's annotator: configured noise, refusing this client's protected samples."""
    superclasses = dataset.meta.superclass_of
    confusion = superclass_confusion(superclasses) if superclasses else None
    return Oracle(
        dataset.train_y,
        dataset.meta.num_classes,
        noise=config.oracle.noise,
        rate=config.oracle.rate,
        seed=config.experiment.seed,
        protected=pool.protected,
        confusion=confusion,
    )


def new_client_pool(
    config: ExperimentConfig,
    dataset: LoadedDataset,
    client: int,
    shard: np.ndarray,
    noisy: np.ndarray | None = None,
) -> ClientPool:
    """A client's pool with its seeded protected mask and its initial labelled set.

    The initial set is drawn at random from the non-protected part and labelled by the
    oracle in round 0, so initial labels carry the oracle's noise like later ones.
    ``noisy`` (heteroskedastic benchmark examples) joins the candidates afterwards and is
    never protected.
    """
    seed = config.experiment.seed
    mask = split_protected(
        shard, config.data.protected_fraction, client_rng(seed, client, PROTECT_STREAM)
    )
    candidates = shard[~mask]
    count = min(config.data.initial_labels_per_client, len(candidates))
    chosen = client_rng(seed, client, INITIAL_STREAM).choice(candidates, size=count, replace=False)
    extra = np.empty(0, dtype=np.int64) if noisy is None else noisy
    pool = ClientPool(
        client=client,
        shard=np.concatenate([shard, extra]),
        protected_mask=np.concatenate([mask, np.zeros(len(extra), dtype=bool)]),
    )
    pool.add_labels(chosen, make_oracle(config, dataset, pool).label(chosen), round_number=0)
    return pool


def noisy_in_pool(dataset: LoadedDataset, shard: np.ndarray, appended: np.ndarray) -> int:
    """Deliberately noisy samples a client holds (appended benchmark ones or intrinsic)."""
    if dataset.train_noisy is None:
        return 0
    return int(dataset.train_noisy[np.concatenate([shard, appended])].sum())


def partition_summary(config: ExperimentConfig, experiment: ExperimentData) -> dict[str, Any]:
    """Per-client sizes, class histograms, protected/candidate counts and noisy additions
    (with node folders: the classes and the test set; each node records its own counts)."""
    dataset = experiment.dataset
    if config.data.dataset == FOLDER_DATASET:
        return {
            "dataset": FOLDER_DATASET,
            "classes": list(dataset.meta.class_names),
            "test_images": len(dataset.test_y),
            "num_clients": config.data.num_clients,
            "clients": "each node's own folder: node-<client>.json",
        }
    classes = dataset.meta.num_classes
    fraction = config.data.protected_fraction
    clients = []
    for client, shard in enumerate(experiment.shards):
        protected = round(fraction * len(shard))
        clients.append(
            {
                "client": client,
                "size": len(shard),
                "protected": protected,
                "candidates": len(shard) - protected,
                "noisy": noisy_in_pool(dataset, shard, experiment.noisy[client]),
                "class_histogram": np.bincount(dataset.train_y[shard], minlength=classes).tolist(),
            }
        )
    return {
        "dataset": config.data.dataset,
        "partition": config.data.partition,
        "num_clients": config.data.num_clients,
        "protected_fraction": fraction,
        "corruption": config.data.corruption,
        "seed": config.experiment.seed,
        "clients": clients,
    }
