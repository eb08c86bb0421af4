"""FedAvg through fedal's strategy wrapper, checked against a hand-computed two-client
case: the server model is sum_k n_k w_k / sum_k n_k, with n_k the labelled-set size the
client trained on (``num-examples``), whatever order the replies arrive in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from engine_support import client_report
from flwr.app import Message, MessageType, Metadata
from flwr.app.message.message import make_message

from clients.protocol import RoundReply
from fedal.app.server import RoundReports, aggregation_strategy
from fedal.config import load_config
from fedal.rundir import RunDirectory


def reply(client: int, examples: int, weight: list[float]) -> Message:
    """A train reply from node ``100 + client`` as the SuperLink hands it to the server."""
    report = client_report(client, trained=examples, requested=examples)
    content = RoundReply({"w": torch.tensor(weight)}, report).to_content()
    metadata = Metadata(
        run_id=1,
        message_id=f"reply-{client}",
        src_node_id=100 + client,
        dst_node_id=0,
        reply_to_message_id=f"task-{client}",
        group_id="1",
        created_at=0.0,
        ttl=60.0,
        message_type=MessageType.TRAIN,
    )
    return make_message(metadata, content)


def test_fedavg_weights_each_helper_by_its_labelled_examples(tmp_path: Path) -> None:
    config = load_config(None, ["data.num_clients=2"])
    reports = RoundReports(RunDirectory(tmp_path), save_uploads=False)
    strategy = aggregation_strategy(config, reports)
    replies = [reply(1, examples=30, weight=[4.0, -2.0]), reply(0, examples=10, weight=[0.0, 2.0])]

    arrays, metrics = strategy.aggregate_train(1, replies)

    # (10 * [0, 2] + 30 * [4, -2]) / 40 = [3, -1]
    assert np.allclose(arrays["w"].numpy(), [3.0, -1.0])
    assert metrics["labels-used"] == 40
    received, dropped = reports.take(1)
    assert [report.client for report in received] == [0, 1] and dropped == []
