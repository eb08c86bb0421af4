"""Checks of an :class:`~fedal.config.ExperimentConfig` that need the data.

Everything that can be checked without data is declared on the config's fields
(:mod:`fedal.config`); what depends on the partition (sizes) is checked here, before any
Ray worker starts. Each rule raises :class:`~fedal.schema.ConfigError` with one line
naming the field, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedal.config import ConfigError, ExperimentConfig


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
