"""Tests for fedal.config and fedal.validation: TOML + overrides, flat round trip, and
early one-line errors naming the field, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedal.config import (
    ConfigError,
    DataSection,
    ExperimentConfig,
    flatten,
    from_dict,
    from_flat,
    load_config,
    parse_override,
)
from fedal.partition import partition_indices
from fedal.validation import check_against_partition

CONFIG_TOML = """
[experiment]
name = "unit"
seed = 3

[data]
partition = "dirichlet"
alpha = 0.3
num_clients = 5

[training]
lr = 0.01
augment = false

[query]
strategy = "entropy"

[query.options]
temperature = 2.0
"""


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "unit.toml"
    path.write_text(CONFIG_TOML)
    return path


def _error(overrides: list[str]) -> str:
    """The message of the ConfigError that loading defaults with ``overrides`` raises."""
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides)
    return str(caught.value)


def test_load_toml_file(config_path: Path) -> None:
    config = load_config(config_path)
    assert config.experiment.name == "unit"
    assert config.experiment.seed == 3
    assert config.data.partition == "dirichlet"
    assert config.data.alpha == 0.3
    assert config.data.num_clients == 5
    assert config.training.lr == 0.01
    assert config.training.augment is False
    assert config.query.options == {"temperature": 2.0}
    assert config.federation == ExperimentConfig().federation  # untouched sections: defaults


def test_overrides_win_over_the_file(config_path: Path) -> None:
    config = load_config(
        config_path,
        [
            "training.lr=0.1",
            "data.num_clients=7",
            "data.partition=iid",  # bare text is kept as a string
            'query.strategy="random"',
            "query.options.k=4",
            "training.augment=true",
        ],
    )
    assert config.training.lr == 0.1
    assert isinstance(config.data.num_clients, int)
    assert config.data.num_clients == 7
    assert config.data.partition == "iid"
    assert config.query.strategy == "random"
    assert config.query.options == {"temperature": 2.0, "k": 4}
    assert config.training.augment is True
    assert config.data.alpha == 0.3  # values not overridden stay as in the file


def test_int_given_for_a_float_field_becomes_float() -> None:
    config = load_config(None, ["training.lr=1"])
    assert isinstance(config.training.lr, float)
    assert config.training.lr == 1.0


def test_parse_override_reads_toml_values() -> None:
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a.b = 0.5") == ("a.b", 0.5)
    assert parse_override("a.b=hello") == ("a.b", "hello")
    assert parse_override('a.b="x=y"') == ("a.b", "x=y")


def test_defaults_without_a_file() -> None:
    assert load_config() == ExperimentConfig()


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")


def test_flatten_from_flat_round_trip(config_path: Path) -> None:
    config = load_config(config_path, ["query.options.k=4", 'query.options.mode="fast"'])
    flat = flatten(config)
    assert flat["training.lr"] == 0.01
    assert flat["query.options.k"] == 4
    assert flat["query.options.mode"] == "fast"
    assert "query.options" not in flat
    assert all(not isinstance(value, dict) for value in flat.values())
    assert from_flat(flat) == config


def test_from_flat_coerces_text_and_ignores_foreign_keys() -> None:
    flat = {"data.num_clients": "4", "training.augment": "false", "num-server-rounds": 3}
    config = from_flat(flat)
    assert config.data.num_clients == 4
    assert config.training.augment is False


def test_to_dict_round_trip() -> None:
    config = load_config(None, ["query.options.beta=0.5", "data.alpha=2"])
    assert from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("override", "field", "value", "allowed"),
    [
        ('data.dataset="nope"', "data.dataset", "'nope'", "fashion-mnist"),
        ("data.partition=stripes", "data.partition", "'stripes'", "dirichlet"),
        ("data.alpha=0", "data.alpha", "0", "> 0"),
        ("data.alpha=-0.5", "data.alpha", "-0.5", "> 0"),
        ("data.protected_fraction=1.0", "data.protected_fraction", "1.0", "0 <= value < 1"),
        ("data.protected_fraction=-0.1", "data.protected_fraction", "-0.1", "0 <= value < 1"),
        ('model.helper="vgg"', "model.helper", "'vgg'", "cnn"),
        ("data.num_clients=2.5", "data.num_clients", "2.5", "integer"),
        ("data.num_clients=many", "data.num_clients", "'many'", "integer"),
        ("training.augment=maybe", "training.augment", "'maybe'", "true, false"),
        ("training.lr=fast", "training.lr", "'fast'", "number"),
        ("oracle.rate=1.5", "oracle.rate", "1.5", "0 <= value <= 1"),
        ('oracle.noise="loud"', "oracle.noise", "'loud'", "uniform"),
        ("data.colour=3", "data.colour", "3", "allowed: alpha"),
    ],
)
def test_bad_values_fail_with_one_line(override: str, field: str, value: str, allowed: str) -> None:
    message = _error([override])
    assert "\n" not in message
    assert field in message
    assert value in message
    assert allowed in message


def test_unknown_section_is_named() -> None:
    message = _error(["telemetry.level=3"])
    assert "\n" not in message
    assert "telemetry" in message
    assert "allowed" in message


def test_bad_values_in_a_file_fail_at_load(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[data]\npartition = "dirichlet"\nalpha = -1\n')
    with pytest.raises(ConfigError, match=r"data\.alpha: -1"):
        load_config(path)


def test_override_without_equals_sign() -> None:
    assert "section.key=value" in _error(["training.lr"])


def test_override_below_a_value_is_a_config_error(config_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"training\.lr is a value, not a table"):
        load_config(config_path, ["training.lr.max=0.1"])  # the file sets training.lr
    assert "training.lr: {'max': 0.1} is not allowed; allowed: a number > 0" in _error(
        ["training.lr.max=0.1"]
    )


def test_more_clients_than_samples_is_a_config_error() -> None:
    labels = np.arange(5) % 2
    with pytest.raises(ConfigError) as caught:
        partition_indices(labels, DataSection(num_clients=10), seed=0)
    message = str(caught.value)
    assert "data.num_clients" in message
    assert "10" in message


def test_initial_labels_above_candidate_count() -> None:
    config = load_config(None, ["data.protected_fraction=0.9", "data.initial_labels_per_client=20"])
    shards = [np.arange(0, 300), np.arange(300, 400)]  # 30 and 10 open samples
    with pytest.raises(ConfigError) as caught:
        check_against_partition(config, shards)
    message = str(caught.value)
    assert "\n" not in message
    assert "data.initial_labels_per_client" in message
    assert "20" in message
    assert "client 1" in message
    assert "<= 10" in message


def test_initial_labels_within_candidate_count_pass() -> None:
    config = load_config(None, ["data.protected_fraction=0.9", "data.initial_labels_per_client=10"])
    check_against_partition(config, [np.arange(0, 300), np.arange(300, 400)])


def test_choice_types_are_the_registries_names() -> None:
    """Each set of allowed names is declared once (fedal/choices.py); the registries
    that implement them offer exactly those names."""
    from typing import get_args

    from fedal.choices import DatasetName, ModelName
    from fedal.datasets import available_datasets
    from fedal.models import available_models

    assert set(available_datasets()) == set(get_args(DatasetName))
    assert set(available_models()) == set(get_args(ModelName))


@pytest.mark.parametrize(
    ("override", "field", "value", "allowed"),
    [
        ('training.loss="mse"', "training.loss", "'mse'", "cross_entropy, evidential"),
        ("training.evidential_kl_weight=-0.1", "training.evidential_kl_weight", "-0.1", ">= 0"),
        (
            "training.evidential_annealing_rounds=0",
            "training.evidential_annealing_rounds",
            "0",
            ">= 1",
        ),
        ("training.kcfu=maybe", "training.kcfu", "'maybe'", "true, false"),
        ("training.kcfu_mix_alpha=0", "training.kcfu_mix_alpha", "0", "> 0"),
    ],
)
def test_bad_helper_loss_options_fail_with_one_line(
    override: str, field: str, value: str, allowed: str
) -> None:
    message = _error([override])
    assert "\n" not in message
    assert field in message and value in message and allowed in message


def test_kcfu_with_the_evidential_loss_fails_with_one_line() -> None:
    message = _error(["training.kcfu=true", 'training.loss="evidential"'])
    assert "\n" not in message
    assert "kcfu" in message and "'evidential'" in message and "cross_entropy" in message


def test_helper_loss_options_default_to_plain_cross_entropy() -> None:
    training = load_config(None).training
    assert (training.loss, training.kcfu) == ("cross_entropy", False)
    assert (training.evidential_kl_weight, training.evidential_annealing_rounds) == (0.01, 10)
    assert training.kcfu_mix_alpha == 2.0


def test_evaluation_shards_must_fit_the_nodes_and_the_benchmark_data() -> None:
    message = _error(["data.num_clients=4", "federation.evaluation_shards=5"])
    assert "\n" not in message and "federation.evaluation_shards 5" in message
    assert "the 4 Flower nodes" in message
    assert "the 2 Flower nodes" in _error(
        ["data.num_clients=4", "federation.packs=2", "federation.evaluation_shards=3"]
    )
    folders = ['data.dataset="image-folder"', 'data.classes="a,b"', 'data.test_dir="t"']
    assert "federation.evaluation_shards must be 0" in _error(
        [*folders, 'oracle.annotator="human"', "federation.evaluation_shards=1"]
    )
    assert load_config(None, ["federation.evaluation_shards=2"]).federation.evaluation_shards == 2


def test_packs_must_fit_the_clients_and_the_benchmark_data() -> None:
    message = _error(["data.num_clients=4", "federation.packs=5"])
    assert "\n" not in message and "federation.packs 5" in message and "num_clients 4" in message
    folders = ['data.dataset="image-folder"', 'data.classes="a,b"', 'data.test_dir="t"']
    assert "federation.packs must be 0" in _error(
        [*folders, 'oracle.annotator="human"', "federation.packs=2"]
    )
    assert "experiment.checkpoint" in _error(["federation.packs=2", "experiment.checkpoint=false"])
    packed = from_dict({"data": {"num_clients": 10}, "federation": {"packs": 3}})
    assert packed.node_count == 3
    assert from_dict({"data": {"num_clients": 10}}).node_count == 10
