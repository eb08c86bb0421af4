"""Tests for fedal.results and fedal.plots: summary metrics, the run directory written by
RunRecorder, and seed grouping in the accuracy-vs-labels plot."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from engine_support import client_report

from fedal.config import ExperimentConfig, from_dict, load_config
from fedal.plots import group_labels, group_runs, plot_runs, run_config
from fedal.reports import ClientCost, ClientReport
from fedal.results import RunRecorder, area_under_curve, labels_to_reach
from fedal.rundir import RunDirectory

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# ----------------------------------------------------------------------------- metrics


def test_area_under_curve_hand_computed() -> None:
    # trapezoids: 10 * (0 + 0.5) / 2 + 20 * (0.5 + 0.5) / 2 = 12.5, over a range of 30
    assert area_under_curve([0, 10, 30], [0.0, 0.5, 0.5]) == pytest.approx(12.5 / 30)
    assert area_under_curve([20, 40], [0.2, 0.6]) == pytest.approx(0.4)
    assert area_under_curve([5, 10, 20], [0.7, 0.7, 0.7]) == pytest.approx(0.7)


def test_area_under_curve_degenerate_curves() -> None:
    assert area_under_curve([50], [0.6]) == 0.6
    assert area_under_curve([50, 50], [0.6, 0.8]) == 0.8
    assert math.isnan(area_under_curve([], []))


def test_labels_to_reach() -> None:
    labels, accuracy = [10, 20, 30, 40], [0.3, 0.6, 0.55, 0.8]
    assert labels_to_reach(labels, accuracy, 0.6) == 20  # reaching exactly counts
    assert labels_to_reach(labels, accuracy, 0.7) == 40
    assert labels_to_reach(labels, accuracy, 0.1) == 10
    assert labels_to_reach(labels, accuracy, 0.9) is None
    assert labels_to_reach([], [], 0.5) is None


# ----------------------------------------------------------------------------- run directory


def _record_run(run_dir: Path, config: ExperimentConfig, accuracy: list[float]) -> RunRecorder:
    """A two-client run: round 0 evaluates only, then each round adds 5 labels per client."""
    recorder = RunRecorder.start(RunDirectory(run_dir), config)
    recorder.record_round(0, 0.1, 2.3, [], elapsed=0.0)
    for server_round, value in enumerate(accuracy, start=1):
        clients = [
            client_report(
                client,
                trained=10 + 5 * (server_round - 1),
                requested=10 + 5 * server_round,
                ledger=[
                    (server_round, 1000 * client + 10 * server_round + k, k % 3) for k in range(5)
                ],
            )
            for client in (1, 0)
        ]
        recorder.record_round(
            server_round, value, 1.0 - value, clients, elapsed=float(server_round)
        )
    return recorder


def _config(strategy: str = "random", seed: int = 0, output_dir: str = "runs") -> ExperimentConfig:
    return load_config(
        None,
        [
            'experiment.name="unit"',
            f"experiment.seed={seed}",
            f'experiment.output_dir="{output_dir}"',
            "experiment.target_accuracy=0.6",
            f'query.strategy="{strategy}"',
            "query.options.k=2",
        ],
    )


def test_run_recorder_writes_a_complete_run_directory(tmp_path: Path) -> None:
    config = _config()
    run_dir = tmp_path / "run"
    summary = _record_run(run_dir, config, [0.4, 0.65, 0.7]).finish()
    run = RunDirectory(run_dir)

    for path in (run.config_file, run.rounds_file, run.ledger_file, run.summary_file):
        assert path.is_file(), path
    with run.config_file.open("rb") as handle:
        assert from_dict(tomllib.load(handle)) == config  # the resolved config round-trips

    rounds = RunDirectory(run_dir).read_rounds()
    assert [row["round"] for row in rounds] == [0, 1, 2, 3]
    assert [row["labels"] for row in rounds] == [0, 20, 30, 40]
    assert [row["labels_after_query"] for row in rounds] == [0, 30, 40, 50]
    assert rounds[2]["test_accuracy"] == 0.65
    assert rounds[1]["clients"][0] == {
        "client": 0,
        "num-examples": 10,
        "labels-used": 15,
        "new-labels": 5,
        "new-noisy": 1,
        "candidates-left": 100,
        "budget-short": 0,
        "train-loss": 0.5,
        "train-seconds": 1.0,
        "finetune-confident": 0,
        "fit-seconds": 0.0,
        "select-seconds": 0.1,
        "selected-class-histogram": [5] + [0] * 9,
        "picked-helper-correct": 0,
        **ClientCost().to_metrics(),
    }  # clients in client order, without the ledger (that is ledger.csv)
    assert ClientReport.from_metrics(rounds[1]["clients"][1]) == dataclasses.replace(
        client_report(1, 10, 15, [(1, 0, 0)] * 5), ledger=()
    )

    ledger = RunDirectory(run_dir).read_ledger()
    assert ledger.shape == (30, 4)  # 3 rounds x 2 clients x 5 labels
    assert ledger.dtype == np.int64
    np.testing.assert_array_equal(ledger[:5, 0], 0)  # clients in order within a round
    np.testing.assert_array_equal(ledger[5:10, 0], 1)
    np.testing.assert_array_equal(ledger[:5], [[0, 1, 10 + k, k % 3] for k in range(5)])
    np.testing.assert_array_equal(ledger[-1], [1, 3, 1034, 1])

    written = run.read_summary()
    assert written == summary
    assert summary["name"] == "unit"
    assert summary["strategy"] == "random"
    assert summary["seed"] == 0
    assert summary["rounds"] == 3  # round 0 (before any training) is not on the curve
    assert summary["final_accuracy"] == 0.7
    assert summary["final_labels"] == 40
    assert summary["labels_to_target"] == 30
    assert summary["auc_accuracy_vs_labels"] == pytest.approx(
        area_under_curve([20, 30, 40], [0.4, 0.65, 0.7])
    )


def test_summary_of_a_run_without_rounds(tmp_path: Path) -> None:
    recorder = RunRecorder.start(RunDirectory(tmp_path / "empty"), _config())
    summary = recorder.summary()
    assert summary["rounds"] == 0
    assert summary["final_accuracy"] is None
    assert summary["auc_accuracy_vs_labels"] is None
    assert summary["labels_to_target"] is None


def test_new_run_dir_is_fresh_and_named(tmp_path: Path) -> None:
    config = _config(strategy="entropy", seed=4, output_dir=str(tmp_path / "out"))
    first, second = RunDirectory.create(config).path, RunDirectory.create(config).path
    assert first != second
    assert first.is_dir() and first.parent == tmp_path / "out"
    assert first.name.startswith("unit-entropy-s4-")


# ----------------------------------------------------------------------------- plots


def test_plot_groups_runs_that_differ_only_by_seed(tmp_path: Path) -> None:
    runs = [
        tmp_path / "random-s0",
        tmp_path / "random-s1",
        tmp_path / "entropy-s0",
    ]
    _record_run(runs[0], _config("random", 0), [0.4, 0.5, 0.6])
    _record_run(runs[1], _config("random", 1, output_dir="elsewhere"), [0.5, 0.6, 0.7])
    _record_run(runs[2], _config("entropy", 0), [0.45, 0.6, 0.75])

    groups = list(group_runs(runs).values())
    assert groups == [runs[:2], runs[2:]]

    output = plot_runs(runs, tmp_path / "plots" / "overlay.png", title="unit")
    assert output == tmp_path / "plots" / "overlay.png"
    png = output.read_bytes()
    assert png.startswith(PNG_MAGIC)
    assert len(png) > 1000


def test_plot_keeps_runs_with_different_settings_apart(tmp_path: Path) -> None:
    base = tmp_path / "base"
    other = tmp_path / "lr"
    _record_run(base, _config(), [0.4, 0.5])
    _record_run(other, _config().replace("training", lr=0.2), [0.4, 0.5])
    assert len(group_runs([base, other])) == 2


def test_legend_names_what_differs_and_not_keys_an_older_run_lacks(tmp_path: Path) -> None:
    """A strategy option one group sets and another leaves at its default is named; a
    setting an older run did not record is not."""
    runs = {}
    for label, options in (("two", ["peers=2"]), ("one", ["peers=1"]), ("no", ["in_class=false"])):
        config = load_config(None, [f"query.options.{option}" for option in options], "psl")
        runs[label] = tmp_path / label
        _record_run(runs[label], config, [0.4, 0.5])
    recorded = runs["two"] / "config.toml"
    older = [line for line in recorded.read_text().splitlines() if not line.startswith("classes =")]
    recorded.write_text("\n".join(older) + "\n")  # written before data.classes existed
    assert "classes" not in run_config(runs["two"])["data"]
    groups = list(group_runs(list(runs.values())).values())
    assert group_labels(groups) == ["psl, peers=2", "psl, peers=1", "psl, in_class=False"]


def test_table_pairs_each_strategy_with_the_reference_by_seed(tmp_path: Path) -> None:
    from fedal.app.sweep import markdown_table, summary_rows

    finals = {"random": [0.60, 0.62, 0.61, 0.63, 0.60, 0.64], "entropy": []}
    finals["entropy"] = [value + 0.02 + 0.01 * seed for seed, value in enumerate(finals["random"])]
    run_dirs = []
    for strategy, values in finals.items():
        for seed, final in enumerate(values):
            run_dir = tmp_path / f"{strategy}-{seed}"
            _record_run(run_dir, _config(strategy, seed), [0.3, final]).finish()
            run_dirs.append(run_dir)
    rows = {row["strategy"]: row for row in summary_rows(run_dirs)}
    assert rows["random"]["vs_final_accuracy"] is None
    paired = rows["entropy"]["vs_final_accuracy"]
    assert paired.n == 6
    assert paired.mean == pytest.approx(0.02 + 0.01 * np.mean(range(6)))
    assert paired.ci_low > 0
    assert paired.wilcoxon_p == pytest.approx(2 / 2**6)  # every seed better: exact p
    table = markdown_table(list(rows.values()))
    assert "Δ final acc vs random" in table
    assert "p=0.031" in table and "n.s." not in table.split("entropy")[1].split("|")[6]
