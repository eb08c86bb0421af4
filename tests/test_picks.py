"""fedal.picks: the helper's accuracy on a run's picks and the class spread of the picks,
from the round reports the server records, and their columns in ``fedal table``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from engine_support import client_report

from fedal.app.sweep import markdown_table, summary_rows
from fedal.config import load_config
from fedal.picks import pick_statistics
from fedal.reports import ClientReport
from fedal.results import RunRecorder
from fedal.rundir import RunDirectory


def picks(client: int, histogram: tuple[int, ...], helper_correct: int) -> ClientReport:
    """A query round of ``client``: its picks by class, ``helper_correct`` of them right."""
    picked = sum(histogram)
    report = client_report(client, trained=10, requested=10 + picked)
    return dataclasses.replace(
        report,
        new_labels=picked,
        selected_class_histogram=histogram + (0,) * (10 - len(histogram)),
        picked_helper_correct=helper_correct,
    )


def test_helper_accuracy_pools_every_query_and_entropy_sums_each_clients_picks() -> None:
    queries = {1: [picks(0, (4, 0), 1), picks(1, (1, 1), 0)]}
    queries[2] = [picks(0, (0, 4), 2), picks(1, (0, 0, 1, 1), 1)]
    rows = [{"round": 0, "clients": []}] + [
        {"round": r, "clients": [report.to_metrics() for report in reports]}
        for r, reports in queries.items()
    ]
    stats = pick_statistics(rows)
    assert stats["helper_accuracy_on_picks"] == pytest.approx(4 / 12)
    # client 0 picked 4 + 4 of two classes (1 bit), client 1 one of each of four (2 bits)
    assert stats["pick_class_entropy"] == pytest.approx(1.5)


def test_runs_recorded_before_the_count_existed_have_no_helper_accuracy() -> None:
    report = picks(0, (2, 3), 4).to_metrics()
    del report["picked-helper-correct"]
    stats = pick_statistics([{"round": 1, "clients": [report]}])
    assert stats["helper_accuracy_on_picks"] is None
    assert stats["pick_class_entropy"] == pytest.approx(0.9709505944546686)  # H(0.4, 0.6)
    assert pick_statistics([{"round": 0, "clients": []}]) == {
        "helper_accuracy_on_picks": None,
        "pick_class_entropy": None,
    }


def test_table_reports_the_picks_of_each_strategy(tmp_path: Path) -> None:
    """Two seeds per strategy: the helper got 1 of 4 (random) and 3 of 4 (entropy) of
    each round's picks right; random spread its picks over four classes, entropy one."""
    run_dirs = []
    for strategy, histogram, correct in (("random", (1, 1, 1, 1), 1), ("entropy", (4,), 3)):
        for seed in (0, 1):
            config = load_config(None, [f"experiment.seed={seed}"], strategy)
            run_dir = tmp_path / f"{strategy}-{seed}"
            recorder = RunRecorder.start(RunDirectory(run_dir), config)
            recorder.record_round(0, 0.1, 2.3, [], elapsed=0.0)
            for server_round in (1, 2):
                reports = [picks(client, histogram, correct) for client in (0, 1)]
                recorder.record_round(server_round, 0.5, 1.0, reports, elapsed=1.0)
            recorder.finish()
            run_dirs.append(run_dir)
    rows = {row["strategy"]: row for row in summary_rows(run_dirs)}
    assert rows["random"]["helper_accuracy_on_picks"] == "0.2500 ± 0.0000"
    assert rows["random"]["pick_class_entropy"] == "2.0000 ± 0.0000"
    assert rows["entropy"]["helper_accuracy_on_picks"] == "0.7500 ± 0.0000"
    assert rows["entropy"]["pick_class_entropy"] == "0.0000 ± 0.0000"
    table = markdown_table(list(rows.values()))
    assert "| helper acc on picks | pick class entropy |" in table
