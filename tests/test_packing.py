"""Packed execution's message translation (fedal.app.packing) on real Flower messages."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, RecordDict

from clients.protocol import PACKED_TRAIN, PackedReply, PackedTask
from fedal.app.packing import Packing


@pytest.fixture(autouse=True)
def inside_a_server_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps instruction messages with the running app's identity."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def client_messages(clients: list[int]) -> list[Message]:
    """Flower's per-client train messages: one shared content, addressed to client ids."""
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.arange(3, dtype=np.float32))}),
            "config": ConfigRecord({"fedal-round": 1}),
        }
    )
    return [Message(content, dst_node_id=client, message_type="train") for client in clients]


def test_a_round_becomes_one_message_per_pack_with_drawn_clients() -> None:
    packing = Packing(3)
    nodes = {0: 700, 1: 701, 2: 702}
    packed = packing.pack_messages(client_messages([5, 0, 3, 2]), nodes)
    assert [m.metadata.dst_node_id for m in packed] == [700, 702]  # pack 1 drew nobody
    assert all(m.metadata.message_type == PACKED_TRAIN for m in packed)
    tasks = [PackedTask.from_content(m.content) for m in packed]
    assert [task.clients for task in tasks] == [(0, 3), (2, 5)]
    assert np.array_equal(tasks[0].content["arrays"]["w"].numpy(), np.arange(3))
    assert set(tasks[0].content.keys()) == {"arrays", "config"}


def test_replies_split_per_client_and_a_failed_pack_fails_each_of_its_clients() -> None:
    packing = Packing(2)
    packed = packing.pack_messages(client_messages([0, 1, 2, 3]), {0: 900, 1: 901})
    replies = {
        client: RecordDict({"arrays": ArrayRecord({"w": Array(np.full(2, client, np.float32))})})
        for client in (0, 2)
    }
    good = Message(PackedReply(replies).to_content(), reply_to=packed[0])
    failed = Message(Error(code=0, reason="worker died"), reply_to=packed[1])
    unpacked = packing.unpack_replies([good, failed], {900: 0, 901: 1})

    by_client = {reply.metadata.src_node_id: reply for reply in unpacked}
    assert sorted(by_client) == [0, 1, 2, 3]
    for client in (0, 2):
        assert not by_client[client].has_error()
        assert np.array_equal(by_client[client].content["arrays"]["w"].numpy(), [client] * 2)
    for client in (1, 3):
        assert by_client[client].has_error()
        assert by_client[client].error.reason == "worker died"
