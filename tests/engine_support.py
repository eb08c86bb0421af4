"""Helpers for engine tests: tiny on-disk Fashion-MNIST copies and tiny configs."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from fedal.config import ExperimentConfig, load_config
from fedal.datasets import load_dataset
from fedal.reports import ClientReport

TRAIN_COUNT, TEST_COUNT = 900, 300


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the gzip IDX format of the (Fashion-)MNIST files."""
    magic = 2051 if array.ndim == 3 else 2049
    header = struct.pack(">II", magic, array.shape[0]) + b"".join(
        struct.pack(">I", size) for size in array.shape[1:]
    )
    with gzip.open(path, "wb") as handle:
        handle.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_small_fashion_mnist(directory: Path, train_images: np.ndarray | None = None) -> Path:
    """The first samples of the real Fashion-MNIST, written as the four IDX files."""
    full = load_dataset("fashion-mnist")
    images = full.train_x[:TRAIN_COUNT, 0] if train_images is None else train_images
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / "train-images-idx3-ubyte.gz", images)
    write_idx(directory / "train-labels-idx1-ubyte.gz", full.train_y[:TRAIN_COUNT].astype(np.uint8))
    write_idx(directory / "t10k-images-idx3-ubyte.gz", full.test_x[:TEST_COUNT, 0])
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", full.test_y[:TEST_COUNT].astype(np.uint8))
    return directory


def tiny_overrides(data_dir: Path, output_dir: Path) -> list[str]:
    """The ``--set`` values that shrink the demo to a federation that runs in seconds."""
    return [
        f'data.data_dir="{data_dir}"',
        'query.private_data="candidates"',  # strict mode unless a test asks otherwise
        "data.num_clients=3",
        "data.initial_labels_per_client=6",
        "query.budget_per_query=5",
        "federation.rounds=2",
        "training.epochs=1",
        "training.batch_size=8",
        f'experiment.output_dir="{output_dir}"',
        "experiment.save_uploads=true",
    ]


def tiny_config(data_dir: Path, output_dir: Path, *overrides: str) -> ExperimentConfig:
    """3 clients, 2 rounds, small CNN, 1 epoch, entropy in strict mode unless the
    overrides say otherwise: a real federation that runs in seconds."""
    return load_config(
        "experiments/configs/demo.toml",
        [*tiny_overrides(data_dir, output_dir), *overrides],
        strategy="entropy",  # the demo's psl options are dropped with its strategy
    )


def client_report(
    client: int, trained: int, requested: int, ledger: list[tuple[int, int, int]] | None = None
) -> ClientReport:
    """One client's round report as the server receives it (10 classes)."""
    ledger = ledger or []
    return ClientReport(
        client=client,
        num_examples=trained,
        labels_used=requested,
        new_labels=len(ledger),
        new_noisy=1 if ledger else 0,
        candidates_left=100,
        budget_short=False,
        train_loss=0.5,
        train_seconds=1.0,
        finetune_confident=0,
        fit_seconds=0.0,
        select_seconds=0.1,
        selected_class_histogram=(len(ledger),) + (0,) * 9,
        ledger=tuple(ledger),
    )
