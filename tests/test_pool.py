"""Tests for fedal.pool and fedal.shards: the protected split, the initial labelled set,
the pool invariants, the ledger and the array round trip (plus real Fashion-MNIST shards)."""

from __future__ import annotations

import numpy as np
import pytest

from fedal.config import ExperimentConfig, load_config
from fedal.datasets import LoadedDataset, load_dataset
from fedal.pool import ClientPool, LedgerEntry, PoolInvariantError, split_protected
from fedal.shards import (
    PROTECT_STREAM,
    client_rng,
    client_shards,
    load_experiment,
    make_oracle,
    new_client_pool,
    partition_summary,
    training_indices,
)

SHARD = np.arange(100, 140, dtype=np.int64)  # global indices of a 40-sample client shard
PROTECTED_ROWS = np.arange(0, 40, 4)  # every fourth sample (10) is protected


def _pool() -> ClientPool:
    mask = np.zeros(len(SHARD), dtype=bool)
    mask[PROTECTED_ROWS] = True
    return ClientPool(client=3, shard=SHARD, protected_mask=mask)


def _check_invariants(pool: ClientPool) -> None:
    """Disjoint protected / candidate / labelled sets that together form the shard."""
    protected, candidates, labelled = pool.protected, pool.candidates, pool.labelled
    assert len(np.intersect1d(protected, candidates)) == 0
    assert len(np.intersect1d(protected, labelled)) == 0
    assert len(np.intersect1d(candidates, labelled)) == 0
    every = np.concatenate([protected, candidates, labelled])
    np.testing.assert_array_equal(np.sort(every), np.sort(pool.shard))
    assert len(pool.labels) == len(labelled)


# ----------------------------------------------------------------------------- protected split


@pytest.mark.parametrize(("size", "fraction"), [(101, 0.9), (40, 0.25), (7, 0.5), (10, 0.0)])
def test_split_protected_count(size: int, fraction: float) -> None:
    mask = split_protected(np.arange(size), fraction, np.random.default_rng(0))
    assert mask.dtype == bool
    assert len(mask) == size
    assert int(mask.sum()) == round(fraction * size)


def test_split_protected_is_seeded() -> None:
    shard = np.arange(200)
    first = split_protected(shard, 0.5, client_rng(0, 1, PROTECT_STREAM))
    again = split_protected(shard, 0.5, client_rng(0, 1, PROTECT_STREAM))
    other_client = split_protected(shard, 0.5, client_rng(0, 2, PROTECT_STREAM))
    other_seed = split_protected(shard, 0.5, client_rng(1, 1, PROTECT_STREAM))
    np.testing.assert_array_equal(first, again)
    assert np.any(first != other_client)
    assert np.any(first != other_seed)


# ----------------------------------------------------------------------------- pool invariants


def test_fresh_pool_sets() -> None:
    pool = _pool()
    _check_invariants(pool)
    np.testing.assert_array_equal(pool.protected, SHARD[PROTECTED_ROWS])
    assert len(pool.candidates) == 30
    assert len(pool.labelled) == 0
    assert len(pool.unlabelled) == 40


def test_adding_labels_keeps_invariants_and_never_shrinks() -> None:
    pool = _pool()
    seen: list[int] = []
    for round_number, chosen in enumerate(([101, 102], [103], [105, 106, 107]), start=1):
        before = pool.labelled.copy()
        pool.add_labels(np.array(chosen), np.array(chosen) % 10, round_number)
        seen.extend(chosen)
        np.testing.assert_array_equal(pool.labelled[: len(before)], before)
        np.testing.assert_array_equal(pool.labelled, seen)
        assert not np.isin(chosen, pool.candidates).any()
        _check_invariants(pool)
    assert len(pool.candidates) == 30 - len(seen)


@pytest.mark.parametrize(
    ("indices", "reason"),
    [
        ([104], "protected"),  # 104 = SHARD[4] is protected
        ([99], "not in client 3's shard"),
        ([101, 101], "twice"),  # duplicate within one request
    ],
)
def test_invalid_additions_raise(indices: list[int], reason: str) -> None:
    pool = _pool()
    with pytest.raises(PoolInvariantError, match=reason):
        pool.add_labels(np.array(indices), np.zeros(len(indices), dtype=np.int64), 1)
    assert len(pool.labelled) == 0 and pool.ledger == []


def test_labelling_an_already_labelled_sample_raises() -> None:
    pool = _pool()
    pool.add_labels(np.array([101]), np.array([1]), 1)
    with pytest.raises(PoolInvariantError, match="labelled twice"):
        pool.add_labels(np.array([101]), np.array([2]), 2)
    np.testing.assert_array_equal(pool.labels, [1])


def test_protected_error_names_the_sample() -> None:
    pool = _pool()
    with pytest.raises(PoolInvariantError, match="108"):
        pool.add_labels(np.array([101, 108]), np.array([0, 0]), 1)


def test_lengths_must_match() -> None:
    with pytest.raises(PoolInvariantError, match="differ in length"):
        _pool().add_labels(np.array([101, 102]), np.array([0]), 1)


def test_construction_checks_invariants() -> None:
    mask = np.zeros(len(SHARD), dtype=bool)
    mask[0] = True
    with pytest.raises(PoolInvariantError, match="protected sample 100"):
        ClientPool(client=0, shard=SHARD, protected_mask=mask, labelled=[100], labels=[0])
    with pytest.raises(PoolInvariantError, match="differ in length"):
        ClientPool(client=0, shard=SHARD, protected_mask=mask[:-1])
    with pytest.raises(PoolInvariantError, match="twice"):
        ClientPool(client=0, shard=np.array([1, 1]), protected_mask=np.zeros(2, dtype=bool))


def test_ledger_records_every_labelling() -> None:
    pool = _pool()
    pool.add_labels(np.array([101, 102]), np.array([7, 8]), 0)
    pool.add_labels(np.array([110]), np.array([9]), 4)
    assert pool.ledger == [
        LedgerEntry(client=3, round=0, index=101, label=7),
        LedgerEntry(client=3, round=0, index=102, label=8),
        LedgerEntry(client=3, round=4, index=110, label=9),
    ]
    np.testing.assert_array_equal(
        pool.ledger_array(), [[3, 0, 101, 7], [3, 0, 102, 8], [3, 4, 110, 9]]
    )


def test_arrays_round_trip() -> None:
    pool = _pool()
    pool.add_labels(np.array([103, 101]), np.array([5, 6]), 1)
    arrays = pool.to_arrays()
    assert all(isinstance(value, np.ndarray) for value in arrays.values())
    restored = ClientPool.from_arrays(3, arrays)
    for name in ("shard", "protected_mask", "labelled", "labels", "protected", "candidates"):
        np.testing.assert_array_equal(getattr(restored, name), getattr(pool, name))
    assert restored.ledger == pool.ledger
    restored.add_labels(np.array([102]), np.array([1]), 2)  # still a working pool
    _check_invariants(restored)


def test_empty_pool_round_trip() -> None:
    pool = _pool()
    restored = ClientPool.from_arrays(3, pool.to_arrays())
    assert restored.ledger == []
    np.testing.assert_array_equal(restored.candidates, pool.candidates)


# ----------------------------------------------------------------------------- real shards


@pytest.fixture(scope="module")
def fashion() -> LoadedDataset:
    return load_dataset("fashion-mnist")


def _config(*overrides: str) -> ExperimentConfig:
    return load_config(
        None,
        [
            "data.train_subset=1200",
            "data.num_clients=4",
            "data.protected_fraction=0.5",
            "data.initial_labels_per_client=15",
            *overrides,
        ],
    )


def test_client_shards_on_fashion_mnist(fashion: LoadedDataset) -> None:
    config = _config('data.partition="dirichlet"', "data.alpha=0.3")
    in_play = training_indices(config, fashion)
    assert len(in_play) == 1200
    shards = client_shards(config, fashion)
    every = np.concatenate(shards)
    np.testing.assert_array_equal(np.sort(every), in_play)
    again = client_shards(config, fashion)
    for left, right in zip(shards, again, strict=True):
        np.testing.assert_array_equal(left, right)
    summary = partition_summary(config, load_experiment(config))
    for client, shard in zip(summary["clients"], shards, strict=True):
        assert client["size"] == len(shard) == sum(client["class_histogram"])
        assert client["protected"] == round(0.5 * len(shard))
        assert client["candidates"] == len(shard) - client["protected"]


def test_new_client_pool_draws_initial_labels_from_open_samples(fashion: LoadedDataset) -> None:
    config = _config()
    for client, shard in enumerate(client_shards(config, fashion)):
        pool = new_client_pool(config, fashion, client, shard)
        _check_invariants(pool)
        assert len(pool.protected) == round(0.5 * len(shard))
        assert len(pool.labelled) == 15
        assert not np.isin(pool.labelled, pool.protected).any()
        np.testing.assert_array_equal(pool.labels, fashion.train_y[pool.labelled])  # no noise
        assert {entry.round for entry in pool.ledger} == {0}
        assert all(entry.client == client for entry in pool.ledger)
        rebuilt = new_client_pool(config, fashion, client, shard)
        np.testing.assert_array_equal(rebuilt.labelled, pool.labelled)
        np.testing.assert_array_equal(rebuilt.protected, pool.protected)


def test_nothing_protected_with_fraction_zero(fashion: LoadedDataset) -> None:
    config = _config("data.protected_fraction=0.0")
    shard = client_shards(config, fashion)[0]
    pool = new_client_pool(config, fashion, 0, shard)
    assert len(pool.protected) == 0
    assert len(pool.candidates) + len(pool.labelled) == len(shard)


def test_client_oracle_refuses_the_clients_protected_samples(fashion: LoadedDataset) -> None:
    from fedal.oracle import ProtectedSampleError

    config = _config()
    shard = client_shards(config, fashion)[1]
    pool = new_client_pool(config, fashion, 1, shard)
    oracle = make_oracle(config, fashion, pool)
    with pytest.raises(ProtectedSampleError, match=str(int(pool.protected[0]))):
        oracle.label(pool.protected[:1])
    np.testing.assert_array_equal(
        oracle.label(pool.candidates[:5]), fashion.train_y[pool.candidates[:5]]
    )
