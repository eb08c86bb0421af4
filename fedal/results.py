"""The run directory of DESIGN section 8 and the summary metrics.

``<run_dir>/``: ``config.toml`` (resolved), ``partition.json``, ``rounds.jsonl`` (one row
per round), ``ledger.csv`` (client, round, sample index, label given), ``summary.json``
and ``accuracy_vs_labels.png``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from fedal.config import ExperimentConfig

ROUNDS_FILE = "rounds.jsonl"
LEDGER_FILE = "ledger.csv"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.toml"
PLOT_FILE = "accuracy_vs_labels.png"
LEDGER_COLUMNS = ("client", "round", "index", "label")


def new_run_dir(config: ExperimentConfig) -> Path:
    """A fresh directory ``<output_dir>/<name>-<strategy>-s<seed>-<timestamp>``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    name = f"{config.experiment.name}-{config.query.strategy}-s{config.experiment.seed}-{stamp}"
    path = Path(config.experiment.output_dir).resolve() / name
    path.mkdir(parents=True, exist_ok=False)
    return path


def area_under_curve(labels: Sequence[float], accuracy: Sequence[float]) -> float:
    """Normalised area under accuracy vs labels: trapezoids over the label range.

    A single point (or no label growth) gives that point's accuracy.
    """
    x, y = np.asarray(labels, dtype=float), np.asarray(accuracy, dtype=float)
    if len(x) == 0:
        return float("nan")
    if len(x) == 1 or x[-1] == x[0]:
        return float(y[-1])
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0) / (x[-1] - x[0]))


def labels_to_reach(
    labels: Sequence[float], accuracy: Sequence[float], target: float
) -> int | None:
    """Fewest labels at which accuracy first reaches ``target`` (None if never)."""
    for count, value in zip(labels, accuracy, strict=True):
        if value >= target:
            return int(count)
    return None


class RunRecorder:
    """Writes one run directory as rounds complete."""

    def __init__(self, run_dir: Path, config: ExperimentConfig) -> None:
        self.run_dir = run_dir
        self.config = config
        self.rows: list[dict[str, Any]] = []
        self.selected = 0
        self.selected_noisy = 0
        self.ledger_rows = 0
        self.trained_by_client: dict[int, int] = {}
        self.requested_by_client: dict[int, int] = {}
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = config.replace("experiment", resume=False)  # a config to rerun as is
        (run_dir / CONFIG_FILE).write_text(tomli_w.dumps(resolved.to_dict()))
        with (run_dir / LEDGER_FILE).open("w", newline="") as handle:
            csv.writer(handle).writerow(LEDGER_COLUMNS)
        (run_dir / ROUNDS_FILE).write_text("")

    @classmethod
    def resume(
        cls, run_dir: Path, config: ExperimentConfig, through_round: int, ledger_rows: int
    ) -> RunRecorder:
        """Continue ``run_dir`` after round ``through_round``: rounds and ledger rows
        written after that round's checkpoint are dropped, the counters are replayed."""
        rows = [row for row in read_rounds(run_dir) if row["round"] <= through_round]
        ledger = read_ledger(run_dir)[:ledger_rows]
        recorder = cls(run_dir, config)
        with (run_dir / ROUNDS_FILE).open("a") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        with (run_dir / LEDGER_FILE).open("a", newline="") as handle:
            csv.writer(handle).writerows(ledger.tolist())
        recorder.ledger_rows = len(ledger)
        for row in rows:
            recorder._count(row["clients"])
            recorder.rows.append(row)
        return recorder

    def _count(self, clients: list[dict[str, Any]]) -> None:
        """Fold one round's client reports into the running totals."""
        self.selected += sum(int(report["new-labels"]) for report in clients)
        self.selected_noisy += sum(int(report["new-noisy"]) for report in clients)
        for report in clients:
            self.trained_by_client[int(report["client"])] = int(report["num-examples"])
            self.requested_by_client[int(report["client"])] = int(report["labels-used"])

    def record_round(
        self,
        server_round: int,
        accuracy: float,
        loss: float,
        clients: list[dict[str, Any]],
        elapsed: float,
    ) -> dict[str, Any]:
        """Append one round: test metrics, per-client metrics, ledger entries."""
        self._count(clients)
        row = {
            "round": server_round,
            "labels": sum(self.trained_by_client.values()),
            "labels_after_query": sum(self.requested_by_client.values()),
            "selected": self.selected,
            "selected_noisy": self.selected_noisy,
            "test_accuracy": accuracy,
            "test_loss": loss,
            "elapsed_seconds": elapsed,
            "clients": [
                {k: v for k, v in report.items() if not k.startswith("ledger-")}
                for report in clients
            ],
        }
        self.rows.append(row)
        with (self.run_dir / ROUNDS_FILE).open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        self._append_ledger(server_round, clients)
        return row

    def _append_ledger(self, server_round: int, clients: list[dict[str, Any]]) -> None:
        with (self.run_dir / LEDGER_FILE).open("a", newline="") as handle:
            writer = csv.writer(handle)
            for report in sorted(clients, key=lambda r: int(r["client"])):
                entries = zip(
                    report["ledger-round"],
                    report["ledger-index"],
                    report["ledger-label"],
                    strict=True,
                )
                for label_round, index, label in entries:
                    writer.writerow(
                        (int(report["client"]), int(label_round), int(index), int(label))
                    )
                    self.ledger_rows += 1

    def summary(self) -> dict[str, Any]:
        """Final accuracy, normalised AUC of accuracy vs labels, labels to reach the target."""
        curve = [(row["labels"], row["test_accuracy"]) for row in self.rows if row["round"] > 0]
        labels = [point[0] for point in curve]
        accuracy = [point[1] for point in curve]
        target = self.config.experiment.target_accuracy
        return {
            "name": self.config.experiment.name,
            "strategy": self.config.query.strategy,
            "seed": self.config.experiment.seed,
            "rounds": len(curve),
            "final_accuracy": accuracy[-1] if accuracy else None,
            "final_labels": labels[-1] if labels else 0,
            "auc_accuracy_vs_labels": area_under_curve(labels, accuracy) if curve else None,
            "target_accuracy": target,
            "labels_to_target": labels_to_reach(labels, accuracy, target),
            "selected": self.selected,
            "clean_share_selected": (
                1.0 - self.selected_noisy / self.selected if self.selected else None
            ),
        }

    def finish(self) -> dict[str, Any]:
        """Write ``summary.json`` and the accuracy-vs-labels plot; return the summary."""
        from fedal.plots import plot_runs

        summary = self.summary()
        (self.run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        plot_runs([self.run_dir], self.run_dir / PLOT_FILE)
        return summary


def read_rounds(run_dir: Path) -> list[dict[str, Any]]:
    """Parse a run's ``rounds.jsonl``."""
    lines = (run_dir / ROUNDS_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def read_ledger(run_dir: Path) -> np.ndarray:
    """A run's ledger as an int64 array of rows (client, round, index, label)."""
    with (run_dir / LEDGER_FILE).open() as handle:
        rows = list(csv.reader(handle))[1:]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 4)
