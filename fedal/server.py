"""Flower ``ServerApp``: Flower's FedAvg (or FedProx / FedAvgM) over the clients' helpers,
central evaluation of the task model on the test set at round 0 and after every round,
and the per-round results writer.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedAvgM, FedProx

from fedal.checkpoint import (
    ROUND_OFFSET_KEY,
    ServerCheckpoint,
    load_server_checkpoint,
    save_server_checkpoint,
)
from fedal.config import ExperimentConfig, flatten, from_flat
from fedal.datasets import LoadedDataset
from fedal.models import build_for_dataset
from fedal.participation import Participation
from fedal.progress import RoundProgress
from fedal.results import PLOT_FILE, RunRecorder, new_run_dir
from fedal.shards import (
    SUBSET_STREAM,
    TEST_SUBSET_OWNER,
    client_rng,
    load_experiment,
    partition_summary,
    save_summary,
)
from fedal.training import default_device, evaluate
from fedal.views import SampleView

LOG = logging.getLogger("fedal.server")

app = ServerApp()


class ClientReports:
    """``train_metrics_aggr_fn`` for Flower strategies that also keeps every client's record.

    Flower calls it with the reply records of a round; it stores them for the results
    writer and returns the aggregated scalars (sums of label counts, mean train loss).
    With ``uploads_dir`` set it also saves every client's uploaded arrays, per round, as
    ``round-R-client-K.npz`` (an audit of exactly what left each client).
    """

    def __init__(self, uploads_dir: Path | None = None, rounds_seen: int = 0) -> None:
        self.pending: list[dict[str, Any]] = []
        self.short_clients: set[int] = set()
        self.uploads_dir = uploads_dir
        self.rounds_seen = rounds_seen

    def __call__(self, records: list[RecordDict], weighting_key: str) -> MetricRecord:
        self.rounds_seen += 1
        reports = []
        for record in records:
            metrics = next(iter(record.metric_records.values()))
            reports.append({key: metrics[key] for key in metrics})
            if self.uploads_dir is not None:
                self._save_upload(record, int(metrics["client"]))
        self.pending = sorted(reports, key=lambda report: int(report["client"]))
        self._note_short_budgets(reports)
        weights = np.array([max(1, int(r[weighting_key])) for r in reports], dtype=float)
        losses = np.array([float(r["train-loss"]) for r in reports])
        finite = np.isfinite(losses)
        mean_loss = (
            float(np.average(losses[finite], weights=weights[finite])) if finite.any() else 0.0
        )
        return MetricRecord(
            {
                "labels-used": sum(int(r["labels-used"]) for r in reports),
                "new-labels": sum(int(r["new-labels"]) for r in reports),
                "train-loss": mean_loss,
            }
        )

    def _save_upload(self, record: RecordDict, client: int) -> None:
        arrays = next(iter(record.array_records.values()))
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        target = self.uploads_dir / f"round-{self.rounds_seen}-client-{client}.npz"
        np.savez(target, **{name: arrays[name].numpy() for name in arrays})

    def _note_short_budgets(self, reports: list[dict[str, Any]]) -> None:
        """Say once per client that its budget exceeded its remaining candidates."""
        for report in reports:
            client = int(report["client"])
            if int(report["budget-short"]) and client not in self.short_clients:
                self.short_clients.add(client)
                LOG.warning(
                    "client %d: budget exceeds the remaining candidates; taking what is left "
                    "(%d candidates left now)",
                    client,
                    int(report["candidates-left"]),
                )

    def take(self) -> list[dict[str, Any]]:
        """The reports of the last aggregated round (cleared on read)."""
        reports, self.pending = self.pending, []
        return reports


class ClientRoundError(RuntimeError):
    """A client failed during a round; the run stops instead of averaging fewer helpers."""


def reply_client(reply: Message) -> int:
    """The client id a (successful) reply reports."""
    return int(next(iter(reply.content.metric_records.values()))["client"])


def strict_and_ordered(strategy_class: type[FedAvg]) -> type[FedAvg]:
    """The Flower strategy class, sampling and aggregating in client order, failing fast.

    Clients are drawn reproducibly (see :mod:`fedal.participation`). Replies arrive in
    completion order; floating-point sums depend on order, so sorting
    by client makes the aggregate bit-reproducible. Any error reply stops the run rather
    than silently averaging fewer helpers.
    """

    class StrictOrdered(strategy_class):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, participation: Participation, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.participation = participation

        def configure_train(
            self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
        ) -> Iterable[Message]:
            ordered = self.participation.grid_for_round(grid, server_round)
            return super().configure_train(server_round, arrays, config, ordered)

        def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
            replies = list(replies)
            failed = [reply for reply in replies if reply.has_error()]
            if failed:
                raise ClientRoundError(
                    f"{len(failed)} client(s) failed in round {server_round}: "
                    f"{failed[0].error.reason}"
                )
            return super().aggregate_train(server_round, sorted(replies, key=reply_client))

    StrictOrdered.__name__ = strategy_class.__name__
    return StrictOrdered


def aggregation_strategy(
    config: ExperimentConfig, reports: ClientReports, round_offset: int = 0
) -> FedAvg:
    """Flower's built-in FedAvg / FedProx / FedAvgM as configured (``round_offset``:
    rounds done before a resume, so client draws follow the run's own round numbers)."""
    fed = config.federation
    common: dict[str, Any] = {
        "fraction_train": fed.fraction_train,
        "fraction_evaluate": 0.0,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 0,
        "min_available_nodes": config.data.num_clients,
        "train_metrics_aggr_fn": reports,
        "participation": Participation(
            config.experiment.seed, config.data.num_clients, round_offset
        ),
    }
    builders: dict[str, Callable[[], FedAvg]] = {
        "fedavg": lambda: strict_and_ordered(FedAvg)(**common),
        "fedprox": lambda: strict_and_ordered(FedProx)(proximal_mu=fed.proximal_mu, **common),
        "fedavgm": lambda: strict_and_ordered(FedAvgM)(
            server_learning_rate=fed.server_lr, server_momentum=fed.server_momentum, **common
        ),
    }
    return builders[fed.aggregation]()


def test_view(config: ExperimentConfig, dataset: LoadedDataset) -> SampleView:
    """The test set (or a seeded ``data.test_subset`` of it) as a labelled view."""
    total = len(dataset.test_y)
    rows = np.arange(total, dtype=np.int64)
    if 0 < config.data.test_subset < total:
        rng = client_rng(config.experiment.seed, TEST_SUBSET_OWNER, SUBSET_STREAM)
        rows = np.sort(rng.choice(total, size=config.data.test_subset, replace=False))
    return SampleView(dataset.test_x, rows, dataset.input_spec, dataset.test_y[rows])


def serve(grid: Grid, config: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
    """Run the federation for ``federation.rounds`` rounds and write the run directory.

    With ``experiment.resume`` the run continues from ``run_dir``'s checkpoint (the
    model, FedAvgM's momentum, the results so far) up to ``federation.rounds``.
    """
    config = config.replace("experiment", run_dir=str(run_dir))  # clients checkpoint there
    seed = config.experiment.seed
    random.seed(seed)
    torch.manual_seed(seed)
    device = default_device()
    experiment = load_experiment(config)
    dataset = experiment.dataset
    model = build_for_dataset(config.model.helper, dataset, config.model.dropout).to(device)
    test = test_view(config, dataset)
    resumed = load_server_checkpoint(run_dir) if config.experiment.resume else None
    start = resumed.round if resumed else 0
    if start >= config.federation.rounds:
        raise ValueError(
            f"{run_dir} already has {start} rounds; raise federation.rounds to continue it"
        )
    if resumed:
        model.load_state_dict({name: torch.from_numpy(a) for name, a in resumed.arrays.items()})
        recorder = RunRecorder.resume(run_dir, config, start, resumed.ledger_rows)
    else:
        recorder = RunRecorder(run_dir, config)
        save_summary(partition_summary(config, experiment), run_dir / "partition.json")
    reports = ClientReports(
        run_dir / "uploads" if config.experiment.save_uploads else None, rounds_seen=start
    )
    progress = RoundProgress(config.federation.rounds, first_round=start)
    strategy = aggregation_strategy(config, reports, round_offset=start)
    if resumed and resumed.momentum:
        strategy.momentum_vector = resumed.momentum

    def central_evaluation(local_round: int, arrays: ArrayRecord) -> MetricRecord:
        server_round = start + local_round
        model.load_state_dict(arrays.to_torch_state_dict())
        stats = evaluate(model, test, device, config.training.eval_batch_size)
        metrics = MetricRecord({"accuracy": stats.accuracy, "loss": stats.loss})
        if resumed and local_round == 0:
            return metrics  # this round is already in the results
        row = recorder.record_round(
            server_round, stats.accuracy, stats.loss, reports.take(), progress.elapsed()
        )
        if config.experiment.checkpoint:
            momentum = getattr(strategy, "momentum_vector", None)
            save_server_checkpoint(
                run_dir,
                ServerCheckpoint(
                    server_round,
                    recorder.ledger_rows,
                    {name: arrays[name].numpy() for name in arrays},
                    list(momentum) if momentum else [],
                ),
            )
        progress.report(server_round, row["labels"], stats.accuracy)
        return metrics

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=config.federation.rounds - start,
        train_config=ConfigRecord({**flatten(config), ROUND_OFFSET_KEY: start}),
        evaluate_fn=central_evaluation,
    )
    summary = recorder.finish()
    print(f"results: {run_dir}\nplot:    {run_dir / PLOT_FILE}", flush=True)
    return summary


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for both ``fedal run`` (simulation) and ``flwr run`` / deployment."""
    config = from_flat(context.run_config)
    run_dir = Path(config.experiment.run_dir) if config.experiment.run_dir else new_run_dir(config)
    serve(grid, config, run_dir)
