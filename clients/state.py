"""Persist a client's active-learning state in Flower's ``context.state`` between rounds.

Stored: the pool (shard, protected mask, labelled set, the labels the oracle returned,
the ledger), the query strategy's private state, and bookkeeping (rounds seen, ledger
entries reported, noisy examples appended). Random state needs no storage: every round's
generators are derived from (seed, client, round).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedal.pool import ClientPool

POOL_KEY = "fedal.pool"
STRATEGY_KEY = "fedal.strategy"
BOOK_KEY = "fedal.book"


def save_pool(state: RecordDict, pool: ClientPool) -> None:
    """Store the pool's arrays."""
    state[POOL_KEY] = ArrayRecord(
        {name: Array(np.ascontiguousarray(value)) for name, value in pool.to_arrays().items()}
    )


def load_pool(state: RecordDict, client: int) -> ClientPool | None:
    """The stored pool, or None on the client's first round."""
    if POOL_KEY not in state:
        return None
    record = state[POOL_KEY]
    return ClientPool.from_arrays(client, {name: record[name].numpy() for name in record})


def save_strategy_state(state: RecordDict, tensors: Mapping[str, torch.Tensor]) -> None:
    """Store a strategy's ``state_dict`` (may be empty)."""
    state[STRATEGY_KEY] = ArrayRecord(
        {
            name: Array(tensor.detach().cpu().contiguous().numpy())
            for name, tensor in tensors.items()
        }
    )


def load_strategy_state(state: RecordDict) -> dict[str, torch.Tensor]:
    """The stored strategy state (empty on the first round)."""
    if STRATEGY_KEY not in state:
        return {}
    record = state[STRATEGY_KEY]
    return {name: torch.from_numpy(record[name].numpy().copy()) for name in record}


def load_book(state: RecordDict) -> dict[str, int]:
    """Bookkeeping counters: ``ledger-reported`` (ledger entries already sent) and
    ``total-noisy`` (heteroskedastic examples appended to the training set, so later
    rounds rebuild the same dataset without re-partitioning)."""
    if BOOK_KEY not in state:
        return {"ledger-reported": 0, "total-noisy": 0}
    return {name: int(value) for name, value in state[BOOK_KEY].items()}


def save_book(state: RecordDict, book: Mapping[str, int]) -> None:
    """Store the bookkeeping counters."""
    state[BOOK_KEY] = ConfigRecord(dict(book))


def export_state(state: RecordDict) -> dict[str, dict[str, np.ndarray]]:
    """The stored pool, strategy state and bookkeeping as named sections of arrays
    (for :func:`fedal.checkpoint.save_client_checkpoint`)."""
    sections: dict[str, dict[str, np.ndarray]] = {
        key: {name: state[key][name].numpy() for name in state[key]}
        for key in (POOL_KEY, STRATEGY_KEY)
        if key in state
    }
    sections[BOOK_KEY] = {name: np.asarray(value) for name, value in load_book(state).items()}
    return sections


def import_state(state: RecordDict, sections: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Put what :func:`export_state` returned back into ``state``."""
    for key in (POOL_KEY, STRATEGY_KEY):
        if key in sections:
            arrays = sections[key].items()
            state[key] = ArrayRecord({name: Array(np.ascontiguousarray(v)) for name, v in arrays})
    save_book(state, {name: int(value) for name, value in sections.get(BOOK_KEY, {}).items()})
