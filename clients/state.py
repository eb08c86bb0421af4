"""A client's active-learning state between rounds, as named sections of arrays.

Stored: the pool (shard, protected mask, labelled set, the labels the oracle returned,
the ledger), the query strategy's private state, SCAFFOLD's client control variate c_i
(only with ``federation.aggregation = "scaffold"``), and bookkeeping (rounds seen, noisy
examples appended). Random state needs no storage: every round's generators are derived
from (seed, client, round).

A round reads and writes one :data:`~fedal.checkpoint.Sections` mapping of numpy
arrays. It is kept between rounds in Flower's ``context.state`` (:func:`read_record`,
:func:`write_record`: a node per client) and, with ``experiment.checkpoint``, in the
client's checkpoint file, which is where a packed client keeps it (no Flower record in
between).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from fedal.checkpoint import Sections
from fedal.pool import ClientPool

POOL_KEY = "fedal.pool"
STRATEGY_KEY = "fedal.strategy"
BOOK_KEY = "fedal.book"
CONTROL_KEY = "fedal.control"
SECTION_KEYS = (POOL_KEY, STRATEGY_KEY, CONTROL_KEY, BOOK_KEY)


@dataclass
class Book:
    """Bookkeeping: the last round this state completed, and the heteroskedastic examples
    appended to the training set (so later rounds rebuild the same dataset without
    re-partitioning). Which ledger entries the run has recorded is the server's to say
    (:class:`clients.protocol.RoundTask`)."""

    round: int = 0
    total_noisy: int = 0


def read_record(record: RecordDict) -> Sections:
    """The state a node holds in its ``context.state`` (empty before its first round)."""
    return {
        key: {name: array.numpy() for name, array in record.array_records[key].items()}
        for key in SECTION_KEYS
        if key in record.array_records
    }


def write_record(record: RecordDict, state: Sections) -> None:
    """Keep ``state`` in a node's ``context.state`` for its next round."""
    for key, arrays in state.items():
        record[key] = ArrayRecord(
            {name: Array(np.require(value, requirements="C")) for name, value in arrays.items()}
        )


def load_pool(state: Sections, client: int) -> ClientPool | None:
    """The stored pool, or None on the client's first round."""
    if POOL_KEY not in state:
        return None
    return ClientPool.from_arrays(client, state[POOL_KEY])


def save_pool(state: Sections, pool: ClientPool) -> None:
    """Store the pool's arrays."""
    state[POOL_KEY] = pool.to_arrays()


def load_tensors(state: Sections, key: str) -> dict[str, torch.Tensor]:
    """The named tensors stored under ``key`` (empty when there are none)."""
    return {name: torch.from_numpy(array.copy()) for name, array in state.get(key, {}).items()}


def save_tensors(state: Sections, key: str, tensors: Mapping[str, torch.Tensor]) -> None:
    """Store named tensors under ``key``."""
    state[key] = {
        name: tensor.detach().cpu().contiguous().numpy() for name, tensor in tensors.items()
    }


def load_strategy_state(state: Sections) -> dict[str, torch.Tensor]:
    """The stored strategy state (empty on the first round)."""
    return load_tensors(state, STRATEGY_KEY)


def save_strategy_state(state: Sections, tensors: Mapping[str, torch.Tensor]) -> None:
    """Store a strategy's ``state_dict`` (may be empty)."""
    save_tensors(state, STRATEGY_KEY, tensors)


def load_control(state: Sections) -> dict[str, torch.Tensor] | None:
    """The stored client control variate c_i (None before the client's first SCAFFOLD
    round: c_i starts at zero)."""
    return load_tensors(state, CONTROL_KEY) if CONTROL_KEY in state else None


def save_control(state: Sections, control: Mapping[str, torch.Tensor]) -> None:
    """Store SCAFFOLD's client control variate c_i."""
    save_tensors(state, CONTROL_KEY, control)


def load_book(state: Sections) -> Book:
    """The bookkeeping counters (zero on the first round)."""
    return Book(**{name: int(value.item()) for name, value in state.get(BOOK_KEY, {}).items()})


def save_book(state: Sections, book: Book) -> None:
    """Store the bookkeeping counters."""
    state[BOOK_KEY] = {name: np.asarray(value) for name, value in asdict(book).items()}


def state_bytes(state: Sections) -> int:
    """Bytes of the arrays the client keeps between rounds."""
    return sum(array.nbytes for arrays in state.values() for array in arrays.values())
