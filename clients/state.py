"""Persist a client's active-learning state in Flower's ``context.state`` between rounds.

Stored: the pool (shard, protected mask, labelled set, the labels the oracle returned,
the ledger), the query strategy's private state, SCAFFOLD's client control variate c_i
(only with ``federation.aggregation = "scaffold"``), and bookkeeping (rounds seen, ledger
entries reported, noisy examples appended). Random state needs no storage: every round's
generators are derived from (seed, client, round).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from clients.protocol import record_int
from fedal.pool import ClientPool

POOL_KEY = "fedal.pool"
STRATEGY_KEY = "fedal.strategy"
BOOK_KEY = "fedal.book"
CONTROL_KEY = "fedal.control"
ARRAY_SECTIONS = (POOL_KEY, STRATEGY_KEY, CONTROL_KEY)


@dataclass
class Book:
    """Bookkeeping: the last round this state completed, and the heteroskedastic examples
    appended to the training set (so later rounds rebuild the same dataset without
    re-partitioning). Which ledger entries the run has recorded is the server's to say
    (:class:`clients.protocol.RoundTask`)."""

    round: int = 0
    total_noisy: int = 0


def _arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: record[name].numpy() for name in record}


def save_pool(state: RecordDict, pool: ClientPool) -> None:
    """Store the pool's arrays."""
    state[POOL_KEY] = ArrayRecord(
        {name: Array(np.ascontiguousarray(value)) for name, value in pool.to_arrays().items()}
    )


def load_pool(state: RecordDict, client: int) -> ClientPool | None:
    """The stored pool, or None on the client's first round."""
    if POOL_KEY not in state:
        return None
    return ClientPool.from_arrays(client, _arrays(state.array_records[POOL_KEY]))


def save_tensors(state: RecordDict, key: str, tensors: Mapping[str, torch.Tensor]) -> None:
    """Store named tensors under ``key``."""
    state[key] = ArrayRecord(
        {
            name: Array(tensor.detach().cpu().contiguous().numpy())
            for name, tensor in tensors.items()
        }
    )


def load_tensors(state: RecordDict, key: str) -> dict[str, torch.Tensor]:
    """The named tensors stored under ``key`` (empty when there are none)."""
    if key not in state:
        return {}
    stored = _arrays(state.array_records[key])
    return {name: torch.from_numpy(array.copy()) for name, array in stored.items()}


def save_strategy_state(state: RecordDict, tensors: Mapping[str, torch.Tensor]) -> None:
    """Store a strategy's ``state_dict`` (may be empty)."""
    save_tensors(state, STRATEGY_KEY, tensors)


def load_strategy_state(state: RecordDict) -> dict[str, torch.Tensor]:
    """The stored strategy state (empty on the first round)."""
    return load_tensors(state, STRATEGY_KEY)


def save_control(state: RecordDict, control: Mapping[str, torch.Tensor]) -> None:
    """Store SCAFFOLD's client control variate c_i."""
    save_tensors(state, CONTROL_KEY, control)


def load_control(state: RecordDict) -> dict[str, torch.Tensor] | None:
    """The stored client control variate c_i (None before the client's first SCAFFOLD
    round: c_i starts at zero)."""
    return load_tensors(state, CONTROL_KEY) if CONTROL_KEY in state else None


def load_book(state: RecordDict) -> Book:
    """The bookkeeping counters (zero on the first round)."""
    if BOOK_KEY not in state:
        return Book()
    record = state.config_records[BOOK_KEY]
    return Book(**{name: record_int(record, name) for name in record})


def save_book(state: RecordDict, book: Book) -> None:
    """Store the bookkeeping counters."""
    state[BOOK_KEY] = ConfigRecord(asdict(book))


def export_state(state: RecordDict) -> dict[str, dict[str, np.ndarray]]:
    """The stored pool, strategy state, control variate and bookkeeping as named sections
    of arrays (for :func:`fedal.checkpoint.save_client_checkpoint`)."""
    sections = {key: _arrays(state.array_records[key]) for key in ARRAY_SECTIONS if key in state}
    sections[BOOK_KEY] = {
        name: np.asarray(value) for name, value in asdict(load_book(state)).items()
    }
    return sections


def import_state(state: RecordDict, sections: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Put what :func:`export_state` returned back into ``state``."""
    for key in ARRAY_SECTIONS:
        if key in sections:
            arrays = sections[key].items()
            state[key] = ArrayRecord({name: Array(np.ascontiguousarray(v)) for name, v in arrays})
    book = sections.get(BOOK_KEY, {})
    save_book(state, Book(**{name: int(value) for name, value in book.items()}))


def state_bytes(state: RecordDict) -> int:
    """Bytes of the arrays the client keeps in ``state`` between rounds."""
    return sum(
        len(array.data) for record in state.array_records.values() for array in record.values()
    )
