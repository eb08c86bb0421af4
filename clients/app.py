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

import resource
import time
from dataclasses import replace
from pathlib import Path

import psutil
import torch
import torch._dynamo  # a process's first optimiser imports it (~1 s): here, at worker start
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
    export_state,
    import_state,
    load_book,
    load_control,
    load_pool,
    load_strategy_state,
    save_book,
    save_control,
    save_pool,
    save_strategy_state,
    state_bytes,
)
from fedal.checkpoint import load_client_checkpoint, newest_client_round, save_client_checkpoint
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
    imports, Ray's actor set-up), handed out once: to the first round the process serves."""

    def __init__(self) -> None:
        self.pending = max(0.0, time.time() - psutil.Process().create_time())

    def take(self) -> float:
        seconds, self.pending = self.pending, 0.0
        return seconds


WORKER_START = WorkerStart()


def partition_of(context: Context, num_clients: int) -> int:
    """This node's client id from ``partition-id`` (simulation or ``--node-config``)."""
    node_config = context.node_config
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
    answer = ClientIdAnswer(partition_of(context, query.num_clients))
    return Message(content=answer.to_content(), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of this node's client."""
    return Message(content=train_client(msg.content, context), reply_to=msg)


@app.train(PACK_ACTION)
def train_pack(msg: Message, context: Context) -> Message:
    """One round of each drawn client of this node's pack (``federation.packs``), one
    after another in this process. Each client starts from its checkpoint of the round
    before (``experiment.checkpoint`` is required with packs): keeping the pack's states
    in the node's ``context.state`` would ship every client's state through Ray with
    every message."""
    task = PackedTask.from_content(msg.content)
    config = RoundTask.from_content(task.content).config
    pack = partition_of(context, config.federation.packs)
    replies = {}
    for client in task.clients:
        if pack_of(client, config.federation.packs) != pack:
            raise ValueError(f"client {client} is not in pack {pack}")
        replies[client] = train_client(task.content, client_context(context, client, config))
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


def client_context(context: Context, client: int, config: ExperimentConfig) -> Context:
    """The context a pack's client ``client`` would have on a node of its own, holding no
    state (:func:`restore_newest_state` takes it from the client's checkpoint)."""
    return Context(
        run_id=context.run_id,
        node_id=context.node_id,
        node_config={"partition-id": client, "num-partitions": config.data.num_clients},
        state=RecordDict(),
        run_config=context.run_config,
    )


def train_client(content: RecordDict, context: Context) -> RecordDict:
    """One round of the client of ``context``: train, query, and the reply's content
    (the report's :class:`~fedal.reports.ClientCost` completed here)."""
    started = time.perf_counter()
    task = RoundTask.from_content(content)
    config, server_round = task.config, task.server_round
    client = partition_of(context, config.data.num_clients)
    run = RunDirectory(Path(config.experiment.run_dir))
    with run.client_lock(client):
        restore_newest_state(context, run, client, server_round)
        reply, load_seconds = train_one_round(content, context, task, client, run)
    cost = replace(
        reply.report.cost,
        load_seconds=load_seconds,
        handler_seconds=time.perf_counter() - started,
        state_bytes=state_bytes(context.state),
        worker_pid=psutil.Process().pid,
        worker_start_seconds=WORKER_START.take(),
        worker_peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
    return replace(reply, report=replace(reply.report, cost=cost)).to_content()


def restore_newest_state(
    context: Context, run: RunDirectory, client: int, server_round: int
) -> None:
    """Continue from the newest of the state this process holds and the state the client
    saved to disk before ``server_round``: on disk is newer when the run was resumed (a
    new process holds nothing) or when a round whose reply came too late finished after
    this task's context was read (its labels are in that file, and its next reply
    reports them)."""
    saved = newest_client_round(run, client, server_round - 1)
    held = load_book(context.state).round if POOL_KEY in context.state else None
    if saved is None or (held is not None and saved <= held):
        return
    restored = load_client_checkpoint(run, client, saved)
    if restored is not None:
        import_state(context.state, restored)


def client_data(
    context: Context, config: ExperimentConfig, book: Book, client: int, run: RunDirectory
) -> tuple[LoadedDataset, ClientPool, Annotator | None]:
    """The client's training set, its pool (new in its first round, then from the state)
    and, on a node folder, the person who labels (None: the benchmark's simulated oracle).

    A node folder's first round records in the run directory what the node holds and
    protects (:meth:`fedal.image_folder.NodeImages.summary`)."""
    pool = load_pool(context.state, client)
    if config.data.dataset == FOLDER_DATASET:
        node = NodeFolder.open(NodeSettings.from_node_config(context.node_config), config.data)
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
    content: RecordDict, context: Context, task: RoundTask, client: int, run: RunDirectory
) -> tuple[RoundReply, float]:
    """Train, query and store the new state (in ``context.state``, and on disk with
    ``experiment.checkpoint``); the reply and the seconds spent loading data."""
    config, server_round = task.config, task.server_round
    book = load_book(context.state)
    loading = time.perf_counter()
    dataset, pool, annotator = client_data(context, config, book, client, run)
    load_seconds = time.perf_counter() - loading
    strategy = build_strategy(config.query.strategy, config.query.options)
    strategy.load_state_dict(load_strategy_state(context.state))
    control = None
    if task.control is not None:  # SCAFFOLD: c from the server, c_i from the state
        server_control = {name: torch.tensor(array) for name, array in task.control.items()}
        client_control = load_control(context.state)
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
        save_control(context.state, next_client_control(control.client, reply.control_delta))
    save_pool(context.state, pool)
    save_strategy_state(context.state, strategy.state_dict())
    book.round = server_round
    save_book(context.state, book)
    if config.experiment.checkpoint:
        save_client_checkpoint(run, client, server_round, export_state(context.state))
    return reply, load_seconds
