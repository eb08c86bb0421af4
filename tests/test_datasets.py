"""Tests for fedal.datasets: torchvision parsing of files written in the real on-disk
formats, the real Fashion-MNIST of the Debian package, caches, errors and the toys."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from fedal import datasets
from fedal.datasets import DatasetNotFoundError, LoadedDataset, load_dataset
from fedal.views import InputSpec


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private on-disk cache and torchvision root per test, and a clean in-process cache."""
    cache = tmp_path / "fedal-cache"
    monkeypatch.setenv("FEDAL_CACHE_DIR", str(cache))
    monkeypatch.setattr(datasets, "TORCHVISION_ROOT", tmp_path / "no-torchvision-root")
    datasets.clear_memory_cache()
    yield cache
    datasets.clear_memory_cache()


def _images(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random uint8 pixels."""
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


REFERENCE_STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}


def _check_meta_stats(dataset: LoadedDataset, train_x: np.ndarray) -> None:
    """The meta carries the dataset's fixed reference statistics, never ones computed from
    the loaded pixels (those would mix in protected samples), and the input spec uses them."""
    assert (dataset.meta.mean, dataset.meta.std) == REFERENCE_STATS[dataset.meta.name]
    assert dataset.meta.channels == train_x.shape[1]
    assert dataset.input_spec == InputSpec(dataset.meta.mean, dataset.meta.std)


# ----------------------------------------------------------------------------- MNIST family


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """Write a uint8 array as an idx file (magic 0x08 = ubyte, then big-endian dims)."""
    payload = struct.pack(f">HBB{array.ndim}I", 0, 0x08, array.ndim, *array.shape)
    payload += array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def _write_mnist_family(directory: Path, compress: bool) -> dict[str, np.ndarray]:
    """Tiny MNIST-format train (6) and test (4) sets in ``directory``; returns the arrays."""
    rng = np.random.default_rng(1)
    arrays = {
        "train_x": _images(rng, (6, 28, 28)),
        "train_y": np.array([0, 1, 2, 3, 9, 5], dtype=np.uint8),
        "test_x": _images(rng, (4, 28, 28)),
        "test_y": np.array([7, 8, 0, 4], dtype=np.uint8),
    }
    arrays["train_x"][0, 0, :3] = (0, 128, 255)  # a known pattern in the first row
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": "train_x",
        "train-labels-idx1-ubyte": "train_y",
        "t10k-images-idx3-ubyte": "test_x",
        "t10k-labels-idx1-ubyte": "test_y",
    }
    for filename, key in files.items():
        _write_idx(directory / filename, arrays[key], compress)
    return arrays


def _check_mnist_family(dataset: LoadedDataset, arrays: dict[str, np.ndarray]) -> None:
    """Shapes, dtypes and exact round trip of a tiny MNIST-family dataset."""
    assert dataset.train_x.shape == (6, 1, 28, 28)
    assert dataset.test_x.shape == (4, 1, 28, 28)
    assert dataset.train_x.dtype == np.uint8
    assert dataset.train_y.dtype == np.int64
    np.testing.assert_array_equal(dataset.train_x[:, 0], arrays["train_x"])
    np.testing.assert_array_equal(dataset.test_x[:, 0], arrays["test_x"])
    np.testing.assert_array_equal(dataset.train_y, arrays["train_y"])
    np.testing.assert_array_equal(dataset.test_y, arrays["test_y"])
    assert tuple(dataset.train_x[0, 0, 0, :3]) == (0, 128, 255)
    assert (dataset.meta.channels, dataset.meta.image_size) == (1, (28, 28))
    assert dataset.meta.num_classes == 10
    _check_meta_stats(dataset, arrays["train_x"][:, None])


def test_mnist_from_flat_gz_files(tmp_path: Path) -> None:
    arrays = _write_mnist_family(tmp_path / "mnist", compress=True)
    dataset = load_dataset("mnist", data_dir=str(tmp_path / "mnist"))
    _check_mnist_family(dataset, arrays)
    assert dataset.meta.class_names[0] == "0 - zero"
    assert dataset.meta.superclass_of is None


def test_fashion_mnist_from_torchvision_layout(tmp_path: Path) -> None:
    arrays = _write_mnist_family(tmp_path / "data" / "FashionMNIST" / "raw", compress=False)
    dataset = load_dataset("fashion-mnist", data_dir=str(tmp_path / "data"))
    _check_mnist_family(dataset, arrays)
    assert dataset.meta.class_names[-1] == "Ankle boot"


def test_real_fashion_mnist_from_debian_package(isolated_caches: Path) -> None:
    dataset = load_dataset("fashion-mnist")
    assert dataset.train_x.shape == (60000, 1, 28, 28)
    assert dataset.test_x.shape == (10000, 1, 28, 28)
    assert dataset.train_x.dtype == np.uint8
    assert dataset.meta.num_classes == 10
    np.testing.assert_array_equal(np.bincount(dataset.train_y), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(dataset.test_y), [1000] * 10)
    assert dataset.meta.mean == pytest.approx((0.2860,), abs=1e-4)
    assert dataset.meta.std == pytest.approx((0.3530,), abs=1e-4)
    assert isinstance(dataset.train_x, np.memmap)
    assert Path(dataset.train_x.filename).is_relative_to(isolated_caches)
    # the decompressed staging layout is temporary: only the cache entry remains
    assert [path.name for path in isolated_caches.iterdir()] == ["arrays"]


# ----------------------------------------------------------------------------- CIFAR


def _write_pickle(path: Path, content: dict) -> None:
    """Write one CIFAR-format pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        pickle.dump(content, handle)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """NCHW images as CIFAR rows: 1024 red, 1024 green, 1024 blue values, row-major."""
    return images.reshape(len(images), 3 * 32 * 32)


def _write_cifar10(root: Path) -> dict[str, np.ndarray]:
    """Tiny cifar-10-batches-py (5 train batches of 2, a test batch of 3)."""
    rng = np.random.default_rng(2)
    train_x, test_x = _images(rng, (10, 3, 32, 32)), _images(rng, (3, 3, 32, 32))
    train_x[0, :, 0, 0] = (255, 0, 7)  # known RGB of the top-left pixel
    train_y, test_y = rng.integers(0, 10, size=10), np.array([3, 1, 4])
    folder = root / "cifar-10-batches-py"
    for batch in range(5):
        rows = slice(2 * batch, 2 * batch + 2)
        content = {"data": _cifar_rows(train_x[rows]), "labels": train_y[rows].tolist()}
        _write_pickle(folder / f"data_batch_{batch + 1}", content)
    _write_pickle(folder / "test_batch", {"data": _cifar_rows(test_x), "labels": test_y.tolist()})
    names = [f"label-{index}" for index in range(10)]
    _write_pickle(folder / "batches.meta", {"label_names": names, "num_vis": 3072})
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def test_cifar10_round_trip(tmp_path: Path) -> None:
    arrays = _write_cifar10(tmp_path)
    dataset = load_dataset("cifar10", data_dir=str(tmp_path))
    assert dataset.train_x.shape == (10, 3, 32, 32)
    assert dataset.test_x.shape == (3, 3, 32, 32)
    assert dataset.train_x.dtype == np.uint8
    assert dataset.train_y.dtype == np.int64
    for key, expected in arrays.items():
        np.testing.assert_array_equal(getattr(dataset, key), expected)
    assert tuple(dataset.train_x[0, :, 0, 0]) == (255, 0, 7)
    assert dataset.meta.class_names == tuple(f"label-{index}" for index in range(10))
    assert (dataset.meta.channels, dataset.meta.image_size) == (3, (32, 32))
    _check_meta_stats(dataset, arrays["train_x"])


def test_cifar100_fine_labels_and_superclasses(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    coarse_of_fine = rng.permutation(np.repeat(np.arange(20), 5))
    fine = rng.permutation(100)  # every fine class once
    train_x, test_x = _images(rng, (100, 3, 32, 32)), _images(rng, (4, 3, 32, 32))
    test_fine = np.array([5, 50, 99, 0])
    folder = tmp_path / "cifar-100-python"
    for split, images, labels in (("train", train_x, fine), ("test", test_x, test_fine)):
        content = {
            "data": _cifar_rows(images),
            "fine_labels": labels.tolist(),
            "coarse_labels": coarse_of_fine[labels].tolist(),
        }
        _write_pickle(folder / split, content)
    meta = {
        "fine_label_names": [f"fine-{index}" for index in range(100)],
        "coarse_label_names": [f"coarse-{index}" for index in range(20)],
    }
    _write_pickle(folder / "meta", meta)

    dataset = load_dataset("cifar100", data_dir=str(tmp_path))
    np.testing.assert_array_equal(dataset.train_x, train_x)
    np.testing.assert_array_equal(dataset.train_y, fine)
    np.testing.assert_array_equal(dataset.test_y, test_fine)
    assert dataset.meta.num_classes == 100
    assert dataset.meta.class_names[99] == "fine-99"
    assert dataset.meta.superclass_of == tuple(coarse_of_fine.tolist())


# ----------------------------------------------------------------------------- SVHN


def _write_svhn(root: Path) -> dict[str, np.ndarray]:
    """Tiny train_32x32.mat / test_32x32.mat: X is (32, 32, 3, n), y is (n, 1) with 10 for 0."""
    rng = np.random.default_rng(4)
    digits = {"train": np.array([0, 1, 9, 0, 5]), "test": np.array([0, 2, 3])}
    arrays = {}
    for split, labels in digits.items():
        images = _images(rng, (len(labels), 3, 32, 32))
        mat = {"X": images.transpose(2, 3, 1, 0), "y": np.where(labels == 0, 10, labels)[:, None]}
        scipy.io.savemat(
            root / f"{split}_32x32.mat", {key: v.astype(np.uint8) for key, v in mat.items()}
        )
        arrays[f"{split}_x"], arrays[f"{split}_y"] = images, labels
    return arrays


def test_svhn_round_trip_and_label_ten_is_zero(tmp_path: Path) -> None:
    arrays = _write_svhn(tmp_path)
    dataset = load_dataset("svhn", data_dir=str(tmp_path))
    assert dataset.train_x.shape == (5, 3, 32, 32)
    assert dataset.train_x.dtype == np.uint8
    assert dataset.train_y.dtype == np.int64
    for key, expected in arrays.items():
        np.testing.assert_array_equal(getattr(dataset, key), expected)
    assert dataset.meta.class_names == tuple("0123456789")
    _check_meta_stats(dataset, arrays["train_x"])


# ----------------------------------------------------------------------------- caches


def test_second_load_in_a_process_returns_the_same_object(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    first = load_dataset("cifar10", data_dir=str(tmp_path))
    assert load_dataset("cifar10", data_dir=tmp_path / ".") is first
    assert load_dataset("moons", seed=2) is load_dataset("moons", seed=2)


def test_disk_cache_is_memory_mapped_and_reused(tmp_path: Path, isolated_caches: Path) -> None:
    arrays = _write_cifar10(tmp_path)
    first = load_dataset("cifar10", data_dir=str(tmp_path))
    assert isinstance(first.train_x, np.memmap)
    entry = Path(first.train_x.filename).parent
    assert entry.parent == isolated_caches / "arrays"
    assert sorted(path.name for path in entry.iterdir()) == [
        "meta.json",
        "test_x.npy",
        "test_y.npy",
        "train_x.npy",
        "train_y.npy",
    ]
    written = {path.name: path.stat().st_mtime_ns for path in entry.iterdir()}

    datasets.clear_memory_cache()
    again = load_dataset("cifar10", data_dir=str(tmp_path))
    assert again is not first
    assert Path(again.train_x.filename).parent == entry
    assert {path.name: path.stat().st_mtime_ns for path in entry.iterdir()} == written
    np.testing.assert_array_equal(again.train_x, arrays["train_x"])
    assert again.meta == first.meta
    assert not again.train_x.flags.writeable


def test_fresh_process_reads_the_disk_cache_without_torchvision(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    load_dataset("cifar10", data_dir=str(tmp_path))
    script = (
        "import sys, numpy as np\n"
        "from fedal.datasets import load_dataset\n"
        f"d = load_dataset('cifar10', data_dir={str(tmp_path)!r})\n"
        "assert isinstance(d.train_x, np.memmap) and d.train_x.shape == (10, 3, 32, 32)\n"
        "assert 'torchvision' not in sys.modules\n"
    )
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)


def test_changed_source_files_get_a_new_cache_entry(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    first = load_dataset("cifar10", data_dir=str(tmp_path))
    _write_pickle(
        tmp_path / "cifar-10-batches-py" / "batches.meta", {"label_names": list("abcdefghij")}
    )
    datasets.clear_memory_cache()
    second = load_dataset("cifar10", data_dir=str(tmp_path))
    assert second.meta.class_names == tuple("abcdefghij")
    assert Path(second.train_x.filename).parent != Path(first.train_x.filename).parent


# ----------------------------------------------------------------------------- errors


def test_missing_cifar10_names_the_data_dir_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("cifar10", data_dir=str(tmp_path))
    message = str(caught.value)
    assert "--data-dir" in message
    assert "cifar-10-batches-py" in message
    assert "apt-get" not in message
    assert isinstance(caught.value, FileNotFoundError)


def test_missing_fashion_mnist_names_both_fixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian-package")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("fashion-mnist", data_dir=str(tmp_path / "empty"))
    message = str(caught.value)
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert "--data-dir DIR" in message
    assert "FashionMNIST/raw" in message


def test_torchvision_errors_are_reraised_without_a_chain(tmp_path: Path) -> None:
    _write_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").unlink()
    (tmp_path / "test_32x32.mat").mkdir()  # present, but torchvision wants a file
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("svhn", data_dir=str(tmp_path))
    assert "torchvision said" in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_unknown_name_lists_the_available_datasets() -> None:
    with pytest.raises(ValueError) as caught:
        load_dataset("imagenet")
    for name in datasets.available_datasets():
        assert name in str(caught.value)
    assert set(datasets.available_datasets()) == {
        "fashion-mnist",
        "mnist",
        "cifar10",
        "cifar100",
        "svhn",
        "moons",
        "four-moons",
    }


# ----------------------------------------------------------------------------- toys


@pytest.mark.parametrize("name", ["moons", "four-moons"])
def test_toys_are_deterministic_per_seed(name: str) -> None:
    first = load_dataset(name, seed=5)
    datasets.clear_memory_cache()
    again = load_dataset(name, seed=5)
    other = load_dataset(name, seed=6)
    for key in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(first, key), getattr(again, key))
    assert not np.array_equal(first.train_x, other.train_x)
    assert first.train_x.dtype == np.float32
    assert first.train_y.dtype == np.int64
    assert (first.train_x.shape, first.test_x.shape) == ((2000, 2), (1000, 2))
    assert (first.meta.channels, first.meta.image_size, first.meta.mean) == (0, None, ())
    assert first.input_spec == InputSpec((), ())


def test_moons_has_two_balanced_clean_classes() -> None:
    dataset = load_dataset("moons")
    assert dataset.meta.num_classes == 2
    np.testing.assert_array_equal(np.bincount(dataset.train_y), [1000, 1000])
    np.testing.assert_array_equal(np.bincount(dataset.test_y), [500, 500])
    assert dataset.train_noisy is None
    upper = dataset.train_x[dataset.train_y == 0]
    assert upper[:, 1].mean() == pytest.approx(2 / np.pi, abs=0.05)  # mean height of the arc


def test_four_moons_has_a_noisy_upper_left_moon() -> None:
    dataset = load_dataset("four-moons", seed=3)
    noisy_class = datasets.FOUR_MOONS_NOISY_CLASS
    assert dataset.meta.num_classes == 4
    assert dataset.meta.class_names[noisy_class] == "upper-left"
    np.testing.assert_array_equal(np.bincount(dataset.test_y), [250] * 4)

    noisy = dataset.train_noisy
    assert noisy is not None and noisy.dtype == bool and noisy.sum() == 500
    counts = np.bincount(dataset.train_y[noisy], minlength=4)
    assert counts.min() > 90 and counts.max() < 160  # ~ uniform: 125 each
    clean_counts = np.bincount(dataset.train_y[~noisy], minlength=4)
    np.testing.assert_array_equal(clean_counts, [500, 500, 500, 0])

    # the noisy moon is the upper arc of the left pair (in the test set: clean labels)
    upper_left = dataset.test_x[dataset.test_y == noisy_class]
    assert upper_left.mean(axis=0) == pytest.approx((0.0, 2 / np.pi), abs=0.08)
    assert dataset.train_x[noisy].mean(axis=0) == pytest.approx((0.0, 2 / np.pi), abs=0.08)
