"""A client on its own folder of images (``data.dataset = "image-folder"``): its training
set, its pool and its human oracle, from the SuperNode's node config.

Node config keys (``flower-supernode --node-config``; values are TOML, so text is quoted):

- ``data-dir``: the node's folder of images (:mod:`fedal.image_folder`), required;
- ``protect-list``: a file of paths or glob patterns to protect, optional;
- ``protect-rule``: a metadata rule, e.g. ``"taken-before:2024-01-01;gps"``, optional.

The node's sample indices are the ids its labelling queue gave its images
(:meth:`fedal.labelling_queue.LabellingQueue.register`): stable across rounds and
processes even when images are added to the folder during a run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedal.config import DataSection, OracleSection
from fedal.datasets import LoadedDataset
from fedal.human_oracle import HumanOracle
from fedal.image_folder import (
    FolderError,
    NodeImages,
    Protection,
    folder_meta,
    image_files,
    read_images,
    scan_node,
)
from fedal.labelling_queue import LabellingQueue
from fedal.pool import ClientPool

DATA_DIR_KEY, PROTECT_LIST_KEY, PROTECT_RULE_KEY = "data-dir", "protect-list", "protect-rule"


@dataclass(frozen=True)
class NodeSettings:
    """Where a node's images are and how its protected set is defined."""

    data_dir: Path
    protect_list: str = ""
    protect_rule: str = ""

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> NodeSettings:
        """The settings in a SuperNode's node config (see the module docstring)."""
        if DATA_DIR_KEY not in node_config:
            raise FolderError(
                "data.dataset 'image-folder' needs every SuperNode started with its folder: "
                "--node-config 'partition-id=K num-partitions=N data-dir=\"/path/to/images\"'"
            )
        return cls(
            data_dir=Path(str(node_config[DATA_DIR_KEY])).expanduser().resolve(),
            protect_list=str(node_config.get(PROTECT_LIST_KEY, "")),
            protect_rule=str(node_config.get(PROTECT_RULE_KEY, "")),
        )


@dataclass(frozen=True)
class NodeFolder:
    """A node folder opened for a run: its images, their pixels and its queue."""

    images: NodeImages
    dataset: LoadedDataset
    queue: LabellingQueue

    @classmethod
    def open(cls, settings: NodeSettings, data: DataSection) -> NodeFolder:
        """Scan the folder, number new images, mark the protected ones in the queue and
        read every image at the model's input size."""
        directory, classes = settings.data_dir, data.class_names
        protection = Protection.of(directory, settings.protect_list, settings.protect_rule)
        queue = LabellingQueue(directory)
        queue.use_classes(classes)
        paths = queue.register(image_files(directory))
        images = scan_node(directory, paths, classes, protection)
        queue.protect(np.flatnonzero(images.protected))
        size, channels = data.image_size, data.image_channels
        empty = np.empty((0, channels, size, size), dtype=np.uint8)
        dataset = LoadedDataset(
            train_x=read_images(directory, paths, size, channels),
            train_y=images.labels,
            test_x=empty,
            test_y=np.empty(0, dtype=np.int64),
            meta=folder_meta(classes, size, channels),
        )
        return cls(images, dataset, queue)

    def new_pool(self, client: int) -> ClientPool:
        """The node's first pool: every image, the protected ones marked, and the
        unprotected images of ``labelled/<class>/`` labelled in round 0."""
        labels, protected = self.images.labels, self.images.protected
        pool = ClientPool(
            client=client, shard=np.arange(len(labels), dtype=np.int64), protected_mask=protected
        )
        known = np.flatnonzero((labels >= 0) & ~protected)
        pool.add_labels(known, labels[known], round_number=0)
        return pool

    def oracle(self, settings: OracleSection) -> HumanOracle:
        """The person who labels this node's picks, through its queue."""
        return HumanOracle(self.queue, settings.answer_wait)
