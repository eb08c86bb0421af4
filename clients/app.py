"""Flower ``ClientApp`` (Message API): one stateful federated active-learning client.

The server sends the global task-model arrays and a :class:`~clients.protocol.RoundTask`
(the experiment config and the absolute round); the client runs
:func:`clients.round.run_client_round` and replies with a
:class:`~clients.protocol.RoundReply` (the helper's arrays and its report). Nothing else
leaves the client (with SCAFFOLD also the control update delta c_i; the client keeps its
control variate c_i in its state). The same code serves simulation and deployment, on a
benchmark partition (``partition-id``) or on the node's own folder of images
(``data.dataset = "image-folder"``, :mod:`fedal.node_folder`), labelled by a person; with
``federation.packs`` one node runs the clients of its pack one after another. With
``experiment.checkpoint`` it also writes its state to the run's checkpoint directory
after each round, and a resumed run (``experiment.resume``) starts from that file.
"""

from __future__ import annotations

import importlib
import resource
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import torch
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from clients.protocol import (
    CLIENT_ID_ACTION,
    PACK_ACTION,
    ClientIdAnswer,
    ClientIdQuery,
    EvaluationReply,
    EvaluationTask,
    PackedReply,
    PackedTask,
    RoundReply,
    RoundTask,
    pack_of,
)
from clients.round import ControlVariates, next_client_control, run_client_round
from clients.state import (
    POOL_KEY,
    Book,
    load_book,
    load_control,
    load_pool,
    load_strategy_state,
    read_record,
    save_book,
    save_control,
    save_pool,
    save_strategy_state,
    state_bytes,
    write_record,
)
from fedal.checkpoint import (
    Sections,
    load_client_checkpoint,
    newest_client_round,
    save_client_checkpoint,
)
from fedal.choices import FOLDER_DATASET
from fedal.compute import compute_context
from fedal.config import ExperimentConfig
from fedal.corruptions import experiment_data
from fedal.datasets import LoadedDataset
from fedal.evaluation_set import central_test_shard, central_test_view, evaluate_global_arrays
from fedal.models import build_for_dataset
from fedal.node_folder import NodeFolder, NodeSettings
from fedal.oracle import Annotator
from fedal.pool import ClientPool
from fedal.rundir import RunDirectory
from fedal.shards import load_experiment
from fedal.training import default_device
from strategies import build_strategy

app = ClientApp()


class WorkerStart:
    """Seconds from this process's creation to this module's import (interpreter start,
    imports, Ray's actor set-up) plus :meth:`warm`'s, handed out once: to the first round
    the process serves."""

    def __init__(self) -> None:
        self.pending = max(0.0, time.time() - psutil.Process().create_time())

    def warm(self) -> None:
        """Import torch's compiler stack (``torch._dynamo``, about 1 s), which a process's
        first optimiser step would import, once, before a client round's clock starts:
        part of the worker's start, not of its first client's round. Not at this module's
        import, which the driver of a simulation pays too, and it trains nothing."""
        if "torch._dynamo" in sys.modules:
            return
        importing = time.perf_counter()
        importlib.import_module("torch._dynamo")
        self.pending += time.perf_counter() - importing

    def take(self) -> float:
        seconds, self.pending = self.pending, 0.0
        return seconds


WORKER_START = WorkerStart()


def partition_of(node_config: Mapping[str, Any], num_clients: int) -> int:
    """This node's client id from its config's ``partition-id`` (simulation or
    ``--node-config``)."""
    if "partition-id" not in node_config:
        raise ValueError(
            "node config lacks 'partition-id' (start the SuperNode with "
            '--node-config "partition-id=K num-partitions=N")'
        )
    partition = int(node_config["partition-id"])
    declared = int(node_config.get("num-partitions", num_clients))
    if declared != num_clients or not 0 <= partition < num_clients:
        raise ValueError(
            f"node config partition-id={partition} num-partitions={declared} does not fit "
            f"data.num_clients={num_clients}"
        )
    return partition


@app.query(CLIENT_ID_ACTION)
def client_id(msg: Message, context: Context) -> Message:
    """Tell the server this node's client id (for reproducible client sampling)."""
    query = ClientIdQuery.from_content(msg.content)
    answer = ClientIdAnswer(partition_of(context.node_config, query.num_clients))
    return Message(content=answer.to_content(), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of this node's client, its state kept in ``context.state``."""
    content = train_client(msg.content, context.node_config, context.state)
    return Message(content=content, reply_to=msg)


@app.train(PACK_ACTION)
def train_pack(msg: Message, context: Context) -> Message:
    """One round of each drawn client of this node's pack (``federation.packs``), one
    after another in this process. Each client starts from its checkpoint of the round
    before (``experiment.checkpoint`` is required with packs) and its state goes back
    there: keeping the pack's states in the node's ``context.state`` would ship every
    client's state through Ray with every message."""
    task = PackedTask.from_content(msg.content)
    config = RoundTask.from_content(task.content).config
    pack = partition_of(context.node_config, config.federation.packs)
    replies = {}
    for client in task.clients:
        if pack_of(client, config.federation.packs) != pack:
            raise ValueError(f"client {client} is not in pack {pack}")
        node = {"partition-id": client, "num-partitions": config.data.num_clients}
        replies[client] = train_client(task.content, node, record=None)
    return Message(content=PackedReply(replies).to_content(), reply_to=msg)


@app.evaluate()
def evaluate_shard(msg: Message, context: Context) -> Message:
    """Evaluate the global arrays on one shard of the central test set
    (``federation.evaluation_shards``): the shard's sums for the server to add up. Nothing
    of this node's client is read or changed."""
    started = time.perf_counter()
    task = EvaluationTask.from_content(msg.content)
    config = task.config
    dataset = load_experiment(config).dataset
    batch_size = config.training.eval_batch_size
    test = central_test_view(config, dataset)
    shard = central_test_shard(test, task.shard, task.shards, batch_size)
    device = default_device()
    model = build_for_dataset(config.model.helper, dataset, config.model.dropout)
    arrays = msg.content.array_records["arrays"].to_torch_state_dict()
    sums = evaluate_global_arrays(model, arrays, shard, config, device)
    reply = EvaluationReply(sums, seconds=time.perf_counter() - started)
    return Message(content=reply.to_content(), reply_to=msg)


def train_client(
    content: RecordDict, node_config: Mapping[str, Any], record: RecordDict | None
) -> RecordDict:
    """One round of the client of ``node_config``, continuing from the newest of the
    state in ``record`` (its node's ``context.state``; None for a packed client, which
    keeps its state in its checkpoint alone) and its checkpoint, and keeping the new
    state there: the reply's content (the report's :class:`~fedal.reports.ClientCost`
    completed here)."""
    WORKER_START.warm()
    started = time.perf_counter()
    held = read_record(record) if record is not None else {}
    task = RoundTask.from_content(content)
    config, server_round = task.config, task.server_round
    client = partition_of(node_config, config.data.num_clients)
    run = RunDirectory(Path(config.experiment.run_dir))
    with run.client_lock(client):
        state = newest_state(held, run, client, server_round)
        reply, load_seconds = train_one_round(content, node_config, state, task, client, run)
    if record is not None:
        write_record(record, state)
    cost = replace(
        reply.report.cost,
        load_seconds=load_seconds,
        handler_seconds=time.perf_counter() - started,
        state_bytes=state_bytes(state),
        worker_pid=psutil.Process().pid,
        worker_start_seconds=WORKER_START.take(),
        worker_peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
    return replace(reply, report=replace(reply.report, cost=cost)).to_content()


def newest_state(held: Sections, run: RunDirectory, client: int, server_round: int) -> Sections:
    """The newest of the state ``held`` in memory and the state the client saved to disk
    before ``server_round``: on disk is newer when the run was resumed (a new process
    holds nothing), for a packed client (which holds nothing in memory), or when a round
    whose reply came too late finished after this task's context was read (its labels
    are in that file, and its next reply reports them)."""
    saved = newest_client_round(run, client, server_round - 1)
    held_round = load_book(held).round if POOL_KEY in held else None
    if saved is None or (held_round is not None and saved <= held_round):
        return held
    restored = load_client_checkpoint(run, client, saved)
    return held if restored is None else restored


def client_data(
    node_config: Mapping[str, Any],
    state: Sections,
    config: ExperimentConfig,
    book: Book,
    client: int,
    run: RunDirectory,
) -> tuple[LoadedDataset, ClientPool, Annotator | None]:
    """The client's training set, its pool (new in its first round, then from the state)
    and, on a node folder, the person who labels (None: the benchmark's simulated oracle).

    A node folder's first round records in the run directory what the node holds and
    protects (:meth:`fedal.image_folder.NodeImages.summary`)."""
    pool = load_pool(state, client)
    if config.data.dataset == FOLDER_DATASET:
        node = NodeFolder.open(NodeSettings.from_node_config(node_config), config.data)
        if pool is None:
            pool = node.new_pool(client)
            run.write_node(client, {"client": client, **node.images.summary()})
        return node.dataset, pool, node.oracle(config.oracle)
    if pool is None:  # first round: partition once, then the pool lives in the state
        experiment = load_experiment(config)
        book.total_noisy = sum(len(block) for block in experiment.noisy)
        return experiment.dataset, experiment.new_pool(config, client), None
    return experiment_data(config, book.total_noisy), pool, None


def train_one_round(
    content: RecordDict,
    node_config: Mapping[str, Any],
    state: Sections,
    task: RoundTask,
    client: int,
    run: RunDirectory,
) -> tuple[RoundReply, float]:
    """Train, query and update ``state`` in place (and write it to disk with
    ``experiment.checkpoint``); the reply and the seconds spent loading data."""
    config, server_round = task.config, task.server_round
    book = load_book(state)
    loading = time.perf_counter()
    dataset, pool, annotator = client_data(node_config, state, config, book, client, run)
    load_seconds = time.perf_counter() - loading
    strategy = build_strategy(config.query.strategy, config.query.options)
    strategy.load_state_dict(load_strategy_state(state))
    control = None
    if task.control is not None:  # SCAFFOLD: c from the server, c_i from the state
        server_control = {name: torch.tensor(array) for name, array in task.control.items()}
        client_control = load_control(state)
        if client_control is None:
            client_control = {name: torch.zeros_like(c) for name, c in server_control.items()}
        control = ControlVariates(server=server_control, client=client_control)

    device = default_device()
    with compute_context(device, config.training):
        reply = run_client_round(
            config,
            dataset,
            pool,
            strategy,
            content.array_records["arrays"].to_torch_state_dict(),
            server_round,
            device,
            ledger_from=task.ledger_known[client],
            control=control,
            annotator=annotator,
        )
    if control is not None and reply.control_delta is not None:
        save_control(state, next_client_control(control.client, reply.control_delta))
    save_pool(state, pool)
    save_strategy_state(state, strategy.state_dict())
    book.round = server_round
    save_book(state, book)
    if config.experiment.checkpoint:
        save_client_checkpoint(run, client, server_round, state)
    return reply, load_seconds
