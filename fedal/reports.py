"""What a client reports after one round (DESIGN section 3, step 5), typed.

:class:`ClientReport` is the only place where the report's keys are spelled: the Flower
``MetricRecord`` of a reply (:mod:`clients.protocol`) and each client row of
``rounds.jsonl`` (:mod:`fedal.results`) are both :meth:`ClientReport.to_metrics`, the
row without the ledger entries. Nothing else reads a report by key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

MetricValue = int | float | list[int] | list[float]

_LEDGER_KEYS = ("ledger-round", "ledger-index", "ledger-label")


@dataclass(frozen=True)
class ClientCost:
    """Where one client's round went, beyond the training/fit/select timings of the
    report (read by ``fedal bench federation``, :mod:`fedal.app.bench.federation`).

    - ``inference_seconds`` / ``scored_images``: the network passes inside ``select``
      (:func:`strategies.scoring.inference_clock`) and the images they scored;
      ``train_images``: the samples the helper's training steps saw.
    - ``load_seconds``: loading the dataset and this client's partition in this round.
    - ``handler_seconds``: the whole round in the ClientApp, from the message to the reply
      (so state (de)serialisation and checkpoint writes are the handler's time outside
      loading, training, fit and select).
    - ``state_bytes``: the client's state kept between rounds (array bytes).
    - ``worker_pid``, ``worker_start_seconds`` (from the worker process's creation to the
      ClientApp being imported, reported by the first round the process serves, else 0)
      and ``worker_peak_rss_bytes`` (the process's resident-set high-water mark so far).
    Rows of runs recorded before these fields existed read as zeros.
    """

    inference_seconds: float = 0.0
    scored_images: int = 0
    train_images: int = 0
    load_seconds: float = 0.0
    handler_seconds: float = 0.0
    state_bytes: int = 0
    worker_pid: int = 0
    worker_start_seconds: float = 0.0
    worker_peak_rss_bytes: int = 0

    def to_metrics(self) -> dict[str, MetricValue]:
        """The cost as flat ``key -> number`` (keys: field names with dashes)."""
        return {key.replace("_", "-"): value for key, value in asdict(self).items()}

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> ClientCost:
        """Inverse of :meth:`to_metrics`; missing keys read as zero."""
        return cls(
            inference_seconds=float(metrics.get("inference-seconds", 0.0)),
            scored_images=int(metrics.get("scored-images", 0)),
            train_images=int(metrics.get("train-images", 0)),
            load_seconds=float(metrics.get("load-seconds", 0.0)),
            handler_seconds=float(metrics.get("handler-seconds", 0.0)),
            state_bytes=int(metrics.get("state-bytes", 0)),
            worker_pid=int(metrics.get("worker-pid", 0)),
            worker_start_seconds=float(metrics.get("worker-start-seconds", 0.0)),
            worker_peak_rss_bytes=int(metrics.get("worker-peak-rss-bytes", 0)),
        )


@dataclass(frozen=True)
class ClientReport:
    """One client's round: sizes, timings, selection statistics and new ledger entries.

    ``num_examples`` is the labelled-set size the helper trained on (FedAvg's weight);
    ``labels_used`` includes this round's new labels. ``ledger`` holds the ledger rows
    (round, sample index, label given) not reported before, in order.
    ``picked_helper_correct``: of the round's new labels, how many the helper (as trained
    this round, before the query) predicted as the oracle labelled them: its accuracy on
    the picks is this over ``new_labels`` (informative picks are the ones it gets wrong;
    rows recorded before the field existed read 0). ``cost``: where the round's time and
    memory went beyond the three timings (:class:`ClientCost`).
    """

    client: int
    num_examples: int
    labels_used: int
    new_labels: int
    new_noisy: int
    candidates_left: int
    budget_short: bool
    train_loss: float
    train_seconds: float
    finetune_confident: int
    fit_seconds: float
    select_seconds: float
    selected_class_histogram: tuple[int, ...]
    picked_helper_correct: int = 0
    ledger: tuple[tuple[int, int, int], ...] = field(default=())
    cost: ClientCost = field(default_factory=ClientCost)

    def to_metrics(self, with_ledger: bool = True) -> dict[str, MetricValue]:
        """The report as flat ``key -> number or list`` (Flower metrics, JSON rows)."""
        metrics: dict[str, MetricValue] = {
            "client": self.client,
            "num-examples": self.num_examples,
            "labels-used": self.labels_used,
            "new-labels": self.new_labels,
            "new-noisy": self.new_noisy,
            "candidates-left": self.candidates_left,
            "budget-short": int(self.budget_short),
            "train-loss": self.train_loss,
            "train-seconds": self.train_seconds,
            "finetune-confident": self.finetune_confident,
            "fit-seconds": self.fit_seconds,
            "select-seconds": self.select_seconds,
            "selected-class-histogram": list(self.selected_class_histogram),
            "picked-helper-correct": self.picked_helper_correct,
            **self.cost.to_metrics(),
        }
        if with_ledger:
            columns = np.asarray(self.ledger, dtype=np.int64).reshape(-1, 3).T
            for key, column in zip(_LEDGER_KEYS, columns, strict=True):
                metrics[key] = column.tolist()
        return metrics

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> ClientReport:
        """Inverse of :meth:`to_metrics` (a row without ledger keys has no ledger)."""
        ledger = zip(*(metrics.get(key, []) for key in _LEDGER_KEYS), strict=True)
        return cls(
            client=int(metrics["client"]),
            num_examples=int(metrics["num-examples"]),
            labels_used=int(metrics["labels-used"]),
            new_labels=int(metrics["new-labels"]),
            new_noisy=int(metrics["new-noisy"]),
            candidates_left=int(metrics["candidates-left"]),
            budget_short=bool(metrics["budget-short"]),
            train_loss=float(metrics["train-loss"]),
            train_seconds=float(metrics["train-seconds"]),
            finetune_confident=int(metrics["finetune-confident"]),
            fit_seconds=float(metrics["fit-seconds"]),
            select_seconds=float(metrics["select-seconds"]),
            selected_class_histogram=tuple(int(n) for n in metrics["selected-class-histogram"]),
            picked_helper_correct=int(metrics.get("picked-helper-correct", 0)),
            ledger=tuple((int(r), int(i), int(label)) for r, i, label in ledger),
            cost=ClientCost.from_metrics(metrics),
        )


def round_totals(reports: Sequence[ClientReport]) -> dict[str, MetricValue]:
    """Flower's aggregated train metrics of a round: label sums and the mean train loss
    (weighted by ``num_examples``, finite losses only)."""
    weights = np.array([max(1, report.num_examples) for report in reports], dtype=float)
    losses = np.array([report.train_loss for report in reports])
    finite = np.isfinite(losses)
    mean_loss = float(np.average(losses[finite], weights=weights[finite])) if finite.any() else 0.0
    return {
        "labels-used": sum(report.labels_used for report in reports),
        "new-labels": sum(report.new_labels for report in reports),
        "train-loss": mean_loss,
    }
