"""Reproducible client sampling for partial participation (``federation.fraction_train < 1``).

Flower's strategies sample ``random.sample(list(grid.get_node_ids()), k)``. Node ids are
random per run (simulation) or per connection (deployment), so on their own the same
seed would pick different clients in different runs. :class:`Participation` fixes both
inputs of that draw: it asks every node once for its client id (a ``query.client_id``
message, answered by :mod:`clients.app` from the node's ``partition-id``), lists the
nodes to the strategy in client-id order, and seeds Python's ``random`` from the
experiment seed and the round each time it lists them, right before Flower samples.
The same seed then trains the same clients in every round of every run.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from clients.protocol import CLIENT_ID_QUERY, ClientIdAnswer, ClientIdQuery


class Participation:
    """The seed of the per-round client draw and the node -> client-id directory (with
    ``packs``, :mod:`fedal.app.packing`, node -> pack id: Flower then draws from the
    client ids themselves)."""

    def __init__(self, seed: int, num_clients: int, packs: int = 0) -> None:
        self.seed = seed
        self.num_clients = num_clients
        self.packs = packs
        self.node_clients: dict[int, int] = {}

    def client_of(self, node: int) -> int:
        """The client of a (reply's) node id; packed, replies come from client ids."""
        return node if self.packs else self.node_clients[node]

    def drawable(self, grid: Grid) -> list[int]:
        """What Flower draws from: the nodes in client order or, packed, the client ids
        once every pack's node is connected."""
        nodes = self.ordered_nodes(grid)
        if not self.packs:
            return nodes
        return list(range(self.num_clients)) if len(nodes) == self.packs else []

    def grid_for_round(self, grid: Grid, server_round: int) -> ClientOrderedGrid:
        """The grid to hand to Flower's ``configure_train`` for the run's round
        ``server_round`` (absolute: a resumed run draws as the uninterrupted one)."""
        draw_seed = f"fedal-participation-{self.seed}-{server_round}"
        return ClientOrderedGrid(grid, self, draw_seed)

    def ordered_nodes(self, grid: Grid) -> list[int]:
        """The connected nodes sorted by client (or pack) id; unknown nodes are asked."""
        nodes = list(grid.get_node_ids())
        unknown = [node for node in nodes if node not in self.node_clients]
        if unknown:
            count = self.packs or self.num_clients
            self.node_clients.update(ask_client_ids(grid, unknown, count))
        clients = {node: self.node_clients[node] for node in nodes}
        if len(set(clients.values())) < len(clients):
            raise RuntimeError(f"connected nodes share a partition-id (node: client): {clients}")
        return sorted(nodes, key=clients.__getitem__)


class ClientOrderedGrid:
    """A :class:`flwr.serverapp.Grid` that lists its nodes in client-id order and seeds
    Python's ``random`` each time it lists them.

    Flower samples right after listing the nodes, so the draw depends only on the seed
    and the connected clients: not on asking new nodes their client id (that exchange
    may use ``random`` itself) or on how often the nodes were listed while waiting.
    """

    def __init__(self, grid: Grid, participation: Participation, draw_seed: str) -> None:
        self._grid = grid
        self._participation = participation
        self._draw_seed = draw_seed

    def get_node_ids(self) -> Iterator[int]:
        nodes = self._participation.drawable(self._grid)
        random.seed(self._draw_seed)
        return iter(nodes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def ask_client_ids(grid: Grid, nodes: Iterable[int], num_clients: int) -> dict[int, int]:
    """Each node's client id, from one ``query.client_id`` round trip."""
    content = ClientIdQuery(num_clients).to_content()
    messages = [
        Message(content=content, dst_node_id=node, message_type=CLIENT_ID_QUERY) for node in nodes
    ]
    answers: dict[int, int] = {}
    for reply in grid.send_and_receive(messages):
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise RuntimeError(f"node {node} did not tell its client id: {reply.error.reason}")
        answers[node] = ClientIdAnswer.from_content(reply.content).client
    return answers


class MissingClientsError(RuntimeError):
    """Not every client connected in time; the message says which setting to change."""


def wait_for_clients(grid: Grid, nodes: int, timeout: float, poll: float = 1.0) -> None:
    """Wait until ``nodes`` nodes (one per client, or per pack) are connected (SuperNodes
    start in any order); fail with one line after ``timeout`` seconds instead of waiting
    forever."""
    deadline = time.monotonic() + timeout
    while (connected := len(list(grid.get_node_ids()))) < nodes:
        if time.monotonic() >= deadline:
            raise MissingClientsError(
                f"only {connected} of {nodes} nodes (data.num_clients, or federation.packs "
                f"when set) connected within federation.connect_timeout={timeout:g} s; start "
                f'the missing SuperNodes (--node-config "partition-id=K num-partitions={nodes}")'
                " or raise federation.connect_timeout"
            )
        time.sleep(poll)
