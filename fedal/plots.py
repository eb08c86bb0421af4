"""Accuracy-vs-labels plots; runs that differ only by seed become mean with a std band."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from fedal.rundir import RunDirectory

SEED_FREE_IGNORED = {
    ("experiment", "seed"),
    ("experiment", "output_dir"),
    ("experiment", "run_dir"),
    ("experiment", "name"),
    ("experiment", "checkpoint"),
    ("experiment", "resume"),
}


def run_config(run_dir: Path) -> dict[str, Any]:
    """The recorded config's tables (not validated: runs of older versions still plot)."""
    return RunDirectory(run_dir).read_config_tables()


def group_key(config: dict) -> str:
    """Canonical text of a config without seed, output dir and run name."""
    stripped = {
        section: {k: v for k, v in values.items() if (section, k) not in SEED_FREE_IGNORED}
        for section, values in config.items()
    }
    return json.dumps(stripped, sort_keys=True)


def _curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = [row for row in RunDirectory(run_dir).read_rounds() if row["round"] > 0]
    return (
        np.array([row["labels"] for row in rows], dtype=float),
        np.array([row["test_accuracy"] for row in rows], dtype=float),
    )


def group_runs(run_dirs: Sequence[Path]) -> dict[str, list[Path]]:
    """Runs grouped by everything but the seed, in first-seen order."""
    groups: dict[str, list[Path]] = {}
    for run_dir in run_dirs:
        groups.setdefault(group_key(run_config(run_dir)), []).append(run_dir)
    return groups


def _flat_settings(config: dict) -> dict[str, object]:
    """``section.key`` (and ``query.options.key``) -> value, seed-free."""
    flat: dict[str, object] = {}
    for section, values in config.items():
        for key, value in values.items():
            if (section, key) in SEED_FREE_IGNORED:
                continue
            if isinstance(value, dict):
                flat.update({f"{section}.{key}.{k}": v for k, v in value.items()})
            else:
                flat[f"{section}.{key}"] = value
    return flat


def group_labels(groups: Sequence[list[Path]]) -> list[str]:
    """Legend labels: the strategy, plus what differs between groups of the same strategy.

    A strategy option a group does not record is its default, so recorded vs absent is a
    difference (shown where recorded); any other setting a group lacks was written by an
    older version (before that setting existed), which is not a difference."""
    settings = [_flat_settings(run_config(runs[0])) for runs in groups]
    labels = []
    for runs, flat in zip(groups, settings, strict=True):
        peers = [other for other in settings if other["query.strategy"] == flat["query.strategy"]]
        keys = sorted({key for other in peers for key in other})
        varying = [key for key in keys if _differs(key, peers)]
        parts = [str(flat["query.strategy"])]
        parts += [f"{key.rsplit('.', 1)[-1]}={flat[key]}" for key in varying if key in flat]
        label = ", ".join(parts)
        labels.append(f"{label} (n={len(runs)})" if len(runs) > 1 else label)
    return labels


def _differs(key: str, settings: Sequence[dict[str, object]]) -> bool:
    values = {repr(flat[key]) if key in flat else None for flat in settings}
    if not key.startswith("query.options."):
        values.discard(None)
    return len(values) > 1


def plot_runs(run_dirs: Sequence[Path], output: Path, title: str | None = None) -> Path:
    """Overlay runs (mean and std band per seed group) and save a PNG."""
    run_dirs = [Path(run_dir) for run_dir in run_dirs]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    groups = list(group_runs(run_dirs).values())
    for runs, legend in zip(groups, group_labels(groups), strict=True):
        curves = [_curve(run) for run in runs]
        length = min(len(x) for x, _ in curves)
        labels = np.mean([x[:length] for x, _ in curves], axis=0)
        accuracy = np.array([y[:length] for _, y in curves])
        mean = accuracy.mean(axis=0)
        (line,) = axes.plot(labels, mean, marker="o", markersize=3, label=legend)
        if len(runs) > 1:
            std = accuracy.std(axis=0)
            axes.fill_between(labels, mean - std, mean + std, alpha=0.2, color=line.get_color())
    axes.set_xlabel("labelled samples (all clients)")
    axes.set_ylabel("test accuracy")
    axes.set_title(title or "Accuracy vs labels")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output


def plot_selection(run_dir: Path, output: Path) -> Path:
    """2-D toys: all training points by given label, the run's labelled points on top.

    Points of the dataset's noisy region are drawn with crosses, clean ones with dots, so
    where a strategy spent its labels is visible at a glance.
    """
    from fedal.shards import load_experiment

    run = RunDirectory(run_dir)
    config = run.read_config()
    dataset = load_experiment(config).dataset
    if dataset.meta.image_size is not None:
        raise ValueError(f"{config.data.dataset}: selection plots need a 2-D toy dataset")
    ledger = run.read_ledger()
    queried = ledger[ledger[:, 1] > 0, 2]
    initial = ledger[ledger[:, 1] == 0, 2]
    noisy = (
        dataset.train_noisy
        if dataset.train_noisy is not None
        else np.zeros(len(dataset.train_y), bool)
    )
    figure, axes = plt.subplots(figsize=(7, 4.5))
    points = dataset.train_x
    axes.scatter(points[:, 0], points[:, 1], c=dataset.train_y, cmap="viridis", s=6, alpha=0.25)
    for rows, marker, name in (
        (queried[~noisy[queried]], "o", "selected (clean)"),
        (queried[noisy[queried]], "x", "selected (noisy)"),
        (initial, "s", "initial"),
    ):
        axes.scatter(
            points[rows, 0],
            points[rows, 1],
            c="red" if marker != "s" else "black",
            marker=marker,
            s=28,
            label=f"{name}: {len(rows)}",
        )
    clean = 1.0 - noisy[queried].mean() if len(queried) else float("nan")
    axes.set_title(f"{config.query.strategy}: {clean:.0%} of selected samples are clean")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output
