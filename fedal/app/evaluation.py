"""Central evaluation on the nodes (``federation.evaluation_shards = S``).

After every round the server evaluates the global model on the central test set. On
its own it does so while every worker slot waits for the next round; with S shards it
sends the global arrays to S nodes after every round (the evaluation before the first
round stays on the server, while the workers start) in one ``evaluate`` message each (Flower's
``MessageType.EVALUATE``, handled by :func:`clients.app.evaluate_shard`), every node
evaluates one shard (:func:`fedal.evaluation_set.central_test_shard`) and the server adds
up their sums in shard order. The right predictions and the samples are those of the
server's own pass, so the accuracy is the same number; the mean loss agrees to float64
rounding. Each node needs the central test set: benchmark data (simulation, or SuperNodes
with the dataset), not node folders (:mod:`fedal.config` refuses that combination).
"""

from __future__ import annotations

from functools import reduce
from operator import add

from flwr.app import ArrayRecord, Message, MessageType
from flwr.serverapp import Grid

from clients.protocol import EvaluationReply, EvaluationTask
from fedal.config import ExperimentConfig
from fedal.training import EvalStats


class NodeEvaluationError(RuntimeError):
    """A node failed to evaluate its shard (or did not reply in time)."""


def evaluate_on_nodes(
    grid: Grid, arrays: ArrayRecord, config: ExperimentConfig, samples: int
) -> tuple[EvalStats, float]:
    """The global ``arrays`` evaluated on ``federation.evaluation_shards`` nodes (the
    first ones by node id), and the nodes' seconds summed over the shards. The shards
    must add up to the server's test view of ``samples`` images (a node holding another
    test set fails the run)."""
    shards = config.federation.evaluation_shards
    nodes = sorted(grid.get_node_ids())[:shards]
    if len(nodes) < shards:
        raise NodeEvaluationError(
            f"federation.evaluation_shards={shards} but only {len(nodes)} node(s) are connected"
        )
    messages = [
        Message(
            content=EvaluationTask(config, shard, shards).to_content(arrays),
            dst_node_id=node,
            message_type=MessageType.EVALUATE,
        )
        for shard, node in enumerate(nodes)
    ]
    shard_of = {node: shard for shard, node in enumerate(nodes)}
    replies: dict[int, EvaluationReply] = {}
    for reply in grid.send_and_receive(messages, timeout=config.federation.round_timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise NodeEvaluationError(
                f"node {node} failed to evaluate shard {shard_of[node]} of the test set: "
                f"{reply.error.reason}"
            )
        replies[shard_of[node]] = EvaluationReply.from_content(reply.content)
    missing = sorted(set(range(shards)) - set(replies))
    if missing:
        raise NodeEvaluationError(
            f"no evaluation of test-set shard(s) {missing} within federation.round_timeout="
            f"{config.federation.round_timeout:g} s"
        )
    ordered = [replies[shard] for shard in range(shards)]
    total = reduce(add, (reply.sums for reply in ordered))
    if total.count != samples:
        raise NodeEvaluationError(
            f"the nodes evaluated {total.count} test images, the server's test set has "
            f"{samples}: do they hold the same dataset (data.dataset, data.data_dir)?"
        )
    return total.stats(), sum(reply.seconds for reply in ordered)
