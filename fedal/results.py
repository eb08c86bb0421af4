"""Per-round results of a run and its summary metrics (DESIGN section 8).

:class:`RunRecorder` writes ``rounds.jsonl`` and ``ledger.csv`` of a
:class:`~fedal.rundir.RunDirectory` as rounds complete, from the clients' typed
:class:`~fedal.reports.ClientReport` s, and the summary at the end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedal.config import ExperimentConfig
from fedal.reports import ClientReport
from fedal.rundir import RunDirectory


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


@dataclass(frozen=True)
class DroppedClient:
    """A client drawn for a round whose reply the round went without."""

    client: int
    reason: str


class RunRecorder:
    """Writes the results files of one run directory as rounds complete."""

    def __init__(self, run: RunDirectory, config: ExperimentConfig) -> None:
        self.run = run
        self.config = config
        self.rows: list[dict[str, Any]] = []
        self.selected = 0
        self.selected_noisy = 0
        self.ledger_rows = 0
        self.ledger_by_client: dict[int, int] = {}
        self.trained_by_client: dict[int, int] = {}
        self.requested_by_client: dict[int, int] = {}

    @classmethod
    def start(cls, run: RunDirectory, config: ExperimentConfig) -> RunRecorder:
        """A new run: the resolved config and empty results files."""
        run.write_config(config)
        run.start_results()
        return cls(run, config)

    @classmethod
    def resume(
        cls, run: RunDirectory, config: ExperimentConfig, through_round: int, ledger_rows: int
    ) -> RunRecorder:
        """Continue ``run`` after round ``through_round``: rounds and ledger rows
        written after that round's checkpoint are dropped, the counters are replayed.
        The config, accepted by the resume rule (:mod:`fedal.resume`), is recorded with
        its new round count."""
        rows = [row for row in run.read_rounds() if row["round"] <= through_round]
        ledger = run.read_ledger()[:ledger_rows]
        run.write_config(config)
        run.start_results(rows, ledger)
        recorder = cls(run, config)
        recorder.ledger_rows = len(ledger)
        clients, counts = np.unique(ledger[:, 0], return_counts=True)
        recorder.ledger_by_client = dict(zip(clients.tolist(), counts.tolist(), strict=True))
        for row in rows:
            recorder._count([ClientReport.from_metrics(client) for client in row["clients"]])
            recorder.rows.append(row)
        return recorder

    def _count(self, reports: Sequence[ClientReport]) -> None:
        """Fold one round's client reports into the running totals."""
        for report in reports:
            self.selected += report.new_labels
            self.selected_noisy += report.new_noisy
            self.trained_by_client[report.client] = report.num_examples
            self.requested_by_client[report.client] = report.labels_used

    def ledger_known(self, num_clients: int) -> tuple[int, ...]:
        """How many ledger entries of each client the run has recorded."""
        return tuple(self.ledger_by_client.get(client, 0) for client in range(num_clients))

    def record_round(
        self,
        server_round: int,
        accuracy: float,
        loss: float,
        reports: Sequence[ClientReport],
        elapsed: float,
        dropped: Sequence[DroppedClient] = (),
        timings: Mapping[str, float] | None = None,
    ) -> dict[str, Any]:
        """Append one round: test metrics, per-client reports, the clients whose reply
        the round went without (and why), ledger entries, and the server's ``timings``
        (``exchange_seconds``, ``aggregation_seconds``, ``evaluation_seconds`` and, when
        nodes evaluate, ``evaluation_exchange_seconds``)."""
        reports = sorted(reports, key=lambda report: report.client)
        self._count(reports)
        row = {
            "round": server_round,
            "labels": sum(self.trained_by_client.values()),
            "labels_after_query": sum(self.requested_by_client.values()),
            "selected": self.selected,
            "selected_noisy": self.selected_noisy,
            "test_accuracy": accuracy,
            "test_loss": loss,
            "elapsed_seconds": elapsed,
            "clients": [report.to_metrics(with_ledger=False) for report in reports],
            "dropped": [asdict(client) for client in dropped],
            **(timings or {}),
        }
        self.rows.append(row)
        self.run.append_round(row)
        ledger = [(report.client, *entry) for report in reports for entry in report.ledger]
        self.run.append_ledger(ledger)
        self.ledger_rows += len(ledger)
        for report in reports:
            known = self.ledger_by_client.get(report.client, 0)
            self.ledger_by_client[report.client] = known + len(report.ledger)
        return row

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
        """Write ``summary.json``; return the summary."""
        summary = self.summary()
        self.run.write_summary(summary)
        return summary
