"""Typed experiment configuration: TOML files, ``key=value`` overrides, early validation.

A config has one table per concern (``[experiment]``, ``[data]``, ``[oracle]``,
``[model]``, ``[training]``, ``[query]``, ``[federation]``). Flower's run config is flat,
so :func:`flatten` / :func:`from_flat` convert to and from ``"section.key"`` strings.
Every bad value fails with one line naming the field, the value, and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration value is invalid; the message names field, value and what is allowed."""


@dataclass(frozen=True)
class ExperimentSection:
    """Run identity and where results go."""

    name: str = "experiment"
    seed: int = 0
    output_dir: str = "runs"
    run_dir: str = ""
    target_accuracy: float = 0.8
    save_uploads: bool = False
    checkpoint: bool = True
    resume: bool = False


@dataclass(frozen=True)
class DataSection:
    """Dataset, partition across clients, protected split and initial labelled pool."""

    dataset: str = "fashion-mnist"
    data_dir: str = ""
    partition: str = "iid"
    alpha: float = 0.5
    classes_per_client: int = 2
    quantity_sigma: float = 1.0
    num_clients: int = 10
    protected_fraction: float = 0.9
    initial_labels_per_client: int = 20
    train_subset: int = 0
    test_subset: int = 0
    corruption: str = "none"
    corruption_share: float = 0.3
    corruption_class: int = 1
    corruption_unique: int = 100


@dataclass(frozen=True)
class OracleSection:
    """The annotator: noise model and rate."""

    noise: str = "none"
    rate: float = 0.0


@dataclass(frozen=True)
class ModelSection:
    """Helper / task model architecture."""

    helper: str = "cnn"
    dropout: float = 0.0


@dataclass(frozen=True)
class TrainingSection:
    """Supervised training of the helper on each client's labelled data."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "constant"
    augment: bool = True
    eval_batch_size: int = 512
    finetune: bool = False
    finetune_gamma: float = 0.9
    finetune_iterations: int = 1
    finetune_ema_decay: float = 0.99


@dataclass(frozen=True)
class QuerySection:
    """Active learning: which strategy, how often, how much."""

    strategy: str = "random"
    budget_per_query: int = 10
    query_every: int = 1
    max_labels_per_client: int = 0
    scoring_model: str = "helper"
    private_data: str = "candidates"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def privacy_mode(self) -> str:
        """What ``private_data`` guarantees, in one line (README, "Privacy modes")."""
        if self.private_data == "all":
            return (
                "paper mode (private networks study protected data; it is never labelled, "
                "uploaded or used by the helper)"
            )
        return "strict mode (protected data influences nothing that leaves the client)"


@dataclass(frozen=True)
class FederationSection:
    """Rounds, participation, aggregation and client resources."""

    rounds: int = 10
    fraction_train: float = 1.0
    aggregation: str = "fedavg"
    proximal_mu: float = 0.01
    server_lr: float = 1.0
    server_momentum: float = 0.9
    client_cpus: float = 1.0
    client_gpus: float = 0.0


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole experiment; every field has a default."""

    experiment: ExperimentSection = field(default_factory=ExperimentSection)
    data: DataSection = field(default_factory=DataSection)
    oracle: OracleSection = field(default_factory=OracleSection)
    model: ModelSection = field(default_factory=ModelSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    query: QuerySection = field(default_factory=QuerySection)
    federation: FederationSection = field(default_factory=FederationSection)

    def replace(self, section: str, **changes: Any) -> ExperimentConfig:
        """A copy with some fields of one section changed."""
        updated = dataclasses.replace(getattr(self, section), **changes)
        return dataclasses.replace(self, **{section: updated})

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dictionary (TOML/JSON ready)."""
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(ExperimentConfig)}
_SECTION_TYPES = get_type_hints(ExperimentConfig)
OPTIONS_PREFIX = "query.options."


def _coerce(section: str, name: str, value: Any, expected: type) -> Any:
    """Coerce a TOML / override / Flower run-config value to the field's type."""
    where = f"{section}.{name}"
    if expected is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0"}:
            return value.lower() in {"true", "1"}
        raise ConfigError(f"{where}: {value!r} is not a boolean (allowed: true, false)")
    if expected is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}: {value!r} is not an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {value!r} is not an integer") from None
    if expected is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {value!r} is not a number") from None
    if expected is str:
        return str(value)
    return value


def _build_section(name: str, values: Mapping[str, Any]) -> Any:
    section_type = _SECTION_TYPES[name]
    hints = get_type_hints(section_type)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        given = ", ".join(f"{name}.{key}={values[key]!r}" for key in unknown)
        raise ConfigError(f"{given}: unknown field(s); allowed: {', '.join(sorted(hints))}")
    coerced: dict[str, Any] = {}
    for key, value in values.items():
        if key == "options":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name}.options: expected a table, got {value!r}")
            coerced[key] = dict(value)
        else:
            coerced[key] = _coerce(name, key, value, hints[key])
    return section_type(**coerced)


def from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate a config from nested tables."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; allowed: {', '.join(SECTIONS)}")
    sections = {name: _build_section(name, raw.get(name, {})) for name in SECTIONS}
    config = ExperimentConfig(**sections)
    from fedal.validation import validate

    validate(config)
    return config


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
            raw = tomllib.load(handle)
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
