"""Checks of an :class:`~fedal.config.ExperimentConfig` that need the data.

Everything that can be checked without data is declared on the config's fields
(:mod:`fedal.config`); what depends on the partition (sizes) is checked here, before any
Ray worker starts. Each rule raises :class:`~fedal.schema.ConfigError` with one line
naming the field, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, get_args

import numpy as np

from fedal.choices import ModelName
from fedal.config import ConfigError, ExperimentConfig

if TYPE_CHECKING:
    from fedal.datasets import LoadedDataset


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


def check_against_dataset(config: ExperimentConfig, dataset: LoadedDataset) -> None:
    """Checks that need the clean dataset: the corrupted class exists, and the helper
    takes the dataset's inputs (a forward pass on two samples)."""
    data = config.data
    classes = dataset.meta.num_classes
    if data.corruption == "noisy-class" and not 0 <= data.corruption_class < classes:
        raise ConfigError(
            f"data.corruption_class: {data.corruption_class} is not a class of "
            f"{data.dataset}; allowed: 0 <= value < {classes}"
        )
    if not _takes_inputs(config.model.helper, dataset):
        fitting = [name for name in get_args(ModelName) if _takes_inputs(name, dataset)]
        raise ConfigError(
            f"model.helper: {config.model.helper!r} does not take {data.dataset}'s inputs; "
            f"allowed: {', '.join(fitting)}"
        )


def _takes_inputs(model_name: str, dataset: LoadedDataset) -> bool:
    """Whether ``model_name`` builds for ``dataset`` and classifies two of its samples."""
    import torch

    from fedal.models import build_for_dataset
    from fedal.views import SampleView

    sample = SampleView(dataset.train_x, np.arange(2), dataset.input_spec)
    try:
        with torch.random.fork_rng():
            model = build_for_dataset(model_name, dataset).eval()
            with torch.no_grad():
                logits = model(sample.inputs(slice(None)))
    except (ValueError, RuntimeError):
        return False
    return tuple(logits.shape) == (2, dataset.meta.num_classes)
