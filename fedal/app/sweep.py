"""Seed grids: run a config for several strategies and seeds, then tabulate mean ± std."""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedal.config import ConfigError, ExperimentConfig, load_config
from fedal.picks import pick_statistics
from fedal.plots import group_runs, run_config
from fedal.resume import BOOKKEEPING, RESOURCES, changed_settings
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


@dataclass(frozen=True)
class Variant:
    """A named set of overrides run beside the config as written; its runs carry the
    experiment name ``<name>-<variant>`` (so tables and pairing tell them apart)."""

    name: str
    overrides: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``NAME: KEY=VALUE [KEY=VALUE ...]`` (values quoted as in a shell)."""
        name, separator, rest = text.partition(":")
        overrides = tuple(shlex.split(rest))
        if not separator or not re.fullmatch(r"[A-Za-z0-9_.]+", name.strip()) or not overrides:
            raise ConfigError(
                f"--variant {text!r}: write NAME: KEY=VALUE [KEY=VALUE ...] "
                "(NAME of letters, digits, '_' and '.')"
            )
        return cls(name.strip(), overrides)


AS_WRITTEN = Variant("", ())


def run_grid(
    config_path: str,
    strategies: Sequence[str],
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    verbose: bool = False,
    variants: Sequence[Variant] = (AS_WRITTEN,),
    into: Path | None = None,
) -> list[Path]:
    """Run every (seed, variant, strategy) in that order, so that a grid stopped early
    holds whole seeds to pair; returns the run directories.

    Without ``into`` each run gets a new directory under ``experiment.output_dir``. With
    it, run ``<variant>-<strategy>-s<seed>`` (``<strategy>-s<seed>`` as written) lives in
    ``into``: a finished one (with its summary) is kept and not run again, so the same
    command continues a stopped grid; an unfinished one is started over."""
    from fedal.app.preflight import preflight
    from fedal.app.simulation import simulate

    run_dirs = []
    for seed in seeds:
        for variant in variants:
            for strategy in strategies:
                settings = [*overrides, *variant.overrides, f"experiment.seed={seed}"]
                config = load_config(config_path, settings, strategy)
                if variant.name:
                    name = f"{config.experiment.name}-{variant.name}"
                    config = config.replace("experiment", name=name)
                preflight(config)
                if into is None:
                    run = RunDirectory.create(config)
                else:
                    prefix = f"{variant.name}-" if variant.name else ""
                    run = _grid_slot(into / f"{prefix}{strategy}-s{seed}")
                    if run.summary_file.is_file():
                        _check_kept(run, config)
                        print(f"== {strategy} seed {seed}: kept {run.path}", flush=True)
                        run_dirs.append(run.path)
                        continue
                print(f"== {strategy} seed {seed} -> {run.path}", flush=True)
                simulate(config.replace("experiment", run_dir=str(run.path)), verbose=verbose)
                run_dirs.append(run.path)
    return run_dirs


def _check_kept(run: RunDirectory, requested: ExperimentConfig) -> None:
    """A finished run stands for the requested one only with the same settings (client
    resources and where runs live aside)."""
    detail = changed_settings(run.read_config(), requested, RESOURCES | BOOKKEEPING)
    if detail:
        raise ConfigError(
            f"{run.path} holds a finished run with other settings ({detail}); "
            "choose another --into or move that run away"
        )


def _grid_slot(path: Path) -> RunDirectory:
    """The run directory at ``path``: finished, or empty and ready for a new run (an
    unfinished run there is removed; anything that is not a run is refused)."""
    run = RunDirectory(path)
    if not path.exists() or run.summary_file.is_file():
        return run
    entries = [entry for entry in path.iterdir() if entry.name != ".lock"]
    if entries and not run.holds_run:
        raise ConfigError(f"{path} holds files but no fedal run; move them or choose --into")
    if not entries:
        return run
    with run.lock():
        print(f"== starting over the unfinished run in {path}", flush=True)
        for entry in entries:
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    return run


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
    and against the ``reference`` group the paired difference over the seeds both ran
    (mean, 95% t interval, Wilcoxon p; see :mod:`fedal.statistics`).

    ``reference`` names a strategy, an experiment name or ``EXPERIMENT/STRATEGY``; each
    group pairs with the matching group of its own experiment where there is exactly one,
    else with the only matching group of all (an ablation against its base run:
    ``psl-federated-cpu/psl``), else with none."""
    groups: list[tuple[str, str, dict[int, dict[str, Any]]]] = []
    for runs in group_runs([Path(run) for run in run_dirs]).values():
        summaries = [_summary_with_picks(RunDirectory(run)) for run in runs]
        config = run_config(runs[0])
        name, strategy = config["experiment"]["name"], config["query"]["strategy"]
        groups.append((name, strategy, {summary["seed"]: summary for summary in summaries}))
    matches = [
        (name, by_seed)
        for name, strategy, by_seed in groups
        if reference in (strategy, name, f"{name}/{strategy}")
    ]
    rows = []
    for name, strategy, by_seed in groups:
        own = [seeds for experiment, seeds in matches if experiment == name]
        candidates = own if len(own) == 1 else [seeds for _, seeds in matches]
        baseline = candidates[0] if len(candidates) == 1 else None
        summaries = list(by_seed.values())
        row: dict[str, Any] = {
            "name": name,
            "strategy": strategy,
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
