"""Tests for fedal.partition: every scheme is disjoint, complete and seeded, and each
shows the skew it is meant to (synthetic labels: 2000 samples, 10 classes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedal.config import ConfigError, DataSection, from_dict
from fedal.partition import cached_partition, partition_indices, split_partitioner

NUM_CLASSES = 10
LABELS = np.random.default_rng(42).integers(0, NUM_CLASSES, size=2000).astype(np.int64)

SCHEMES = {
    "iid": DataSection(partition="iid"),
    "dirichlet": DataSection(partition="dirichlet", alpha=0.5),
    "balanced-dirichlet": DataSection(partition="balanced-dirichlet", alpha=0.5),
    "pathological": DataSection(partition="pathological", classes_per_client=2),
    "shards": DataSection(partition="shards", shards_per_client=2),
    "quantity": DataSection(partition="quantity", quantity_sigma=1.0),
}


def _max_class_share(shards: list[np.ndarray]) -> float:
    """Mean over clients of the share of the client's most frequent class."""
    shares = [
        np.bincount(LABELS[shard], minlength=NUM_CLASSES).max() / len(shard) for shard in shards
    ]
    return float(np.mean(shares))


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_disjoint_and_complete(scheme: str) -> None:
    shards = partition_indices(LABELS, SCHEMES[scheme], seed=0)
    assert len(shards) == SCHEMES[scheme].num_clients
    assert all(len(shard) > 0 for shard in shards)
    assert all(shard.dtype == np.int64 for shard in shards)
    assert all(np.all(np.diff(shard) > 0) for shard in shards)  # sorted, no repeats
    every = np.concatenate(shards)
    assert len(every) == len(LABELS)  # nothing placed twice ...
    np.testing.assert_array_equal(np.sort(every), np.arange(len(LABELS)))  # ... nothing lost


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_seeded(scheme: str) -> None:
    data = SCHEMES[scheme]
    first = partition_indices(LABELS, data, seed=1)
    again = partition_indices(LABELS, data, seed=1)
    other = partition_indices(LABELS, data, seed=2)
    for left, right in zip(first, again, strict=True):
        np.testing.assert_array_equal(left, right)
    assert any(
        len(left) != len(right) or np.any(left != right)
        for left, right in zip(first, other, strict=True)
    )


def test_cached_partition_matches() -> None:
    data = SCHEMES["dirichlet"]
    direct = partition_indices(LABELS, data, seed=5)
    cached = cached_partition(LABELS, data, seed=5)
    assert cached is cached_partition(LABELS, data, seed=5)
    for left, right in zip(direct, cached, strict=True):
        np.testing.assert_array_equal(left, right)


READ_IN_A_NEW_PROCESS = """
import sys
import numpy as np
from fedal.config import DataSection
from fedal.partition import cached_partition
labels = np.random.default_rng(42).integers(0, 10, size=2000).astype(np.int64)
shards = cached_partition(labels, DataSection(partition="dirichlet", alpha=0.5), seed={seed})
np.savez(sys.argv[1], *shards)
print("flwr_datasets" in sys.modules, "datasets" in sys.modules)
"""


def test_a_split_is_computed_once_per_machine_and_read_by_other_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first process (the server) computes the split; a later process (a Ray worker,
    a deployment process) reads it from the fedal cache without importing flwr-datasets;
    other settings compute their own."""
    monkeypatch.setenv("FEDAL_CACHE_DIR", str(tmp_path / "cache"))

    def split_in_a_new_process(seed: int, name: str) -> tuple[list[np.ndarray], list[str]]:
        out = tmp_path / f"{name}.npz"
        script = READ_IN_A_NEW_PROCESS.format(seed=seed)
        imported = subprocess.run(
            [sys.executable, "-c", script, str(out)], capture_output=True, text=True, check=True
        ).stdout.split()
        with np.load(out) as shards:
            return [shards[f"arr_{k}"] for k in range(len(shards.files))], imported

    computed, imported_first = split_in_a_new_process(6, "server")
    read, imported_later = split_in_a_new_process(6, "worker")
    other, imported_other = split_in_a_new_process(7, "other-seed")

    assert imported_first == imported_other == ["True", "True"]
    assert imported_later == ["False", "False"]
    assert all(np.array_equal(a, b) for a, b in zip(computed, read, strict=True))
    direct = partition_indices(LABELS, SCHEMES["dirichlet"], seed=6)
    assert all(np.array_equal(a, b) for a, b in zip(direct, read, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(computed, other, strict=True))
    assert len(list((tmp_path / "cache" / "partitions").glob("*.npz"))) == 2


def test_dirichlet_small_alpha_gives_strong_label_skew() -> None:
    skewed = _max_class_share(
        partition_indices(LABELS, DataSection(partition="dirichlet", alpha=0.05), 0)
    )
    balanced = _max_class_share(
        partition_indices(LABELS, DataSection(partition="dirichlet", alpha=100.0), 0)
    )
    iid = _max_class_share(partition_indices(LABELS, DataSection(partition="iid"), 0))
    assert skewed > 0.5
    assert balanced < 0.2
    assert iid < 0.2
    assert skewed > 3 * max(balanced, iid)


@pytest.mark.parametrize("classes", [1, 2, 3])
def test_pathological_limits_classes_per_client(classes: int) -> None:
    data = DataSection(partition="pathological", classes_per_client=classes)
    shards = partition_indices(LABELS, data, seed=0)
    held = [len(np.unique(LABELS[shard])) for shard in shards]
    assert max(held) <= classes
    assert min(held) >= 1


def test_iid_sizes_are_equal_and_classes_mixed() -> None:
    shards = partition_indices(LABELS, SCHEMES["iid"], seed=0)
    assert {len(shard) for shard in shards} == {200}
    assert all(len(np.unique(LABELS[shard])) == NUM_CLASSES for shard in shards)


def test_quantity_sizes_are_unequal() -> None:
    sizes = [len(shard) for shard in partition_indices(LABELS, SCHEMES["quantity"], seed=0)]
    assert sum(sizes) == len(LABELS)
    assert max(sizes) > 2 * min(sizes)
    assert len(set(sizes)) > 5


def test_quantity_with_one_sample_per_client_on_average() -> None:
    labels = LABELS[:300]
    data = DataSection(partition="quantity", num_clients=len(labels), quantity_sigma=3.0)
    shards = partition_indices(labels, data, seed=0)
    assert [len(shard) for shard in shards] == [1] * len(labels)


def test_iid_with_one_sample_per_client() -> None:
    labels = LABELS[:300]
    data = SCHEMES["iid"].model_copy(update={"num_clients": len(labels)})
    assert {len(shard) for shard in partition_indices(labels, data, seed=0)} == {1}


def test_more_clients_than_samples() -> None:
    with pytest.raises(ConfigError, match=r"data\.num_clients: 2001 clients"):
        partition_indices(LABELS, DataSection(num_clients=len(LABELS) + 1), seed=0)


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (DataSection(partition="pathological", num_clients=2, classes_per_client=2), "placed"),
        (
            DataSection(partition="pathological", num_clients=3, classes_per_client=11),
            "data.classes_per_client=11",
        ),
        (DataSection(partition="dirichlet", num_clients=200, alpha=0.05), "data.alpha=0.05"),
        (
            DataSection(partition="shards", num_clients=10, shards_per_client=201),
            "data.shards_per_client=201",
        ),
    ],
)
@pytest.mark.filterwarnings("ignore::UserWarning")  # flwr-datasets warns on each retry
def test_unsatisfiable_settings_are_config_errors(data: DataSection, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        partition_indices(LABELS, data, seed=0)
    message = str(caught.value)
    assert "\n" not in message
    assert "data.partition" in message
    assert named in message


def _client_histograms(labels: np.ndarray, shards: list[np.ndarray]) -> np.ndarray:
    return np.stack([np.bincount(labels[shard], minlength=NUM_CLASSES) for shard in shards])


def test_balanced_dirichlet_sizes_are_equal() -> None:
    shards = partition_indices(LABELS, SCHEMES["balanced-dirichlet"], seed=0)
    assert [len(shard) for shard in shards] == [200] * 10
    uneven = partition_indices(np.append(LABELS, [1, 2, 3]), SCHEMES["balanced-dirichlet"], 0)
    assert [len(shard) for shard in uneven] == [201] * 3 + [200] * 7


def test_balanced_dirichlet_small_alpha_gives_each_client_its_own_class_mix() -> None:
    data = DataSection(partition="balanced-dirichlet", alpha=0.1)
    shards = partition_indices(LABELS, data, seed=0)
    assert {len(shard) for shard in shards} == {200}
    histograms = _client_histograms(LABELS, shards)
    assert _max_class_share(shards) > 0.4
    assert len({tuple(row) for row in histograms}) == len(shards)
    top_classes = {int(np.argmax(row)) for row in histograms}
    assert len(top_classes) >= 5, "clients should not share one dominant class"
    mixed = _max_class_share(
        partition_indices(LABELS, DataSection(partition="balanced-dirichlet", alpha=100.0), 0)
    )
    assert mixed < 0.2


def test_balanced_dirichlet_with_a_class_missing_from_the_subset() -> None:
    labels = np.where(LABELS == 3, 9, LABELS)  # classes 0..9 without 3
    shards = partition_indices(labels, SCHEMES["balanced-dirichlet"], seed=0)
    assert sorted(np.concatenate(shards).tolist()) == list(range(len(labels)))


@pytest.mark.parametrize("per_client", [1, 2, 4])
def test_shards_give_each_client_k_label_contiguous_blocks(per_client: int) -> None:
    """Every class holds 200 samples, so each of the 10 * k shards (2000 / (10 * k)
    label-sorted samples) lies within one class: each client holds k whole shards."""
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(NUM_CLASSES), 200))
    data = DataSection(partition="shards", shards_per_client=per_client)
    shards = partition_indices(labels, data, seed=0)
    shard_size = len(labels) // (10 * per_client)
    assert [len(shard) for shard in shards] == [per_client * shard_size] * 10
    for histogram in _client_histograms(labels, shards):
        assert np.all(histogram % shard_size == 0), histogram
        assert 1 <= np.count_nonzero(histogram) <= per_client


def test_shards_leave_out_only_the_remainder_after_the_last_whole_shard() -> None:
    labels = np.append(LABELS, [1, 2, 3])  # 2003 samples
    data = DataSection(partition="shards", num_clients=3, shards_per_client=2)
    shards = partition_indices(labels, data, seed=0)
    assert [len(shard) for shard in shards] == [666] * 3  # 6 shards of 333; 5 left over
    every = np.concatenate(shards)
    assert len(np.unique(every)) == len(every) == 1998
    left_out = np.setdiff1d(np.arange(len(labels)), every)
    assert set(labels[left_out].tolist()) == {labels.max()}  # the end of the sorted order


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ({"partition": "shards", "shards_per_client": 0}, "data.shards_per_client: 0"),
        ({"partition": "balanced-dirichlet", "alpha": 0}, "data.alpha: 0"),
        ({"partition": "balanced"}, "balanced-dirichlet"),
    ],
)
def test_bad_split_settings_fail_with_one_line(table: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        from_dict({"data": table})
    assert "\n" not in str(caught.value)
    assert named in str(caught.value)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_named_classes_split_the_same(scheme: str) -> None:
    """The plot's partitioner (a ``ClassLabel`` column) splits exactly like the run's."""
    names = [f"class {label}" for label in range(NUM_CLASSES)]
    named = split_partitioner(LABELS, SCHEMES[scheme], 0, names)
    for client, shard in enumerate(partition_indices(LABELS, SCHEMES[scheme], 0)):
        np.testing.assert_array_equal(np.sort(named.load_partition(client)["index"]), shard)
