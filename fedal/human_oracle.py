"""A person as the oracle: the client's picks go into the node's labelling queue
(:mod:`fedal.labelling_queue`) and a person answers them on the page of ``fedal annotate``.

The client waits up to ``oracle.answer_wait`` seconds after queueing for the answers of
its picks; whatever is answered by then joins the pool in that round, and answers that
come later join it at the start of a later round. Queued images whose answers are not in
the pool yet are not candidates again and count against ``query.max_labels_per_client``.
"""

from __future__ import annotations

import time

import numpy as np

from fedal.labelling_queue import LabellingQueue
from fedal.oracle import Answers


class HumanOracle:
    """The :class:`fedal.oracle.Annotator` of a node folder's labelling queue."""

    def __init__(self, queue: LabellingQueue, answer_wait: float, poll: float = 0.25) -> None:
        self.queue = queue
        self.answer_wait = answer_wait
        self.poll = poll

    def outstanding(self, labelled: np.ndarray) -> np.ndarray:
        """Queued images whose answers are not in the pool yet."""
        return np.setdiff1d(self.queue.queued(), labelled)

    def answers(self, labelled: np.ndarray) -> Answers:
        """Answers not in the pool yet, in the order they were given."""
        images, labels = self.queue.answered()
        fresh = ~np.isin(images, labelled)
        return Answers(images[fresh], labels[fresh])

    def ask(self, indices: np.ndarray, round_number: int) -> Answers:
        """Queue ``indices``, wait up to ``answer_wait`` seconds for all their answers,
        and return those given by then."""
        asked = np.asarray(indices, dtype=np.int64)
        self.queue.enqueue(asked, round_number)
        deadline = time.monotonic() + self.answer_wait
        while True:
            images, labels = self.queue.answered()
            mine = np.isin(images, asked)
            if mine.sum() == len(asked) or time.monotonic() >= deadline:
                return Answers(images[mine], labels[mine])
            time.sleep(self.poll)
