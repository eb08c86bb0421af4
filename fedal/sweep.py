"""Seed grids: run a config for several strategies and seeds, then tabulate mean ± std."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedal.config import load_config
from fedal.plots import group_runs, run_config
from fedal.results import new_run_dir

SUMMARY_COLUMNS = (
    ("final_accuracy", "final acc"),
    ("auc_accuracy_vs_labels", "AUC"),
    ("clean_share_selected", "clean share"),
)


def run_grid(
    config_path: str,
    strategies: Sequence[str],
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    verbose: bool = False,
) -> list[Path]:
    """Run every (strategy, seed) pair in turn; returns the run directories."""
    from fedal.preflight import preflight
    from fedal.simulation import simulate

    run_dirs = []
    for strategy in strategies:
        for seed in seeds:
            config = load_config(config_path, [*overrides, f"experiment.seed={seed}"], strategy)
            preflight(config)
            run_dir = new_run_dir(config)
            print(f"== {strategy} seed {seed} -> {run_dir}", flush=True)
            simulate(config, run_dir, verbose=verbose)
            run_dirs.append(run_dir)
    return run_dirs


def _mean_std(values: list[float | None]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "n/a"
    return f"{np.mean(present):.4f} ± {np.std(present):.4f}"


def summary_rows(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """One row per group of runs that differ only by seed: mean ± std of the summaries."""
    rows = []
    for runs in group_runs([Path(run) for run in run_dirs]).values():
        summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
        config = run_config(runs[0])
        row: dict[str, Any] = {
            "name": config["experiment"]["name"],
            "strategy": config["query"]["strategy"],
            "seeds": [summary["seed"] for summary in summaries],
            "labels": summaries[0]["final_labels"],
        }
        for key, _ in SUMMARY_COLUMNS:
            row[key] = _mean_std([summary.get(key) for summary in summaries])
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    header = ["experiment", "strategy", "seeds", "labels", *(title for _, title in SUMMARY_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [row["name"], row["strategy"], ",".join(map(str, row["seeds"])), str(row["labels"])]
        cells += [row[key] for key, _ in SUMMARY_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
