"""Every set of allowed names in an experiment config, declared once as a ``Literal``.

:mod:`fedal.config` types its fields with these; the registries that implement the
names (datasets, models, optimisers, ...) are keyed by the same types, and
``typing.get_args`` lists them wherever a tuple of names is needed.
"""

from __future__ import annotations

from typing import Literal

DatasetName = Literal[
    "fashion-mnist", "mnist", "cifar10", "cifar100", "svhn", "moons", "four-moons"
]
FOLDER_DATASET = "image-folder"
# A benchmark of the registry, or each node's own folder of images (fedal.image_folder).
DataChoice = Literal[DatasetName, "image-folder"]
ModelName = Literal["cnn", "mlp", "resnet8", "resnet14", "resnet18"]
PartitionScheme = Literal[
    "iid", "dirichlet", "balanced-dirichlet", "pathological", "shards", "quantity"
]
Corruption = Literal["none", "noisy-blank", "noisy-diverse", "noisy-class"]
NoiseModel = Literal["none", "uniform", "structured"]
AnnotatorKind = Literal["simulated", "human"]
Optimizer = Literal["sgd", "adam"]
Schedule = Literal["constant", "cosine"]
HelperLoss = Literal["cross_entropy", "evidential"]
# Where a compute switch (bf16 autocast, channels_last) applies (fedal.compute).
ComputeSwitch = Literal["cuda", "always", "off"]
ScoringModel = Literal["helper", "global", "both"]
PrivateData = Literal["candidates", "all"]
Aggregation = Literal[
    "fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "scaffold"
]
