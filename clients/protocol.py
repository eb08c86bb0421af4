"""The round protocol between fedal's ServerApp and ClientApp, typed.

Five exchanges, each a dataclass with exactly one conversion to and one from Flower
records:

- :class:`ClientIdQuery` / :class:`ClientIdAnswer`: the server asks a node once which
  client (``partition-id``) it is (reproducible participation, :mod:`fedal.app.participation`).
- :class:`RoundTask`: what the server sends for one training round: the experiment
  config, the run's absolute round number (resumed runs included; Flower's own
  ``server-round`` counts the rounds of one ``strategy.start`` call and is not used) and,
  in a resumed run, the round it resumed after.
- :class:`RoundReply`: the helper's arrays and the :class:`~fedal.reports.ClientReport`.
- :class:`EvaluationTask` / :class:`EvaluationReply`: with
  ``federation.evaluation_shards`` the server sends the global arrays to that many nodes,
  each evaluating one shard of the central test set, and sums their replies
  (:mod:`fedal.app.evaluation`).
- :class:`PackedTask` / :class:`PackedReply`: with ``federation.packs`` one node trains
  several clients (:mod:`fedal.app.packing`): the round's train content travels once with
  the list of the pack's drawn clients, and the reply holds each client's
  :class:`RoundReply` content under its keys suffixed with ``@<client>``.

With ``federation.aggregation = "scaffold"`` (Karimireddy et al. 2020, Algorithm 1) the
task also carries the server control variate c (one extra ``ArrayRecord`` in the train
message, under ``fedal-control``) and the reply the client's control update delta c_i
(in the reply's one ``ArrayRecord``, each name prefixed with ``delta-c/``: Flower's
FedAvg accepts exactly one ``ArrayRecord`` per reply).

The config travels as JSON and is parsed once per process and config text, so a client
does not validate the same config again every round (it was validated at the edge).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    MessageType,
    MetricRecord,
    RecordDict,
)

from fedal.config import ExperimentConfig
from fedal.reports import ClientReport, MetricValue
from fedal.training import EvalSums

CLIENT_ID_ACTION = "client_id"
CLIENT_ID_QUERY = f"{MessageType.QUERY}.{CLIENT_ID_ACTION}"
PACK_ACTION = "pack"
PACKED_TRAIN = f"{MessageType.TRAIN}.{PACK_ACTION}"
_PACK_KEY = "fedal-pack"
_ROUND_KEY = "fedal-round"
_CONFIG_KEY = "fedal-config"
_LEDGER_KEY = "fedal-ledger-known"
CONTROL_KEY = "fedal-control"  # SCAFFOLD's server control variate c in a train message
CONTROL_DELTA_PREFIX = "delta-c/"  # SCAFFOLD's delta c_i in a reply's ArrayRecord


def record_int(record: ConfigRecord, key: str) -> int:
    """An integer stored in a Flower ``ConfigRecord`` (a TypeError names a wrong value)."""
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"record field {key!r}: expected an integer, got {value!r}")
    return value


def _int_list(record: ConfigRecord, key: str) -> list[int]:
    value = record[key]
    if not isinstance(value, list) or not all(isinstance(item, int) for item in value):
        raise TypeError(f"record field {key!r}: expected a list of integers, got {value!r}")
    return [int(item) for item in value]


@dataclass(frozen=True)
class ClientIdQuery:
    """Which client are you? (the server knows how many there should be)."""

    num_clients: int

    def to_content(self) -> RecordDict:
        return RecordDict({"query": ConfigRecord({"num-clients": self.num_clients})})

    @classmethod
    def from_content(cls, content: RecordDict) -> ClientIdQuery:
        return cls(num_clients=record_int(content.config_records["query"], "num-clients"))


@dataclass(frozen=True)
class ClientIdAnswer:
    """This node's client id."""

    client: int

    def to_content(self) -> RecordDict:
        return RecordDict({"answer": ConfigRecord({"client": self.client})})

    @classmethod
    def from_content(cls, content: RecordDict) -> ClientIdAnswer:
        return cls(client=record_int(content.config_records["answer"], "client"))


@dataclass(frozen=True)
class RoundTask:
    """One training round for one client.

    ``ledger_known[k]``: how many of client k's
    ledger entries the run has recorded; a client reports every entry after those, so
    the labels of a round whose reply was lost (a failure, a timeout) reach the ledger
    with its next reply. ``control``: SCAFFOLD's server control variate c by trainable
    weight name (``None`` for every other aggregation).
    """

    server_round: int
    config: ExperimentConfig
    ledger_known: tuple[int, ...] = ()
    control: dict[str, np.ndarray] | None = None

    def to_config_record(self) -> ConfigRecord:
        """The train config record the Flower strategy sends with the global arrays."""
        record = ConfigRecord(
            {
                _ROUND_KEY: self.server_round,
                _CONFIG_KEY: self.config.model_dump_json(),
                _LEDGER_KEY: list(self.ledger_known),
            }
        )
        return record

    def to_array_records(self) -> dict[str, ArrayRecord]:
        """The array records the train message carries besides the global arrays: SCAFFOLD's
        control variate (none for the other aggregations)."""
        if self.control is None:
            return {}
        arrays = {name: Array(np.ascontiguousarray(value)) for name, value in self.control.items()}
        return {CONTROL_KEY: ArrayRecord(arrays)}

    @classmethod
    def from_content(cls, content: RecordDict) -> RoundTask:
        record = content.config_records["config"]
        control = content.array_records.get(CONTROL_KEY)
        return cls(
            server_round=record_int(record, _ROUND_KEY),
            config=_parse_config(str(record[_CONFIG_KEY])),
            ledger_known=tuple(int(count) for count in _int_list(record, _LEDGER_KEY)),
            control=None if control is None else {name: control[name].numpy() for name in control},
        )


@lru_cache(maxsize=4)
def _parse_config(text: str) -> ExperimentConfig:
    return ExperimentConfig.model_validate_json(text)


@dataclass(frozen=True)
class RoundReply:
    """What leaves a client after a round: the helper's weights and its report, and with
    SCAFFOLD the client's control update delta c_i by trainable weight name."""

    helper_state: dict[str, torch.Tensor]
    report: ClientReport
    control_delta: dict[str, torch.Tensor] | None = None

    def uploaded_arrays(self) -> dict[str, torch.Tensor]:
        """Every array that leaves the client, by its name in the reply (the audit of
        ``experiment.save_uploads`` keeps exactly these)."""
        delta = self.control_delta or {}
        prefixed = {f"{CONTROL_DELTA_PREFIX}{name}": value for name, value in delta.items()}
        return {**self.helper_state, **prefixed}

    def to_content(self) -> RecordDict:
        return RecordDict(
            {
                "arrays": ArrayRecord(self.uploaded_arrays()),
                "metrics": MetricRecord(self.report.to_metrics()),
            }
        )

    @classmethod
    def from_content(cls, content: RecordDict) -> RoundReply:
        arrays = content.array_records["arrays"].to_torch_state_dict()
        delta = {
            name.removeprefix(CONTROL_DELTA_PREFIX): arrays.pop(name)
            for name in list(arrays)
            if name.startswith(CONTROL_DELTA_PREFIX)
        }
        return cls(helper_state=arrays, report=cls.report_in(content), control_delta=delta or None)

    @staticmethod
    def report_in(content: RecordDict) -> ClientReport:
        """Only the report of a reply, without converting its arrays."""
        return ClientReport.from_metrics(content.metric_records["metrics"])


@dataclass(frozen=True)
class EvaluationTask:
    """Evaluate the global arrays on shard ``shard`` of ``shards`` of the central test set
    (:func:`fedal.evaluation_set.central_test_shard`)."""

    config: ExperimentConfig
    shard: int
    shards: int

    def to_content(self, arrays: ArrayRecord) -> RecordDict:
        record = ConfigRecord(
            {_CONFIG_KEY: self.config.model_dump_json(), "shard": self.shard, "shards": self.shards}
        )
        return RecordDict({"arrays": arrays, "config": record})

    @classmethod
    def from_content(cls, content: RecordDict) -> EvaluationTask:
        record = content.config_records["config"]
        return cls(
            config=_parse_config(str(record[_CONFIG_KEY])),
            shard=record_int(record, "shard"),
            shards=record_int(record, "shards"),
        )


@dataclass(frozen=True)
class EvaluationReply:
    """A shard's sums (:class:`~fedal.training.EvalSums`) and the node's seconds for them
    (loading the test set, building the model, the passes)."""

    sums: EvalSums
    seconds: float

    def to_content(self) -> RecordDict:
        metrics: dict[str, MetricValue] = {
            "correct": self.sums.correct,
            "loss-sum": self.sums.loss_sum,
            "count": self.sums.count,
            "seconds": self.seconds,
        }
        return RecordDict({"metrics": MetricRecord(metrics)})

    @classmethod
    def from_content(cls, content: RecordDict) -> EvaluationReply:
        metrics: Mapping[str, Any] = content.metric_records["metrics"]
        sums = EvalSums(int(metrics["correct"]), float(metrics["loss-sum"]), int(metrics["count"]))
        return cls(sums=sums, seconds=float(metrics["seconds"]))


def pack_of(client: int, packs: int) -> int:
    """The pack (and its node's ``partition-id``) that runs ``client`` with ``packs``
    packs."""
    return client % packs


@dataclass(frozen=True)
class PackedTask:
    """One round for the drawn clients of one pack: ``content`` is what each of them would
    get on its own (the global arrays, the :class:`RoundTask` record, SCAFFOLD's c)."""

    clients: tuple[int, ...]
    content: RecordDict

    def to_content(self) -> RecordDict:
        packed = RecordDict(dict(self.content.items()))
        packed[_PACK_KEY] = ConfigRecord({"clients": list(self.clients)})
        return packed

    @classmethod
    def from_content(cls, content: RecordDict) -> PackedTask:
        clients = tuple(_int_list(content.config_records[_PACK_KEY], "clients"))
        rest = RecordDict({key: record for key, record in content.items() if key != _PACK_KEY})
        return cls(clients=clients, content=rest)


@dataclass(frozen=True)
class PackedReply:
    """The replies of a pack's clients: each a :class:`RoundReply` content, by client."""

    replies: dict[int, RecordDict] = field(default_factory=dict)

    def to_content(self) -> RecordDict:
        packed = RecordDict({_PACK_KEY: ConfigRecord({"clients": list(self.replies)})})
        for client, content in self.replies.items():
            for key, record in content.items():
                packed[f"{key}@{client}"] = record
        return packed

    @classmethod
    def from_content(cls, content: RecordDict) -> PackedReply:
        clients = _int_list(content.config_records[_PACK_KEY], "clients")
        replies = {
            client: RecordDict(
                {
                    key.removesuffix(f"@{client}"): record
                    for key, record in content.items()
                    if key.endswith(f"@{client}")
                }
            )
            for client in clients
        }
        return cls(replies)
