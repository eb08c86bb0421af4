"""Central (single-process) training on a random labelled subset: the sanity check."""

from __future__ import annotations

import time

import numpy as np
import torch

from fedal.config import TrainingSection
from fedal.datasets import load_dataset
from fedal.models import build_for_dataset
from fedal.training import default_device, evaluate, train_supervised
from fedal.views import SampleView


def train_central(
    *,
    dataset_name: str,
    model_name: str,
    labels: int,
    epochs: int,
    seed: int = 0,
    data_dir: str | None = None,
    lr: float = 0.05,
    batch_size: int = 32,
) -> tuple[float, float]:
    """Train on ``labels`` random training samples; return (test accuracy, seconds)."""
    started = time.perf_counter()
    dataset = load_dataset(dataset_name, data_dir, seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(dataset.train_y), size=min(labels, len(dataset.train_y)), replace=False)
    spec = dataset.input_spec
    train_view = SampleView(dataset.train_x, rows, spec, dataset.train_y[rows])
    test_rows = np.arange(len(dataset.test_y))
    test_view = SampleView(dataset.test_x, test_rows, spec, dataset.test_y)
    device = default_device()
    model = build_for_dataset(model_name, dataset).to(device)
    settings = TrainingSection(epochs=epochs, lr=lr, batch_size=batch_size, schedule="cosine")
    train_supervised(model, train_view, settings, device, torch.Generator().manual_seed(seed))
    stats = evaluate(model, test_view, device, batch_size=512)
    return stats.accuracy, time.perf_counter() - started
