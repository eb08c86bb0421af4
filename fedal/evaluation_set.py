"""The central test set: the view the task model is evaluated on, its shards, and the
evaluation of the global arrays on either (by the server, or by a node for its shard).

The server evaluates the whole view after every round; with
``federation.evaluation_shards = S`` it sends the global model to S nodes instead, each
evaluating one shard (:mod:`fedal.app.evaluation`). Shards are contiguous runs of whole
evaluation batches, so every batch a node evaluates is a batch the server would have.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from fedal.compute import compute_context
from fedal.config import ExperimentConfig
from fedal.datasets import LoadedDataset
from fedal.shards import SUBSET_STREAM, TEST_SUBSET_OWNER, client_rng
from fedal.training import EvalSums, evaluation_sums
from fedal.views import SampleView


def central_test_view(config: ExperimentConfig, dataset: LoadedDataset) -> SampleView:
    """The test set (or a seeded ``data.test_subset`` of it) as a labelled view."""
    total = len(dataset.test_y)
    rows = np.arange(total, dtype=np.int64)
    if 0 < config.data.test_subset < total:
        rng = client_rng(config.experiment.seed, TEST_SUBSET_OWNER, SUBSET_STREAM)
        rows = np.sort(rng.choice(total, size=config.data.test_subset, replace=False))
    return SampleView(dataset.test_x, rows, dataset.input_spec, dataset.test_y[rows])


def central_test_shard(view: SampleView, shard: int, shards: int, batch_size: int) -> SampleView:
    """Shard ``shard`` of ``shards`` of the test view: the view's batches of
    ``batch_size`` rows split into ``shards`` contiguous runs as equal as they can be
    (shards beyond the number of batches are empty)."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not one of 0..{shards - 1}")
    batches = -(-len(view) // batch_size)
    first, last = (batches * k // shards * batch_size for k in (shard, shard + 1))
    return view.subset(np.arange(first, min(last, len(view)), dtype=np.int64))


def evaluate_global_arrays(
    model: nn.Module,
    arrays: Mapping[str, torch.Tensor],
    view: SampleView,
    config: ExperimentConfig,
    device: torch.device,
) -> EvalSums:
    """The sums of ``model`` holding the global ``arrays`` (by weight name) on ``view``,
    computing as configured (:mod:`fedal.compute`) in batches of
    ``training.eval_batch_size``."""
    model.load_state_dict(arrays)
    with compute_context(device, config.training):
        return evaluation_sums(model, view, device, config.training.eval_batch_size)
