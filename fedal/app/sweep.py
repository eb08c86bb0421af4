"""Seed grids: run a config for several strategies and seeds, then tabulate mean ± std."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedal.config import load_config
from fedal.picks import pick_statistics
from fedal.plots import group_runs, run_config
from fedal.rundir import RunDirectory
from fedal.statistics import PairedComparison, paired_comparison

SUMMARY_COLUMNS = (
    ("final_accuracy", "final acc"),
    ("auc_accuracy_vs_labels", "AUC"),
    ("clean_share_selected", "clean share"),
    ("helper_accuracy_on_picks", "helper acc on picks"),
    ("pick_class_entropy", "pick class entropy"),
)
PAIRED_COLUMNS = (
    ("final_accuracy", "final acc"),
    ("auc_accuracy_vs_labels", "AUC"),
)
DEFAULT_REFERENCE = "random"


def run_grid(
    config_path: str,
    strategies: Sequence[str],
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    verbose: bool = False,
) -> list[Path]:
    """Run every (strategy, seed) pair in turn; returns the run directories."""
    from fedal.app.preflight import preflight
    from fedal.app.simulation import simulate

    run_dirs = []
    for strategy in strategies:
        for seed in seeds:
            config = load_config(config_path, [*overrides, f"experiment.seed={seed}"], strategy)
            preflight(config)
            run = RunDirectory.create(config)
            print(f"== {strategy} seed {seed} -> {run.path}", flush=True)
            simulate(config.replace("experiment", run_dir=str(run.path)), verbose=verbose)
            run_dirs.append(run.path)
    return run_dirs


def _summary_with_picks(run: RunDirectory) -> dict[str, Any]:
    """The run's ``summary.json`` and what its picks were (:mod:`fedal.picks`)."""
    return {**run.read_summary(), **pick_statistics(run.read_rounds())}


def _mean_std(values: list[float | None]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "n/a"
    return f"{np.mean(present):.4f} ± {np.std(present):.4f}"


def summary_rows(
    run_dirs: Sequence[Path], reference: str = DEFAULT_REFERENCE
) -> list[dict[str, Any]]:
    """One row per group of runs that differ only by seed: mean ± std of the summaries,
    and against the ``reference`` strategy's group the paired difference over the seeds
    both ran (mean, 95% t interval, Wilcoxon p; see :mod:`fedal.statistics`)."""
    groups = []
    for runs in group_runs([Path(run) for run in run_dirs]).values():
        summaries = [_summary_with_picks(RunDirectory(run)) for run in runs]
        config = run_config(runs[0])
        groups.append((config, {summary["seed"]: summary for summary in summaries}))
    baseline = next((s for c, s in groups if c["query"]["strategy"] == reference), None)
    rows = []
    for config, by_seed in groups:
        summaries = list(by_seed.values())
        row: dict[str, Any] = {
            "name": config["experiment"]["name"],
            "strategy": config["query"]["strategy"],
            "seeds": list(by_seed),
            "labels": summaries[0]["final_labels"],
        }
        for key, _ in SUMMARY_COLUMNS:
            row[key] = _mean_std([summary.get(key) for summary in summaries])
        for key, _ in PAIRED_COLUMNS:
            row[f"vs_{key}"] = _paired(by_seed, baseline, key)
        rows.append(row)
    return rows


def _paired(
    runs: dict[int, dict[str, Any]], baseline: dict[int, dict[str, Any]] | None, key: str
) -> PairedComparison | None:
    """``runs - baseline`` on ``key`` over the seeds both hold (None without a baseline,
    for the baseline itself, or with fewer than two shared seeds)."""
    if baseline is None or runs is baseline:
        return None
    seeds = sorted(set(runs) & set(baseline))
    if len(seeds) < 2:
        return None
    return paired_comparison(
        [runs[seed][key] for seed in seeds], [baseline[seed][key] for seed in seeds]
    )


def markdown_table(rows: Sequence[dict[str, Any]], reference: str = DEFAULT_REFERENCE) -> str:
    """The rows as a Markdown table; paired columns read "difference [95% CI] p"."""
    header = ["experiment", "strategy", "seeds", "labels", *(title for _, title in SUMMARY_COLUMNS)]
    header += [f"Δ {title} vs {reference}" for _, title in PAIRED_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [row["name"], row["strategy"], ",".join(map(str, row["seeds"])), str(row["labels"])]
        cells += [row[key] for key, _ in SUMMARY_COLUMNS]
        cells += [_describe(row[f"vs_{key}"]) for key, _ in PAIRED_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _describe(comparison: PairedComparison | None) -> str:
    return "-" if comparison is None else comparison.describe(digits=4)
