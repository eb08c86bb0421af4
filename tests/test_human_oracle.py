"""The labelling queue (real SQLite) and a person as the oracle of a client round."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from node_images import CLASSES, folder_config, write_node_folder

from clients.round import run_client_round
from fedal.human_oracle import HumanOracle
from fedal.labelling_queue import LabellingQueue, QueueError
from fedal.models import build_for_dataset
from fedal.node_folder import NodeFolder, NodeSettings
from strategies import build_strategy


def queue_with_images(tmp_path: Path, count: int = 5) -> LabellingQueue:
    queue = LabellingQueue(tmp_path)
    queue.use_classes(CLASSES)
    queue.register([f"img-{k}.png" for k in range(count)])
    return queue


def test_queue_numbers_images_once_and_keeps_answers(tmp_path: Path) -> None:
    queue = queue_with_images(tmp_path)
    assert queue.register(["img-9.png", "img-0.png"]) == [
        f"img-{k}.png" for k in (0, 1, 2, 3, 4, 9)
    ]
    queue.protect(np.array([4]))
    queue.enqueue(np.array([1, 2, 3]), round_number=1)
    with pytest.raises(QueueError, match="a protected image cannot be queued"):
        queue.enqueue(np.array([4]), round_number=1)
    assert queue.queued().tolist() == [1, 2, 3]
    pending = queue.next_pending()
    assert pending is not None and (pending.image, pending.path) == (1, "img-1.png")
    assert queue.queued_path(4) is None and queue.queued_path(0) is None
    assert queue.answer(2, 1) and not queue.answer(2, 0)  # the first answer stays
    assert not queue.answer(4, 0)  # protected: never answered
    with pytest.raises(QueueError, match="label 7 is not a class index"):
        queue.answer(1, 7)
    assert queue.waiting() == 2
    assert queue.labelled_per_round() == {1: 1}
    images, labels = queue.answered()
    assert images.tolist() == [2] and labels.tolist() == [1]
    with pytest.raises(QueueError, match="holds answers for classes"):
        queue.use_classes(("cat", "dog"))


def test_an_acknowledged_answer_survives_a_killed_process(tmp_path: Path) -> None:
    queue = queue_with_images(tmp_path)
    queue.enqueue(np.array([0, 1]), round_number=1)
    script = (
        "import os, sys; from pathlib import Path\n"
        "from fedal.labelling_queue import LabellingQueue\n"
        "assert LabellingQueue(Path(sys.argv[1])).answer(1, 0)\n"
        "print('acknowledged', flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -9 and "acknowledged" in done.stdout
    images, labels = LabellingQueue(tmp_path).answered()
    assert (images.tolist(), labels.tolist()) == ([1], [0])


def test_the_human_oracle_waits_for_answers_and_takes_late_ones_later(tmp_path: Path) -> None:
    queue = queue_with_images(tmp_path, count=8)
    oracle = HumanOracle(queue, answer_wait=10.0, poll=0.05)

    def person() -> None:
        time.sleep(0.3)
        queue.answer(0, 1)
        queue.answer(1, 0)

    helper = threading.Thread(target=person)
    helper.start()
    answers = oracle.ask(np.array([0, 1]), round_number=1)
    helper.join()
    assert (answers.indices.tolist(), answers.labels.tolist()) == ([0, 1], [1, 0])

    impatient = HumanOracle(queue, answer_wait=0.0)
    assert len(impatient.ask(np.array([2, 3]), round_number=2).indices) == 0
    labelled = np.array([0, 1])
    assert impatient.outstanding(labelled).tolist() == [2, 3]
    queue.answer(3, 1)  # late: it joins a later round
    late = impatient.answers(labelled)
    assert (late.indices.tolist(), late.labels.tolist()) == ([3], [1])
    assert impatient.outstanding(np.array([0, 1, 3])).tolist() == [2]


def test_client_rounds_with_a_person_as_the_oracle(tmp_path: Path) -> None:
    node = write_node_folder(tmp_path / "album", seed=2, unlabelled=8)
    settings = NodeSettings.from_node_config(
        {
            "data-dir": str(node.directory),
            "protect-list": str(node.protect_list),
            "protect-rule": node.protect_rule,
        }
    )
    config = folder_config(
        tmp_path / "test",
        "query.budget_per_query=3",
        "query.max_labels_per_client=8",
        "oracle.answer_wait=0",
        "training.epochs=1",
    )
    folder = NodeFolder.open(settings, config.data)
    pool = folder.new_pool(client=0)
    protected = set(pool.protected.tolist())
    torch.manual_seed(0)
    state = build_for_dataset(config.model.helper, folder.dataset).state_dict()
    oracle = folder.oracle(config.oracle)

    def client_round(server_round: int):  # type: ignore[no-untyped-def]
        return run_client_round(
            config,
            folder.dataset,
            pool,
            build_strategy("random"),
            state,
            server_round,
            torch.device("cpu"),
            ledger_from=len(pool.ledger),
            annotator=oracle,
        ).report

    first = client_round(1)  # nobody answers in time: three images wait
    assert first.new_labels == 0 and first.num_examples == 3
    asked = folder.queue.queued()
    assert len(asked) == 3 and protected.isdisjoint(asked.tolist())
    folder.queue.answer(int(asked[0]), 1)
    second = client_round(2)  # the late answer joins; two still wait; cap 8 - 4 - 2 = 2
    assert second.new_labels == 1 and second.num_examples == 4
    assert second.ledger == ((2, int(asked[0]), 1),)
    queued = folder.queue.queued()
    assert len(queued) == 5 and set(asked.tolist()) <= set(queued.tolist())
    assert protected.isdisjoint(queued.tolist())
    assert pool.labelled.tolist()[-1] == int(asked[0])


def test_the_queue_lives_in_the_node_folder(tmp_path: Path) -> None:
    queue = queue_with_images(tmp_path)
    assert queue.path == tmp_path / ".fedal" / "labelling.sqlite3" and queue.path.is_file()
    with pytest.raises(QueueError, match=r"node folder '.*nowhere' does not exist"):
        LabellingQueue(tmp_path / "nowhere")


def test_answers_taken_by_a_client_that_died_before_saving_are_taken_again(
    tmp_path: Path,
) -> None:
    queue = queue_with_images(tmp_path, count=6)
    oracle = HumanOracle(queue, answer_wait=0.0)
    saved = np.array([5])  # the pool as last saved (the checkpoint or context.state)
    oracle.ask(np.array([1, 2]), round_number=1)
    queue.answer(2, 0)
    taken = oracle.answers(saved)
    assert taken.indices.tolist() == [2]
    # the ClientApp process dies before saving its pool: the next process starts from
    # `saved` again and takes the same answer; nothing was marked consumed in between
    again = HumanOracle(LabellingQueue(tmp_path), answer_wait=0.0).answers(saved)
    assert (again.indices.tolist(), again.labels.tolist()) == ([2], [0])
    assert oracle.outstanding(np.array([5, 2])).tolist() == [1]
