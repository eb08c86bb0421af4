"""Flower ``ClientApp`` (Message API): one stateful federated active-learning client.

The server sends the global task-model arrays and the flattened experiment config;
the client runs :func:`clients.round.run_client_round` and replies with the helper's
arrays and a ``MetricRecord``. Nothing else leaves the client. With
``experiment.checkpoint`` it also writes its state to the run's checkpoint directory
after each round, and a resumed run (``experiment.resume``) starts from that file.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.round import run_client_round
from clients.state import (
    POOL_KEY,
    export_state,
    import_state,
    load_book,
    load_pool,
    load_strategy_state,
    save_book,
    save_pool,
    save_strategy_state,
)
from fedal.checkpoint import ROUND_OFFSET_KEY, load_client_checkpoint, save_client_checkpoint
from fedal.config import from_flat
from fedal.corruptions import experiment_data
from fedal.participation import CLIENT_ID_ACTION, CLIENT_ID_KEY, NUM_CLIENTS_KEY
from fedal.shards import load_experiment
from fedal.training import default_device
from strategies import build_strategy

app = ClientApp()


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
    num_clients = int(msg.content["config"][NUM_CLIENTS_KEY])
    answer = ConfigRecord({CLIENT_ID_KEY: partition_of(context, num_clients)})
    return Message(content=RecordDict({"client": answer}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round: train the helper, query, reply with helper arrays and metrics."""
    config_record = msg.content["config"]
    config = from_flat(dict(config_record))
    resumed_after = int(config_record.get(ROUND_OFFSET_KEY, 0))  # rounds before a resume
    server_round = int(config_record["server-round"]) + resumed_after
    client = partition_of(context, config.data.num_clients)
    run_dir = Path(config.experiment.run_dir)
    if config.experiment.resume and POOL_KEY not in context.state:
        # files of rounds after the server's checkpoint belong to the interrupted run
        restored = load_client_checkpoint(run_dir, client, resumed_after)
        if restored is not None:
            import_state(context.state, restored)
    book = load_book(context.state)
    pool = load_pool(context.state, client)
    if pool is None:  # first round: partition once, then the pool lives in the state
        experiment = load_experiment(config)
        pool = experiment.new_pool(config, client)
        dataset = experiment.dataset
        book["total-noisy"] = sum(len(block) for block in experiment.noisy)
    else:
        dataset = experiment_data(config, book["total-noisy"])
    strategy = build_strategy(config.query.strategy, config.query.options)
    strategy.load_state_dict(load_strategy_state(context.state))

    outcome = run_client_round(
        config,
        dataset,
        pool,
        strategy,
        msg.content["arrays"].to_torch_state_dict(),
        server_round,
        default_device(),
        ledger_from=book["ledger-reported"],
    )
    book["ledger-reported"] = len(pool.ledger)
    save_pool(context.state, pool)
    save_strategy_state(context.state, strategy.state_dict())
    save_book(context.state, book)
    if config.experiment.checkpoint:
        save_client_checkpoint(run_dir, client, server_round, export_state(context.state))

    reply = RecordDict(
        {"arrays": ArrayRecord(outcome.helper_state), "metrics": MetricRecord(outcome.metrics)}
    )
    return Message(content=reply, reply_to=msg)
