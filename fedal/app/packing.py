"""Packed execution (``federation.packs = P``): P Flower nodes, each training the drawn
clients of its pack one after another in one worker process (one CUDA context per
pack, the round's global arrays sent once per pack instead of once per client).

Client ``k`` belongs to pack ``k % P``. Clients are drawn exactly as with a node per
client: Flower's strategy samples from the client ids, listed and seeded as
:mod:`fedal.app.participation` lists the nodes, so the same seed trains the same clients.
The per-client train messages Flower's strategy builds are merged into one
:class:`~clients.protocol.PackedTask` per pack, and each pack's
:class:`~clients.protocol.PackedReply` is split back into one reply per client (from the
client id, as if it had its own node) before aggregation in client order: a run gives the
same ledger, uploads and accuracies as with a node per client. A pack that fails, or does
not reply within ``federation.round_timeout`` (which then bounds the whole pack), loses
all of its drawn clients for that round. A pack's clients keep their state between
rounds in their checkpoints (``experiment.checkpoint`` is required), not in the node's
context, which Flower's simulation ships through Ray with every message.
"""

from __future__ import annotations

from flwr.app import Message

from clients.protocol import PACKED_TRAIN, PackedReply, PackedTask, pack_of


class Packing:
    """Which pack holds a client, and the translation between per-client and per-pack
    messages of one round."""

    def __init__(self, packs: int) -> None:
        if packs < 1:
            raise ValueError(f"packs must be >= 1, got {packs}")
        self.packs = packs
        self.sent: dict[int, Message] = {}

    def pack_of(self, client: int) -> int:
        """The pack (and the node's ``partition-id``) of ``client``."""
        return pack_of(client, self.packs)

    def pack_messages(self, messages: list[Message], pack_nodes: dict[int, int]) -> list[Message]:
        """One message per pack with drawn clients, from Flower's per-client messages
        (addressed to client ids, all with the same content); ``pack_nodes`` maps a pack
        to its node id."""
        self.sent = {message.metadata.dst_node_id: message for message in messages}
        by_pack: dict[int, list[int]] = {}
        for client in sorted(self.sent):
            by_pack.setdefault(self.pack_of(client), []).append(client)
        return [
            Message(
                content=PackedTask(tuple(clients), self.sent[clients[0]].content).to_content(),
                dst_node_id=pack_nodes[pack],
                message_type=PACKED_TRAIN,
            )
            for pack, clients in sorted(by_pack.items())
        ]

    def unpack_replies(self, replies: list[Message], node_packs: dict[int, int]) -> list[Message]:
        """A reply per client from the packs' replies (each from its client id); a failed
        pack's error becomes the reply of each of its drawn clients."""
        unpacked = []
        for reply in replies:
            if reply.has_error():
                pack = node_packs[reply.metadata.src_node_id]
                unpacked += [
                    Message(reply.error, reply_to=message)
                    for client, message in self.sent.items()
                    if self.pack_of(client) == pack
                ]
                continue
            for client, content in PackedReply.from_content(reply.content).replies.items():
                unpacked.append(Message(content, reply_to=self.sent[client]))
        return unpacked
