"""Flower ``ServerApp``: Flower's FedAvg (or FedProx / FedAvgM / FedOpt, or SCAFFOLD on
Flower's FedAvg base) over the clients' helpers,
central evaluation of the task model on the test set at round 0 and after every round
(by the server, or after each round by ``federation.evaluation_shards`` nodes:
:mod:`fedal.app.evaluation`), and the per-round results writer.

Round numbers are the run's absolute rounds everywhere (a resumed run continues its
numbering); the one translation from the rounds of Flower's ``strategy.start`` happens in
:func:`strict_and_ordered`'s strategy and in the central evaluation.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi
from flwr.serverapp.strategy.fedopt import FedOpt

from clients.protocol import RoundReply, RoundTask
from clients.round import zero_control
from fedal.app.evaluation import evaluate_on_nodes
from fedal.app.packing import Packing
from fedal.app.participation import Participation, wait_for_clients
from fedal.app.preflight import checked_config
from fedal.app.progress import RoundProgress
from fedal.checkpoint import (
    ServerCheckpoint,
    adopt_flat_client_checkpoints,
    discard_client_checkpoints_after,
    load_server_checkpoint,
    save_server_checkpoint,
)
from fedal.config import ExperimentConfig, from_flat
from fedal.evaluation_set import central_test_view, evaluate_global_arrays
from fedal.models import build_for_dataset
from fedal.plots import plot_runs
from fedal.reports import ClientReport, round_totals
from fedal.results import DroppedClient, RunRecorder
from fedal.resume import check_results, check_resume
from fedal.rundir import RunDirectory
from fedal.shards import load_experiment, partition_summary
from fedal.training import EvalStats, default_device

LOG = logging.getLogger("fedal.server")
Strategy = TypeVar("Strategy", bound=FedAvg)

app = ServerApp()


class ClientRoundError(RuntimeError):
    """A client failed during a round; the run stops instead of averaging fewer helpers."""


def train_totals(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """``train_metrics_aggr_fn``: the round's label sums and mean train loss."""
    return MetricRecord(round_totals([RoundReply.report_in(record) for record in records]))


class RoundReports:
    """What the aggregation path hands on: each round's replies, for the results writer.

    It also keeps the audit of uploads (``experiment.save_uploads``), says once per
    client when its budget exceeded its remaining candidates, and holds each round's
    server timings (``exchange_seconds``: from sending the tasks to aggregating the
    replies; ``aggregation_seconds``: the aggregation itself).
    """

    def __init__(self, run: RunDirectory, save_uploads: bool) -> None:
        self.run = run
        self.save_uploads = save_uploads
        self.by_round: dict[int, tuple[list[ClientReport], list[DroppedClient]]] = {}
        self.timings: dict[int, dict[str, float]] = {}
        self.short_clients: set[int] = set()

    def received(
        self, server_round: int, replies: list[RoundReply], dropped: list[DroppedClient]
    ) -> None:
        """The replies aggregated in ``server_round`` (in client order) and the drawn
        clients the round went without."""
        self.by_round[server_round] = ([reply.report for reply in replies], dropped)
        for client in dropped:
            LOG.warning(
                "round %d: client %d dropped: %s", server_round, client.client, client.reason
            )
        for reply in replies:
            report = reply.report
            if self.save_uploads:
                arrays = {name: t.cpu().numpy() for name, t in reply.uploaded_arrays().items()}
                self.run.save_upload(server_round, report.client, arrays)
            if report.budget_short and report.client not in self.short_clients:
                self.short_clients.add(report.client)
                LOG.warning(
                    "client %d: budget exceeds the remaining candidates; taking what is left "
                    "(%d candidates left now)",
                    report.client,
                    report.candidates_left,
                )

    def take(self, server_round: int) -> tuple[list[ClientReport], list[DroppedClient]]:
        """The reports and dropped clients of ``server_round`` (none for round 0)."""
        return self.by_round.pop(server_round, ([], []))

    def take_timings(self, server_round: int) -> dict[str, float]:
        """The server timings of ``server_round`` (none for round 0)."""
        return self.timings.pop(server_round, {})


def strict_and_ordered(strategy_class: type[Strategy]) -> type[Strategy]:
    """The Flower strategy class, sampling and aggregating in client order, never
    dropping a client silently.

    Clients are drawn reproducibly (see :mod:`fedal.app.participation`). Replies arrive in
    completion order; floating-point sums depend on order, so sorting by client makes the
    aggregate bit-reproducible. A drawn client that failed, or did not reply within
    ``federation.round_timeout``, is recorded with the reason; the round aggregates the
    others when at least Flower's ``min_train_nodes`` (``federation.min_train_clients``)
    replied, and otherwise stops the run with one line. Flower counts the rounds of this
    ``start`` from 1; the strategy adds ``first_round - 1`` to send and record the run's
    absolute rounds.
    """

    class StrictOrdered(strategy_class):  # type: ignore[misc, valid-type]
        def __init__(
            self,
            *args: Any,
            participation: Participation,
            packing: Packing | None,
            task: Callable[[int], RoundTask],
            reports: RoundReports,
            first_round: int,
            round_timeout: float,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self.participation = participation
            self.packing = packing
            self.task = task
            self.reports = reports
            self.rounds_before = first_round - 1
            self.round_timeout = round_timeout
            self.drawn: list[int] = []
            self.sent_at = time.perf_counter()

        def configure_train(
            self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
        ) -> Iterable[Message]:
            absolute = self.rounds_before + server_round
            ordered = self.participation.grid_for_round(grid, absolute)
            task = self.task(absolute)
            messages = list(
                super().configure_train(server_round, arrays, task.to_config_record(), ordered)
            )
            extra = task.to_array_records()  # SCAFFOLD's control variate c (none otherwise)
            for message in messages:
                for key, record in extra.items():
                    message.content[key] = record
            self.drawn = [message.metadata.dst_node_id for message in messages]
            if self.packing is not None:
                nodes = {pack: node for node, pack in self.participation.node_clients.items()}
                messages = self.packing.pack_messages(messages, nodes)
            self.sent_at = time.perf_counter()
            return messages

        def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
            absolute = self.rounds_before + server_round
            exchange_seconds = time.perf_counter() - self.sent_at
            replies = list(replies)
            if self.packing is not None:
                replies = self.packing.unpack_replies(replies, self.participation.node_clients)
            dropped = self._dropped(replies)
            replies = [reply for reply in replies if not reply.has_error()]
            if len(replies) < self.min_train_nodes:
                detail = "; ".join(f"client {d.client}: {d.reason}" for d in dropped)
                raise ClientRoundError(
                    f"round {absolute}: {len(replies)} client(s) replied, fewer than "
                    f"federation.min_train_clients={self.min_train_nodes} ({detail})"
                )
            parsed = sorted(
                ((RoundReply.from_content(reply.content), reply) for reply in replies),
                key=lambda pair: pair[0].report.client,
            )
            self.reports.received(absolute, [content for content, _ in parsed], dropped)
            aggregating = time.perf_counter()
            # the absolute round: FedAdam's bias correction counts the run's rounds
            aggregated = super().aggregate_train(absolute, [reply for _, reply in parsed])
            self.reports.timings[absolute] = {
                "exchange_seconds": exchange_seconds,
                "aggregation_seconds": time.perf_counter() - aggregating,
            }
            return aggregated

        def _dropped(self, replies: list[Message]) -> list[DroppedClient]:
            """Drawn clients without a usable reply: failed (Flower's reason) or silent."""
            reasons = {
                reply.metadata.src_node_id: f"failed: {reply.error.reason}"
                for reply in replies
                if reply.has_error()
            }
            replied = {reply.metadata.src_node_id for reply in replies}
            for node in self.drawn:
                if node not in replied:
                    reasons[node] = f"no reply within {self.round_timeout:g} s"
            return sorted(
                (
                    DroppedClient(self.participation.client_of(node), reason)
                    for node, reason in reasons.items()
                ),
                key=lambda dropped: dropped.client,
            )

    StrictOrdered.__name__ = strategy_class.__name__
    return StrictOrdered


ArrayDict = dict[str, np.ndarray]


def scaffold_aggregate(
    global_arrays: ArrayDict,
    control: ArrayDict,
    helpers: list[ArrayDict],
    deltas: list[ArrayDict],
    server_lr: float,
    num_clients: int,
) -> tuple[ArrayDict, ArrayDict]:
    """SCAFFOLD's server update (Karimireddy et al. 2020, Algorithm 1, lines 16-17):
    x <- x + eta_g * mean_k(y_k - x) over the replying clients S, and
    c <- c + (|S| / N) * mean_k(delta c_k) = c + sum_k(delta c_k) / N.

    The mean is the paper's plain mean over the clients, not weighted by their number
    of labels. Sums run in float64 in the given (client) order; each result keeps the
    dtype of the array it updates, so the global model stays float32.
    """
    count = len(helpers)
    arrays = {}
    for name, old in global_arrays.items():
        start = old.astype(np.float64)
        step = sum(helper[name].astype(np.float64) - start for helper in helpers) / count
        arrays[name] = np.asarray(start + server_lr * step).astype(old.dtype)
    updated = {}
    for name, old in control.items():
        total = sum(delta[name].astype(np.float64) for delta in deltas)
        updated[name] = np.asarray(old.astype(np.float64) + total / num_clients).astype(old.dtype)
    return arrays, updated


class Scaffold(FedAvg):
    """SCAFFOLD (Karimireddy et al. 2020, Algorithm 1, option II) on Flower's FedAvg.

    ``control`` is the server control variate c by trainable weight name (zeros at the
    start, :func:`start_control`; restored on resume from ``ServerCheckpoint.optimizer``).
    It travels to the clients with every train message (:class:`RoundTask`'s ``control``);
    replies carry y_k and delta c_k (:class:`RoundReply`), aggregated by
    :func:`scaffold_aggregate` with ``server_learning_rate`` = eta_g over N =
    ``num_clients``.
    """

    def __init__(
        self, *args: Any, server_learning_rate: float, num_clients: int, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.server_learning_rate = server_learning_rate
        self.num_clients = num_clients
        self.control: ArrayDict = {}
        self.current_arrays: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current_arrays = arrays  # x, the global model this round starts from
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid or self.current_arrays is None:
            return None, None
        contents = [reply.content for reply in valid]
        parsed = [RoundReply.from_content(content) for content in contents]
        if any(reply.control_delta is None for reply in parsed):
            raise ClientRoundError(f"round {server_round}: a SCAFFOLD reply lacks delta c_i")
        arrays, self.control = scaffold_aggregate(
            {name: self.current_arrays[name].numpy() for name in self.current_arrays},
            self.control,
            [{name: t.numpy() for name, t in reply.helper_state.items()} for reply in parsed],
            [
                {name: t.numpy() for name, t in (reply.control_delta or {}).items()}
                for reply in parsed
            ],
            self.server_learning_rate,
            self.num_clients,
        )
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return ArrayRecord({name: Array(value) for name, value in arrays.items()}), metrics


def start_control(strategy: FedAvg, model: torch.nn.Module) -> None:
    """SCAFFOLD's server control variate c = 0, one array per trainable weight of
    ``model`` (Algorithm 1, line 1); nothing for the other strategies."""
    if isinstance(strategy, Scaffold):
        strategy.control = {name: value.numpy() for name, value in zero_control(model).items()}


def aggregation_strategy(
    config: ExperimentConfig,
    reports: RoundReports,
    first_round: int = 1,
    ledger_known: Callable[[], tuple[int, ...]] | None = None,
) -> FedAvg:
    """Flower's built-in FedAvg / FedProx / FedAvgM / FedAdam / FedYogi / FedAdagrad, or
    :class:`Scaffold` on Flower's FedAvg (``server_lr`` = eta_g), as configured, whose
    first round is the run's round ``first_round`` (later than 1 when resuming).

    The adaptive optimizers (Reddi et al., FedOpt) take ``federation.eta``, ``tau`` and
    (FedAdam, FedYogi) ``beta_1`` / ``beta_2``; Flower's ``eta_l`` is only reported by
    its summary, so it is given the clients' actual rate, ``training.lr``.
    """
    fed = config.federation
    clients = config.data.num_clients
    known = ledger_known or (lambda: (0,) * clients)
    common: dict[str, Any] = {
        "fraction_train": fed.fraction_train,
        "fraction_evaluate": 0.0,
        "min_train_nodes": fed.min_train_clients,
        "min_evaluate_nodes": 0,
        "min_available_nodes": config.data.num_clients,
        "train_metrics_aggr_fn": train_totals,
        "participation": Participation(config.experiment.seed, clients, fed.packs),
        "packing": Packing(fed.packs) if fed.packs else None,
        "task": lambda server_round: RoundTask(server_round, config, known()),
        "reports": reports,
        "first_round": first_round,
        "round_timeout": fed.round_timeout,
    }
    adaptive: dict[str, Any] = {"eta": fed.eta, "eta_l": config.training.lr, "tau": fed.tau}
    builders: dict[str, Callable[[], FedAvg]] = {
        "fedavg": lambda: strict_and_ordered(FedAvg)(**common),
        "fedprox": lambda: strict_and_ordered(FedProx)(proximal_mu=fed.proximal_mu, **common),
        "fedavgm": lambda: strict_and_ordered(FedAvgM)(
            server_learning_rate=fed.server_lr, server_momentum=fed.server_momentum, **common
        ),
        "fedadam": lambda: strict_and_ordered(FedAdam)(
            **adaptive, beta_1=fed.beta_1, beta_2=fed.beta_2, **common
        ),
        "fedyogi": lambda: strict_and_ordered(FedYogi)(
            **adaptive, beta_1=fed.beta_1, beta_2=fed.beta_2, **common
        ),
        "fedadagrad": lambda: strict_and_ordered(FedAdagrad)(**adaptive, **common),
        "scaffold": lambda: scaffold_strategy(config, common, known),
    }
    return builders[fed.aggregation]()


def scaffold_strategy(
    config: ExperimentConfig,
    common: dict[str, Any],
    known: Callable[[], tuple[int, ...]],
) -> FedAvg:
    """:class:`Scaffold` whose round tasks carry its current control variate c."""
    strategy: Scaffold = strict_and_ordered(Scaffold)(
        **{
            **common,
            "task": lambda server_round: RoundTask(
                server_round, config, known(), control=strategy.control
            ),
        },
        server_learning_rate=config.federation.server_lr,
        num_clients=config.data.num_clients,
    )
    return strategy


OPTIMIZER_MOMENTS = ("m_t", "v_t")  # FedOpt's first and second moment estimates


SCAFFOLD_CONTROL = "control"  # SCAFFOLD's server control variate c


def optimizer_state(strategy: FedAvg) -> dict[str, dict[str, np.ndarray]]:
    """The adaptive optimizer's moment estimates (by moment, then array name), or
    SCAFFOLD's control variate c (under ``control``); empty for the other strategies and
    before the first aggregation."""
    if isinstance(strategy, Scaffold):
        return {SCAFFOLD_CONTROL: dict(strategy.control)} if strategy.control else {}
    if not isinstance(strategy, FedOpt):
        return {}
    moments = {name: getattr(strategy, name) for name in OPTIMIZER_MOMENTS}
    return {name: dict(arrays) for name, arrays in moments.items() if arrays}


def restore_optimizer_state(strategy: FedAvg, state: dict[str, dict[str, np.ndarray]]) -> None:
    """Give a resumed strategy the server-side state it had: FedOpt's moments, SCAFFOLD's
    control variate."""
    if isinstance(strategy, Scaffold) and state.get(SCAFFOLD_CONTROL):
        strategy.control = dict(state[SCAFFOLD_CONTROL])
    if isinstance(strategy, FedOpt):
        for name in OPTIMIZER_MOMENTS:
            if state.get(name):
                setattr(strategy, name, dict(state[name]))


def serve(grid: Grid, config: ExperimentConfig) -> dict[str, Any]:
    """Run the federation for ``federation.rounds`` rounds and write the run directory.

    The run directory is ``experiment.run_dir`` (the clients checkpoint there too). With
    ``experiment.resume`` the run continues from its checkpoint (the model, FedAvgM's
    momentum, FedOpt's moments, SCAFFOLD's control variate, the results so far) up to
    ``federation.rounds``, after the resume rule (:func:`fedal.resume.check_resume`)
    accepted the config.
    """
    run = RunDirectory(Path(config.experiment.run_dir))
    with run.lock():
        return _serve_locked(grid, config, run)


def _serve_locked(grid: Grid, config: ExperimentConfig, run: RunDirectory) -> dict[str, Any]:
    """:func:`serve` while this process holds the run directory."""
    resumed = None
    if config.experiment.resume:
        check_resume(run.read_config(), config)
        resumed = load_server_checkpoint(run)
        check_results(run, resumed.round, resumed.ledger_rows)
        adopt_flat_client_checkpoints(run)
        discard_client_checkpoints_after(run, resumed.round)  # the interrupted run's
    else:
        run.refuse_if_taken()
    wait_for_clients(grid, config.node_count, config.federation.connect_timeout)
    start = resumed.round if resumed else 0
    if start >= config.federation.rounds:
        raise ValueError(
            f"{run.path} already has {start} rounds; raise federation.rounds to continue it"
        )
    seed = config.experiment.seed
    random.seed(seed)
    torch.manual_seed(seed)
    device = default_device()
    experiment = load_experiment(config)
    dataset = experiment.dataset
    model = build_for_dataset(config.model.helper, dataset, config.model.dropout).to(device)
    test = central_test_view(config, dataset)
    if resumed:
        model.load_state_dict({name: torch.from_numpy(a) for name, a in resumed.arrays.items()})
        recorder = RunRecorder.resume(run, config, start, resumed.ledger_rows)
    else:
        recorder = RunRecorder.start(run, config)
        run.write_partition(partition_summary(config, experiment))
    reports = RoundReports(run, config.experiment.save_uploads)
    progress = RoundProgress(config.federation.rounds, first_round=start)
    strategy = aggregation_strategy(
        config,
        reports,
        first_round=start + 1,
        ledger_known=lambda: recorder.ledger_known(config.data.num_clients),
    )
    if resumed and resumed.momentum and isinstance(strategy, FedAvgM):
        strategy.momentum_vector = resumed.momentum
    start_control(strategy, model)
    if resumed:
        restore_optimizer_state(strategy, resumed.optimizer)

    def evaluate_global(
        local_round: int, arrays: ArrayRecord
    ) -> tuple[EvalStats, dict[str, float]]:
        """The global model's test metrics and the timings of the evaluation: its
        compute seconds (``evaluation_seconds``, summed over the nodes) and, on nodes,
        the round trip's wall seconds (``evaluation_exchange_seconds``). With
        ``federation.evaluation_shards`` the nodes evaluate after every round; the
        evaluation before the first one stays on the server, while the workers start."""
        evaluating = time.perf_counter()
        if config.federation.evaluation_shards and local_round > 0:
            stats, node_seconds = evaluate_on_nodes(grid, arrays, config, len(test))
            exchange = time.perf_counter() - evaluating
            return stats, {
                "evaluation_seconds": node_seconds,
                "evaluation_exchange_seconds": exchange,
            }
        state = arrays.to_torch_state_dict()
        stats = evaluate_global_arrays(model, state, test, config, device).stats()
        return stats, {"evaluation_seconds": time.perf_counter() - evaluating}

    def central_evaluation(local_round: int, arrays: ArrayRecord) -> MetricRecord:
        server_round = start + local_round
        stats, evaluation_timings = evaluate_global(local_round, arrays)
        metrics = MetricRecord({"accuracy": stats.accuracy, "loss": stats.loss})
        if resumed and local_round == 0:
            return metrics  # this round is already in the results
        received, dropped = reports.take(server_round)
        timings = reports.take_timings(server_round)
        timings.update(evaluation_timings)
        row = recorder.record_round(
            server_round,
            stats.accuracy,
            stats.loss,
            received,
            progress.elapsed(),
            dropped,
            timings,
        )
        if config.experiment.checkpoint:
            momentum = getattr(strategy, "momentum_vector", None)
            save_server_checkpoint(
                run,
                ServerCheckpoint(
                    server_round,
                    recorder.ledger_rows,
                    {name: arrays[name].numpy() for name in arrays},
                    list(momentum) if momentum else [],
                    optimizer_state(strategy),
                ),
            )
        progress.report(server_round, row["labels"], stats.accuracy)
        return metrics

    initial = ArrayRecord(model.state_dict())
    if resumed:  # the checkpointed arrays as they were (FedOpt's updates are float64)
        initial = ArrayRecord({name: Array(resumed.arrays[name]) for name in initial})
    strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=config.federation.rounds - start,
        timeout=config.federation.round_timeout,
        evaluate_fn=central_evaluation,
    )
    summary = recorder.finish()
    plot_runs([run.path], run.plot_file)
    print(f"results: {run.path}\nplot:    {run.plot_file}", flush=True)
    return summary


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for both ``fedal run`` (simulation) and ``flwr run`` / deployment.

    The run config is validated here, at the edge, once (strategy options included).
    """
    config = checked_config(from_flat(context.run_config))
    if not config.experiment.run_dir:
        config = config.replace("experiment", run_dir=str(RunDirectory.create(config).path))
    serve(grid, config)
