"""Typed experiment configuration: TOML files, ``key=value`` overrides, early validation.

A config has one table per concern (``[experiment]``, ``[data]``, ``[oracle]``,
``[model]``, ``[training]``, ``[query]``, ``[federation]``). Flower's run config is flat,
so :func:`flatten` / :func:`from_flat` convert to and from ``"section.key"`` strings.
Every section is a :class:`fedal.schema.Schema`: every bad value fails with one line
naming the field, the value, and what is allowed (:func:`fedal.schema.validated`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from fedal.choices import (
    FOLDER_DATASET,
    Aggregation,
    AnnotatorKind,
    ComputeSwitch,
    Corruption,
    DataChoice,
    HelperLoss,
    ModelName,
    NoiseModel,
    Optimizer,
    PartitionScheme,
    PrivateData,
    Schedule,
    ScoringModel,
)
from fedal.schema import ConfigError, Schema, validated

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ExperimentSection(Schema):
    """Run identity and where results go."""

    name: str = "experiment"
    seed: int = Field(0, ge=0)
    output_dir: str = "runs"
    run_dir: str = ""
    target_accuracy: float = Field(0.8, ge=0, le=1)
    save_uploads: bool = False
    checkpoint: bool = True
    resume: bool = False


class DataSection(Schema):
    """Dataset, partition across clients, protected split and initial labelled pool.

    ``dataset = "image-folder"`` is a real federation: each node brings its own folder of
    images (``--node-config``, :mod:`fedal.image_folder`), ``classes`` names the classes
    (comma-separated, in label order), ``test_dir`` is the server's test set (one
    sub-folder per class) and every image is resized to ``image_size`` squared with
    ``image_channels`` channels. The partition, protected-fraction, initial-label and
    corruption settings apply to the benchmarks only.
    """

    dataset: DataChoice = "fashion-mnist"
    data_dir: str = ""
    partition: PartitionScheme = "iid"
    alpha: float = Field(0.5, gt=0)
    classes_per_client: int = Field(2, ge=1)
    shards_per_client: int = Field(2, ge=1)
    quantity_sigma: float = Field(1.0, gt=0)
    num_clients: int = Field(10, ge=1)
    protected_fraction: float = Field(0.9, ge=0, lt=1)
    initial_labels_per_client: int = Field(20, ge=1)  # FedAvg weights need labels
    train_subset: int = Field(0, ge=0, description="0 (all) or a positive count")
    test_subset: int = Field(0, ge=0, description="0 (all) or a positive count")
    corruption: Corruption = "none"
    corruption_share: float = Field(0.3, ge=0, lt=1)
    corruption_class: int = 1
    corruption_unique: int = Field(100, ge=1)
    classes: str = Field("", description="comma-separated class names")
    test_dir: str = ""
    image_size: int = Field(32, ge=8, le=512)
    image_channels: Literal[1, 3] = 3

    @property
    def class_names(self) -> tuple[str, ...]:
        """``classes`` as a tuple of names, in label order."""
        return tuple(name.strip() for name in self.classes.split(",") if name.strip())

    @model_validator(mode="after")
    def _folder_needs_classes_and_test_set(self) -> DataSection:
        if self.dataset != FOLDER_DATASET:
            return self
        names = self.class_names
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(
                f"dataset 'image-folder' needs classes = two or more distinct names, e.g. "
                f"'cat,dog', not {self.classes!r}"
            )
        if not self.test_dir:
            raise ValueError(
                "dataset 'image-folder' needs test_dir = the server's test set (a folder with "
                "one sub-folder per class)"
            )
        return self


class OracleSection(Schema):
    """The annotator: simulated (the benchmark's labels, with a noise model and rate) or
    a person labelling on each node (``human``: :mod:`fedal.human_oracle`; the images a
    client picks wait in the node's labelling queue, and the client waits up to
    ``answer_wait`` seconds for their answers before the round goes on without them)."""

    noise: NoiseModel = "none"
    rate: float = Field(0.0, ge=0, le=1)
    annotator: AnnotatorKind = "simulated"
    answer_wait: float = Field(60.0, ge=0, description="seconds")


class ModelSection(Schema):
    """Helper / task model architecture."""

    helper: ModelName = "cnn"
    dropout: float = Field(0.0, ge=0, lt=1)


class TrainingSection(Schema):
    """Supervised training of the helper on each client's labelled data.

    ``loss``: the helper's supervised loss, cross entropy or FEAL's evidential loss
    (:mod:`fedal.evidential`, with ``evidential_kl_weight`` and
    ``evidential_annealing_rounds``). ``kcfu``: KAFAL's knowledge-compensatory update
    (:mod:`fedal.kcfu`; mixup Beta(``kcfu_mix_alpha``, ``kcfu_mix_alpha``)), which needs
    ``loss = "cross_entropy"`` (its local loss is a balanced-softmax cross entropy).
    Fine-tuning (``finetune``) keeps LHD's cross entropy on pseudo-labels with either.
    ``bf16``: where every client round and the central evaluation run under bf16
    autocast (:mod:`fedal.compute`): on CUDA only, on every device, or nowhere;
    ``channels_last``: where their image batches and convolution weights take the
    channels_last layout, likewise (on the CPU too it is faster and rounds differently).
    """

    epochs: int = Field(1, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.05, gt=0)
    optimizer: Optimizer = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Schedule = "constant"
    augment: bool = True
    eval_batch_size: int = Field(512, ge=1)
    finetune: bool = False
    finetune_gamma: float = Field(0.9, ge=0, lt=1)
    finetune_iterations: int = Field(1, ge=0)
    finetune_ema_decay: float = Field(0.99, ge=0, lt=1)
    loss: HelperLoss = "cross_entropy"
    evidential_kl_weight: float = Field(0.01, ge=0)
    evidential_annealing_rounds: int = Field(10, ge=1)
    kcfu: bool = False
    kcfu_mix_alpha: float = Field(2.0, gt=0)
    bf16: ComputeSwitch = Field(
        "cuda", description="bf16 autocast: on CUDA only (default), on every device, or off"
    )
    channels_last: ComputeSwitch = Field(
        "cuda",
        description="channels_last layout: on CUDA only (default), on every device, or off",
    )

    @model_validator(mode="after")
    def _kcfu_needs_cross_entropy(self) -> TrainingSection:
        if self.kcfu and self.loss != "cross_entropy":
            raise ValueError(
                f"kcfu = true needs loss = 'cross_entropy', not {self.loss!r} "
                "(KCFU's local loss is a balanced-softmax cross entropy)"
            )
        return self


class QuerySection(Schema):
    """Active learning: which strategy, how often, how much.

    ``strategy`` names a registered query strategy and ``options`` are that strategy's
    own settings; both are checked against the strategy registry at the edge
    (:func:`fedal.app.preflight.check_strategy`), where the strategies are importable.
    """

    strategy: str = "random"
    budget_per_query: int = Field(10, ge=0)
    query_every: int = Field(1, ge=1)
    max_labels_per_client: int = Field(0, ge=0, description="0 (no cap) or a positive count")
    scoring_model: ScoringModel = "helper"
    private_data: PrivateData = "candidates"
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def privacy_mode(self) -> str:
        """What ``private_data`` guarantees, in one line (README, "Privacy modes")."""
        if self.private_data == "all":
            return (
                "paper mode (private networks study protected data; it is never labelled, "
                "uploaded or used by the helper)"
            )
        return "strict mode (protected data influences nothing that leaves the client)"


class FederationSection(Schema):
    """Rounds, participation, aggregation and client resources."""

    rounds: int = Field(10, ge=1)
    fraction_train: float = Field(1.0, gt=0, le=1)
    aggregation: Aggregation = "fedavg"
    proximal_mu: float = 0.01
    server_lr: float = 1.0
    server_momentum: float = 0.9
    # server learning rate of fedadam / fedyogi / fedadagrad (Reddi et al.: 0.01 for Adam
    # and Yogi on CIFAR-10; an Adam step moves every weight by about eta)
    eta: float = Field(0.01, gt=0)
    beta_1: float = Field(0.9, ge=0, lt=1)
    beta_2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)
    client_cpus: float = Field(1.0, gt=0)
    client_gpus: float = Field(0.0, ge=0, le=1)
    round_timeout: float = Field(3600.0, gt=0, description="seconds to wait for replies")
    connect_timeout: float = Field(600.0, gt=0, description="seconds to wait for all clients")
    min_train_clients: int = Field(1, ge=1, description="fewest replies a round may use")
    packs: int = Field(
        0,
        ge=0,
        description=(
            "0: a Flower node per client; P >= 1: P nodes, node p running the drawn clients "
            "k with k % P == p one after another in one worker (packed execution)"
        ),
    )
    evaluation_shards: int = Field(
        0,
        ge=0,
        description=(
            "0: the server evaluates the global model on the test set; S >= 1: S nodes "
            "evaluate one shard of it each (simulation: the worker slots), the server adds up"
        ),
    )


class ExperimentConfig(Schema):
    """The whole experiment; every field has a default."""

    experiment: ExperimentSection = Field(default_factory=ExperimentSection)
    data: DataSection = Field(default_factory=DataSection)
    oracle: OracleSection = Field(default_factory=OracleSection)
    model: ModelSection = Field(default_factory=ModelSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    query: QuerySection = Field(default_factory=QuerySection)
    federation: FederationSection = Field(default_factory=FederationSection)

    @model_validator(mode="after")
    def _human_labels_node_folders(self) -> ExperimentConfig:
        human = self.oracle.annotator == "human"
        if human != (self.data.dataset == FOLDER_DATASET):
            raise ValueError(
                f"oracle.annotator {self.oracle.annotator!r} does not fit data.dataset "
                f"{self.data.dataset!r}; a person labels node folders (annotator 'human' with "
                "dataset 'image-folder'), the simulated oracle labels benchmarks"
            )
        if human and self.oracle.answer_wait >= self.federation.round_timeout:
            raise ValueError(
                f"oracle.answer_wait {self.oracle.answer_wait:g} s must be shorter than "
                f"federation.round_timeout {self.federation.round_timeout:g} s (the server "
                "drops a reply that comes later)"
            )
        return self

    @model_validator(mode="after")
    def _packs_fit_the_clients(self) -> ExperimentConfig:
        packs = self.federation.packs
        if packs > self.data.num_clients:
            raise ValueError(
                f"federation.packs {packs} is more than data.num_clients "
                f"{self.data.num_clients}; allowed: 0 (a node per client) to num_clients"
            )
        if packs and not self.experiment.checkpoint:
            raise ValueError(
                "federation.packs needs experiment.checkpoint = true: a pack's clients "
                "continue from their checkpoints between rounds"
            )
        if packs and self.data.dataset == FOLDER_DATASET:
            raise ValueError(
                "federation.packs must be 0 with data.dataset 'image-folder': each node "
                "folder is one client on its own device"
            )
        return self

    @model_validator(mode="after")
    def _evaluation_shards_fit_the_nodes(self) -> ExperimentConfig:
        shards = self.federation.evaluation_shards
        if shards > self.node_count:
            raise ValueError(
                f"federation.evaluation_shards {shards} is more than the {self.node_count} "
                "Flower nodes (data.num_clients, or federation.packs when set); allowed: 0 "
                f"(the server evaluates) to {self.node_count}"
            )
        if shards and self.data.dataset == FOLDER_DATASET:
            raise ValueError(
                "federation.evaluation_shards must be 0 with data.dataset 'image-folder': "
                "the nodes hold their own images, not the central test set"
            )
        return self

    @property
    def node_count(self) -> int:
        """Flower nodes of the federation: one per pack, or one per client."""
        return self.federation.packs or self.data.num_clients

    def replace(self, section: str, **changes: Any) -> ExperimentConfig:
        """A copy with some fields of one section changed (validated again)."""
        tables = self.to_dict()
        tables[section] = {**tables[section], **changes}
        return from_dict(tables)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dictionary (TOML/JSON ready)."""
        return self.model_dump()


SECTIONS: dict[str, type[Schema]] = {
    name: field.annotation  # type: ignore[misc]
    for name, field in ExperimentConfig.model_fields.items()
}
OPTIONS_PREFIX = "query.options."


def from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate a config from nested tables (one line per bad field)."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; allowed: {', '.join(SECTIONS)}")
    sections = {name: validated(SECTIONS[name], raw.get(name, {}), name) for name in SECTIONS}
    return validated(ExperimentConfig, sections, "config")


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``section.key=value``; the value is read as a TOML value, else kept as text."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, raw_value = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw_value}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw_value
    return key, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to nested tables (returns a new dict)."""
    merged = json.loads(json.dumps(raw))
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        if len(parts) < 2:
            raise ConfigError(f"override {text!r}: expected section.key=value")
        table = merged
        for depth, part in enumerate(parts[:-1], start=1):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                where = ".".join(parts[:depth])
                raise ConfigError(f"override {text!r}: {where} is a value, not a table")
        table[parts[-1]] = value
    return merged


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    strategy: str | None = None,
) -> ExperimentConfig:
    """Load a TOML file (or defaults when ``path`` is None) and apply overrides.

    ``strategy`` replaces the file's query strategy; the file's ``[query.options]``
    belong to its own strategy and are dropped when the strategy changes (options for
    the new one can still be given as ``query.options.NAME=VALUE`` overrides).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        config_path = Path(path)
        if not config_path.is_file():
            raise ConfigError(f"config file {str(config_path)!r} does not exist")
        with config_path.open("rb") as handle:
            try:
                raw = tomllib.load(handle)
            except tomllib.TOMLDecodeError as error:
                raise ConfigError(f"{config_path}: not valid TOML ({error})") from None
    query = raw.setdefault("query", {})
    if strategy is not None and strategy != query.get("strategy"):
        query["strategy"] = strategy
        query.pop("options", None)
    return from_dict(apply_overrides(raw, overrides or []))


def flatten(config: ExperimentConfig) -> dict[str, Any]:
    """Flat ``section.key -> scalar`` mapping (Flower run-config style)."""
    flat: dict[str, Any] = {}
    for section, values in config.to_dict().items():
        for key, value in values.items():
            if key == "options":
                for option, option_value in value.items():
                    flat[f"{OPTIONS_PREFIX}{option}"] = option_value
            else:
                flat[f"{section}.{key}"] = value
    return flat


def from_flat(flat: Mapping[str, Any]) -> ExperimentConfig:
    """Inverse of :func:`flatten`; keys that are not ``section.key`` are ignored."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        if key.startswith(OPTIONS_PREFIX):
            nested.setdefault("query", {}).setdefault("options", {})[key[len(OPTIONS_PREFIX) :]] = (
                value
            )
            continue
        section, _, name = key.partition(".")
        if section in SECTIONS and name:
            nested.setdefault(section, {})[name] = value
    return from_dict(nested)
