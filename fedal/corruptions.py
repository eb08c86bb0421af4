"""Heteroskedastic benchmarks of the LHD paper (section 3), added to every client's pool.

An experiment's training set is the clean dataset plus N appended noisy examples with
purely random labels (the oracle answers those labels). ``train_noisy`` marks them.

- ``noisy-blank``: solid black images (K = 1), label y ~ U(classes) per example.
- ``noisy-diverse``: K = 100 types, each a random solid colour with three label choices
  unique to it; every example is a random type with a label drawn from its three.
- ``noisy-class``: K images of one class (``data.corruption_class``), repeated at random
  to N examples, each copy with a uniformly random label.

Each client receives its own block of noisy examples, sized so that they make up
``data.corruption_share`` of its candidate pool; they are never protected.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import get_args

import numpy as np

from fedal.choices import Corruption
from fedal.config import ConfigError, DataSection, ExperimentConfig
from fedal.datasets import LoadedDataset, load_dataset

CORRUPTIONS = get_args(Corruption)
DIVERSE_TYPES, DIVERSE_CHOICES = 100, 3
CORRUPTION_STREAM = 21


def noisy_count(open_count: int, share: float) -> int:
    """Noisy examples to add so they form ``share`` of a pool of ``open_count`` clean ones."""
    return round(share * open_count / (1.0 - share))


def _blank(clean: LoadedDataset, count: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    images = np.zeros((count, *clean.train_x.shape[1:]), dtype=np.uint8)
    return images, rng.integers(0, clean.meta.num_classes, size=count)


def _diverse(clean: LoadedDataset, count: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    channels = clean.train_x.shape[1]
    codes = rng.choice(256**channels, size=DIVERSE_TYPES, replace=False)  # distinct colours
    colours = np.stack([(codes >> (8 * c)) & 255 for c in range(channels)], axis=1)
    choices = np.stack(
        [rng.choice(clean.meta.num_classes, DIVERSE_CHOICES, replace=False) for _ in colours]
    )
    kinds = rng.integers(0, DIVERSE_TYPES, size=count)
    images = np.broadcast_to(
        colours[kinds][:, :, None, None].astype(np.uint8), (count, *clean.train_x.shape[1:])
    ).copy()
    labels = choices[kinds, rng.integers(0, DIVERSE_CHOICES, size=count)]
    return images, labels


def _one_class(
    clean: LoadedDataset, count: int, rng: np.random.Generator, data: DataSection
) -> tuple[np.ndarray, ...]:
    members = np.flatnonzero(clean.train_y == data.corruption_class)
    unique = rng.choice(members, size=min(data.corruption_unique, len(members)), replace=False)
    sources = unique[rng.integers(0, len(unique), size=count)]
    return clean.train_x[sources].copy(), rng.integers(0, clean.meta.num_classes, size=count)


def _noisy_examples(
    clean: LoadedDataset, data: DataSection, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, CORRUPTION_STREAM]))
    if data.corruption == "noisy-blank":
        images, labels = _blank(clean, count, rng)
    elif data.corruption == "noisy-diverse":
        images, labels = _diverse(clean, count, rng)
    else:
        images, labels = _one_class(clean, count, rng, data)
    return images, labels.astype(np.int64)


def corrupted(
    clean: LoadedDataset, data: DataSection, total_noisy: int, seed: int
) -> LoadedDataset:
    """The clean dataset with ``total_noisy`` noisy examples appended to the training set."""
    if clean.meta.image_size is None:
        raise ConfigError(
            f"data.corruption: {data.corruption!r} needs an image dataset, not {data.dataset!r}"
        )
    images, labels = _noisy_examples(clean, data, total_noisy, seed)
    noisy = np.zeros(len(clean.train_y) + total_noisy, dtype=bool)
    noisy[len(clean.train_y) :] = True
    return replace(
        clean,
        train_x=np.concatenate([clean.train_x, images]),
        train_y=np.concatenate([clean.train_y, labels]),
        train_noisy=noisy,
    )


@lru_cache(maxsize=4)
def _cached_experiment_data(data: DataSection, seed: int, total_noisy: int) -> LoadedDataset:
    clean = load_dataset(data.dataset, data.data_dir or None, seed)
    if data.corruption == "none":
        return clean
    return corrupted(clean, data, total_noisy, seed)


def experiment_data(config: ExperimentConfig, total_noisy: int) -> LoadedDataset:
    """The experiment's dataset (corrupted as configured), once per process."""
    return _cached_experiment_data(config.data, config.experiment.seed, total_noisy)


def noisy_blocks(open_counts: list[int], share: float, first_index: int) -> list[np.ndarray]:
    """Consecutive blocks of appended noisy indices, one per client, sized by its pool."""
    blocks, start = [], first_index
    for open_count in open_counts:
        count = noisy_count(open_count, share)
        blocks.append(np.arange(start, start + count, dtype=np.int64))
        start += count
    return blocks
