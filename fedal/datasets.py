"""Datasets as process-wide arrays, loaded offline through torchvision.

Image datasets are parsed by torchvision's own dataset classes (never with
``download=True``) and converted once to uint8 NCHW arrays; the 2-D toys are generated
from a seed. Nothing is ever downloaded.

Where the files are looked for, first match wins:

1. the explicit ``data_dir``, in torchvision's layout (``DIR/FashionMNIST/raw/...``,
   ``DIR/cifar-10-batches-py/...``, ``DIR/cifar-100-python/...``, ``DIR/train_32x32.mat``);
   for the MNIST family the four idx files (``.gz`` or not) directly in ``DIR`` work too;
2. for Fashion-MNIST only, the Debian package ``dataset-fashion-mnist``
   (:data:`DEBIAN_FASHION_MNIST_DIR`);
3. torchvision's default root (:data:`TORCHVISION_ROOT`, ``~/.cache/torchvision``).

Caching happens at two levels. In a process, :func:`load_dataset` returns the same
object for the same arguments. On disk, the converted arrays are kept as ``.npy`` files
plus a ``meta.json`` under ``$FEDAL_CACHE_DIR`` (default ``~/.cache/fedal``), keyed by
dataset name, source directory and the source files' sizes and modification times, and
memory-mapped read-only on later loads: a fresh process (Flower's deployment engine runs
every message in one) neither imports torchvision nor parses the originals again, and
processes on one machine share the pages. A cache entry is written in a temporary
directory and renamed into place, so concurrent processes never see half of one.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np

from fedal.choices import FOLDER_DATASET
from fedal.schema import ConfigError
from fedal.views import InputSpec

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
TORCHVISION_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torchvision"
CACHE_FORMAT_VERSION = 2

_ARRAY_NAMES = ("train_x", "train_y", "test_x", "test_y")
_IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not on this machine (and are never downloaded)."""


@dataclass(frozen=True)
class DatasetMeta:
    """What models and metrics need to know about a dataset besides its arrays."""

    name: str
    num_classes: int
    channels: int  # 0 for the 2-D toys
    image_size: tuple[int, int] | None  # None for the toys
    mean: tuple[float, ...]  # reference per-channel mean in [0, 1] (fixed constant); () for toys
    std: tuple[float, ...]  # reference per-channel std (fixed constant); () for toys
    class_names: tuple[str, ...]
    superclass_of: tuple[int, ...] | None = None  # CIFAR-100: coarse class of each fine class


@dataclass(frozen=True, eq=False)
class LoadedDataset:
    """Train and test arrays (read-only, shared by the whole process) and their meta.

    Images are uint8 ``(N, C, H, W)``, toy features float32 ``(N, 2)``; labels int64.
    ``train_noisy`` marks the training samples of a deliberately noisy region (four-moons),
    ``None`` where the dataset has none. Equality is identity (arrays have no truth value).
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    meta: DatasetMeta
    train_noisy: np.ndarray | None = None

    @property
    def input_spec(self) -> InputSpec:
        """How this dataset's raw arrays become model inputs."""
        return InputSpec(self.meta.mean, self.meta.std)


# ----------------------------------------------------------------------------- image datasets


@dataclass(frozen=True)
class _Converted:
    """Arrays and class information freshly parsed by torchvision."""

    arrays: dict[str, np.ndarray]  # keyed by _ARRAY_NAMES
    class_names: tuple[str, ...]
    superclass_of: tuple[int, ...] | None = None


@dataclass(frozen=True)
class _ImageRecipe:
    """How to find one torchvision dataset's files and convert them to arrays."""

    name: str
    layout: str  # example of torchvision's layout, for the not-found message
    find: Callable[[Path], tuple[Path, ...] | None]  # its files under a directory, or None
    convert: Callable[[Path, tuple[Path, ...]], _Converted]  # (directory, files) -> arrays
    mean: tuple[float, ...] = ()  # reference channel statistics of the full, standard train set
    std: tuple[float, ...] = ()
    debian: bool = False  # also look in DEBIAN_FASHION_MNIST_DIR


def _files_in(names: Sequence[str], directory: Path) -> tuple[Path, ...] | None:
    """``directory / name`` for every name when all exist, else None."""
    paths = tuple(directory / name for name in names)
    return paths if all(path.exists() for path in paths) else None


def _idx_files(class_name: str, directory: Path) -> tuple[Path, ...] | None:
    """The four MNIST-family idx files, raw or gzipped, in torchvision's layout or flat."""
    places = (directory / class_name / "raw", directory)
    found: list[Path] = []
    for stem in _IDX_STEMS:
        candidates = [place / (stem + ext) for place in places for ext in ("", ".gz")]
        path = next((path for path in candidates if path.exists()), None)
        if path is None:
            return None
        found.append(path)
    return tuple(found)


def cache_root() -> Path:
    """Where fedal keeps converted arrays: ``$FEDAL_CACHE_DIR`` or ``~/.cache/fedal``."""
    return Path(os.environ.get("FEDAL_CACHE_DIR") or Path.home() / ".cache" / "fedal")


@contextmanager
def _mnist_root(class_name: str, directory: Path, files: tuple[Path, ...]) -> Iterator[Path]:
    """A root where torchvision's ``class_name`` finds raw idx files in ``root/class_name/raw``.

    That is ``directory`` itself when it already has this layout. Otherwise (the Debian
    package's ``.gz`` files, or flat files in a data dir) the files are decompressed or
    linked into a temporary layout inside the fedal cache dir; this happens once, since
    the converted arrays are cached afterwards.
    """
    raw = directory / class_name / "raw"
    if all(path.parent == raw and path.suffix != ".gz" for path in files):
        yield directory
        return
    cache_root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{class_name}-", dir=cache_root()) as staging:
        target = Path(staging) / class_name / "raw"
        target.mkdir(parents=True)
        for path in files:
            _place_uncompressed(path, target / path.name.removesuffix(".gz"))
        yield Path(staging)


def _place_uncompressed(source: Path, target: Path) -> None:
    """Decompress a ``.gz`` file to ``target``, or symlink an uncompressed one there."""
    if source.suffix != ".gz":
        target.symlink_to(source.resolve())
        return
    with gzip.open(source, "rb") as packed, target.open("wb") as unpacked:
        shutil.copyfileobj(packed, unpacked)


def _convert_mnist_family(class_name: str, directory: Path, files: tuple[Path, ...]) -> _Converted:
    """Parse MNIST or Fashion-MNIST with torchvision's class ``class_name``."""
    from torchvision import datasets as tv

    dataset_class = getattr(tv, class_name)
    with _mnist_root(class_name, directory, files) as root:
        train, test = (
            dataset_class(str(root), train=flag, download=False) for flag in (True, False)
        )
    arrays = {
        "train_x": train.data.numpy()[:, None],
        "train_y": train.targets.numpy(),
        "test_x": test.data.numpy()[:, None],
        "test_y": test.targets.numpy(),
    }
    return _Converted(arrays, tuple(dataset_class.classes))


def _cifar_without_checksums(base: Any) -> type:
    """torchvision's CIFAR10/CIFAR100 class with its files' md5 checksums removed.

    torchvision verifies the md5 sums of the original release's files when a dataset is
    constructed, so converted or re-packed copies (and the tests' tiny files) fail although
    they parse fine. With the checksums set to ``None``, torchvision's own
    ``check_integrity`` only tests that each file exists; all parsing stays torchvision's.
    """
    return type(
        f"{base.__name__}WithoutChecksums",
        (base,),
        {
            "train_list": [[name, None] for name, _ in base.train_list],
            "test_list": [[name, None] for name, _ in base.test_list],
            "meta": {**base.meta, "md5": None},
        },
    )


def _svhn_without_checksums() -> type:
    """torchvision's SVHN class with its md5 checksums removed (see _cifar_without_checksums)."""
    from torchvision.datasets import SVHN

    unchecked = {split: [url, name, None] for split, (url, name, _) in SVHN.split_list.items()}
    return type("SVHNWithoutChecksums", (SVHN,), {"split_list": unchecked})


def _convert_cifar(class_name: str, directory: Path, files: tuple[Path, ...]) -> _Converted:
    """Parse CIFAR-10 or CIFAR-100 (fine labels) with torchvision; HWC images become CHW."""
    from torchvision import datasets as tv

    dataset_class = _cifar_without_checksums(getattr(tv, class_name))
    train, test = (
        dataset_class(str(directory), train=flag, download=False) for flag in (True, False)
    )
    arrays = {
        "train_x": train.data.transpose(0, 3, 1, 2),
        "train_y": np.asarray(train.targets, dtype=np.int64),
        "test_x": test.data.transpose(0, 3, 1, 2),
        "test_y": np.asarray(test.targets, dtype=np.int64),
    }
    return _Converted(arrays, tuple(train.classes))


def _convert_cifar100(directory: Path, files: tuple[Path, ...]) -> _Converted:
    """CIFAR-100 with ``superclass_of`` read from the train pickle's coarse labels.

    torchvision exposes only the fine labels, so the pairs (fine, coarse) are read from
    the same ``train`` file torchvision parsed.
    """
    converted = _convert_cifar("CIFAR100", directory, files)
    train_file = directory / "cifar-100-python" / "train"
    with train_file.open("rb") as handle:
        entry = pickle.load(handle, encoding="latin1")
    superclass_of = _superclasses(entry["fine_labels"], entry["coarse_labels"])
    if len(superclass_of) != len(converted.class_names):
        raise ValueError(f"{train_file}: not every fine class occurs in the training set")
    return replace(converted, superclass_of=superclass_of)


def _superclasses(fine: Sequence[int], coarse: Sequence[int]) -> tuple[int, ...]:
    """The coarse class of each fine class, from aligned label lists."""
    pairs = dict(zip(fine, coarse, strict=True))
    if len(set(zip(fine, coarse, strict=True))) != len(pairs):
        raise ValueError("a fine class belongs to more than one coarse class")
    return tuple(int(pairs[label]) for label in sorted(pairs))


def _convert_svhn(directory: Path, files: tuple[Path, ...]) -> _Converted:
    """Parse SVHN with torchvision (already NCHW; torchvision maps label 10 to digit 0)."""
    dataset_class = _svhn_without_checksums()
    train, test = (
        dataset_class(str(directory), split=split, download=False) for split in ("train", "test")
    )
    arrays = {
        "train_x": train.data,
        "train_y": train.labels,
        "test_x": test.data,
        "test_y": test.labels,
    }
    return _Converted(arrays, tuple(str(digit) for digit in range(10)))


_IMAGE_RECIPES = (
    _ImageRecipe(
        name="fashion-mnist",
        mean=(0.2860,),
        std=(0.3530,),
        layout="DIR/FashionMNIST/raw/train-images-idx3-ubyte etc. (or the four .gz files in DIR)",
        find=partial(_idx_files, "FashionMNIST"),
        convert=partial(_convert_mnist_family, "FashionMNIST"),
        debian=True,
    ),
    _ImageRecipe(
        name="mnist",
        mean=(0.1307,),
        std=(0.3081,),
        layout="DIR/MNIST/raw/train-images-idx3-ubyte etc. (or the four .gz files in DIR)",
        find=partial(_idx_files, "MNIST"),
        convert=partial(_convert_mnist_family, "MNIST"),
    ),
    _ImageRecipe(
        name="cifar10",
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        layout="DIR/cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta",
        find=partial(
            _files_in,
            [f"cifar-10-batches-py/data_batch_{index}" for index in range(1, 6)]
            + [f"cifar-10-batches-py/{name}" for name in ("test_batch", "batches.meta")],
        ),
        convert=partial(_convert_cifar, "CIFAR10"),
    ),
    _ImageRecipe(
        name="cifar100",
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        layout="DIR/cifar-100-python/train, test, meta",
        find=partial(_files_in, [f"cifar-100-python/{name}" for name in ("train", "test", "meta")]),
        convert=_convert_cifar100,
    ),
    _ImageRecipe(
        name="svhn",
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        layout="DIR/train_32x32.mat and DIR/test_32x32.mat",
        find=partial(_files_in, ["train_32x32.mat", "test_32x32.mat"]),
        convert=_convert_svhn,
    ),
)


def _search_dirs(recipe: _ImageRecipe, data_dir: Path | None) -> list[Path]:
    """Directories to look in, in order: data_dir, the Debian package, torchvision's root."""
    explicit = [data_dir] if data_dir is not None else []
    debian = [DEBIAN_FASHION_MNIST_DIR] if recipe.debian else []
    return [*explicit, *debian, TORCHVISION_ROOT]


def _not_found(recipe: _ImageRecipe, searched: Sequence[Path], detail: str = "") -> str:
    """The message of a DatasetNotFoundError: where we looked and the ways to fix it."""
    lines = [f"dataset {recipe.name!r} not found (looked in: {', '.join(map(str, searched))})."]
    if detail:
        lines.append(f"torchvision said: {detail}")
    lines.append("Nothing is downloaded. Fix:")
    if recipe.debian:
        lines.append("  - apt-get install -y dataset-fashion-mnist, or")
    lines.append(f"  - --data-dir DIR with torchvision's layout: {recipe.layout}")
    return "\n".join(lines)


def _array_cache_dir(name: str, directory: Path, files: Sequence[Path]) -> Path:
    """The cache entry of ``name`` converted from ``files`` found in ``directory``."""
    stats = [(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    key = json.dumps([CACHE_FORMAT_VERSION, name, str(directory.resolve()), stats])
    return cache_root() / "arrays" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _image_meta(recipe: _ImageRecipe, converted: _Converted) -> DatasetMeta:
    """Meta of a converted image dataset with the recipe's reference channel statistics.

    The statistics are fixed constants of the standard dataset, never computed from the
    loaded arrays: statistics over all training pixels would include every client's
    protected samples and leak them into every model input (DESIGN section 4).
    """
    train_x = converted.arrays["train_x"]
    return DatasetMeta(
        name=recipe.name,
        num_classes=len(converted.class_names),
        channels=int(train_x.shape[1]),
        image_size=(int(train_x.shape[2]), int(train_x.shape[3])),
        mean=recipe.mean,
        std=recipe.std,
        class_names=converted.class_names,
        superclass_of=converted.superclass_of,
    )


def _write_cache(target: Path, arrays: dict[str, np.ndarray], meta: DatasetMeta) -> None:
    """Write a cache entry atomically: into a temporary directory, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for key in _ARRAY_NAMES:
            np.save(staging / f"{key}.npy", np.ascontiguousarray(arrays[key]))
        (staging / "meta.json").write_text(json.dumps(asdict(meta)))
        staging.rename(target)
    except OSError:
        if not _cache_complete(target):  # else another process finished it first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _cache_complete(directory: Path) -> bool:
    """Whether ``directory`` is a finished cache entry (entries appear only by rename)."""
    return (directory / "meta.json").is_file()


def _read_cache(directory: Path) -> LoadedDataset:
    """A cache entry with its arrays memory-mapped read-only."""
    raw = json.loads((directory / "meta.json").read_text())
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    meta = DatasetMeta(**fields)
    arrays = {key: np.load(directory / f"{key}.npy", mmap_mode="r") for key in _ARRAY_NAMES}
    return LoadedDataset(**arrays, meta=meta)


def _locate(recipe: _ImageRecipe, data_dir: Path | None) -> tuple[Path, tuple[Path, ...]]:
    """The first searched directory holding the dataset's files, and those files."""
    searched = _search_dirs(recipe, data_dir)
    for directory in searched:
        files = recipe.find(directory)
        if files is not None:
            return directory, files
    raise DatasetNotFoundError(_not_found(recipe, searched))


def _load_image(recipe: _ImageRecipe, data_dir: Path | None) -> LoadedDataset:
    """Find, convert once (torchvision) and memory-map one image dataset."""
    directory, files = _locate(recipe, data_dir)
    cache_dir = _array_cache_dir(recipe.name, directory, files)
    if not _cache_complete(cache_dir):
        try:
            converted = recipe.convert(directory, files)
        except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
            raise DatasetNotFoundError(_not_found(recipe, [directory], str(error))) from None
        _write_cache(cache_dir, converted.arrays, _image_meta(recipe, converted))
    return _read_cache(cache_dir)


# ----------------------------------------------------------------------------- toy datasets

MOONS_NOISE = 0.1
MOONS_TRAIN_PER_MOON = 1000  # moons: 2000 train, 1000 test
MOONS_TEST_PER_MOON = 500
FOUR_MOONS_TRAIN_PER_MOON = 500  # four-moons: 2000 train, 1000 test
FOUR_MOONS_TEST_PER_MOON = 250
FOUR_MOONS_PAIR_SHIFT = 3.5  # x offset of the right pair of moons
FOUR_MOONS_NOISY_CLASS = 3  # the upper-left moon, whose training labels are random

Arc = Callable[[np.ndarray], np.ndarray]


def _upper_arc(angle: np.ndarray) -> np.ndarray:
    """The upper half circle of make_moons: centre (0, 0), radius 1."""
    return np.stack([np.cos(angle), np.sin(angle)], axis=1)


def _lower_arc(angle: np.ndarray) -> np.ndarray:
    """The lower half circle of make_moons, interleaved with the upper one."""
    return np.stack([1.0 - np.cos(angle), 0.5 - np.sin(angle)], axis=1)


_TWO_MOONS: tuple[tuple[str, Arc, float], ...] = (
    ("upper", _upper_arc, 0.0),
    ("lower", _lower_arc, 0.0),
)
_FOUR_MOONS: tuple[tuple[str, Arc, float], ...] = (
    ("lower-left", _lower_arc, 0.0),
    ("upper-right", _upper_arc, FOUR_MOONS_PAIR_SHIFT),
    ("lower-right", _lower_arc, FOUR_MOONS_PAIR_SHIFT),
    ("upper-left", _upper_arc, 0.0),  # FOUR_MOONS_NOISY_CLASS
)


def _sample_moons(
    moons: Sequence[tuple[str, Arc, float]], per_moon: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled points (float32) and their moon index: ``per_moon`` points per moon.

    In the style of scikit-learn's ``make_moons``, but with angles drawn uniformly at
    random (so train and test sets differ) and Gaussian noise of std MOONS_NOISE.
    """
    moon = np.repeat(np.arange(len(moons)), per_moon)
    angle = rng.uniform(0.0, np.pi, size=moon.size)
    points = np.empty((moon.size, 2))
    for index, (_, arc, shift) in enumerate(moons):
        rows = moon == index
        points[rows] = arc(angle[rows]) + np.array([shift, 0.0])
    points += rng.normal(scale=MOONS_NOISE, size=points.shape)
    order = rng.permutation(moon.size)
    return points[order].astype(np.float32), moon[order]


def _toy_meta(name: str, moons: Sequence[tuple[str, Arc, float]]) -> DatasetMeta:
    """Meta of a toy: features are used as they are (no channels, no normalisation)."""
    names = tuple(moon_name for moon_name, _, _ in moons)
    return DatasetMeta(name, len(names), 0, None, (), (), names)


def _read_only(*arrays: np.ndarray) -> None:
    """Make shared arrays immutable, like the memory-mapped image arrays."""
    for array in arrays:
        array.flags.writeable = False


def _moons(data_dir: Path | None, seed: int) -> LoadedDataset:
    """Two interleaving half circles (scikit-learn's make_moons), noise 0.1, seeded."""
    rng = np.random.default_rng(seed)
    train_x, train_y = _sample_moons(_TWO_MOONS, MOONS_TRAIN_PER_MOON, rng)
    test_x, test_y = _sample_moons(_TWO_MOONS, MOONS_TEST_PER_MOON, rng)
    _read_only(train_x, train_y, test_x, test_y)
    return LoadedDataset(train_x, train_y, test_x, test_y, _toy_meta("moons", _TWO_MOONS))


def _four_moons(data_dir: Path | None, seed: int) -> LoadedDataset:
    """The Four-Moons Dataset of the LHD paper (Figure 1, section 1): heteroskedastic noise.

    Four classes, one per moon; the training points of the upper-left moon
    (FOUR_MOONS_NOISY_CLASS, "purple" in the figure) get uniformly random labels over
    all four classes, the other moons are clean. ``train_noisy`` marks that moon's
    training points. The paper does not give the geometry, sizes or noise; assumptions:
    two make_moons pairs side by side (the right one shifted by FOUR_MOONS_PAIR_SHIFT),
    500 train / 250 test points per moon, noise 0.1, and clean test labels (the paper's
    84.68% test accuracy exceeds the 81.25% ceiling that a noisy test set would impose).
    """
    rng = np.random.default_rng(seed)
    train_x, moon = _sample_moons(_FOUR_MOONS, FOUR_MOONS_TRAIN_PER_MOON, rng)
    noisy = moon == FOUR_MOONS_NOISY_CLASS
    train_y = moon.copy()
    train_y[noisy] = rng.integers(0, len(_FOUR_MOONS), size=int(noisy.sum()))
    test_x, test_y = _sample_moons(_FOUR_MOONS, FOUR_MOONS_TEST_PER_MOON, rng)
    _read_only(train_x, train_y, test_x, test_y, noisy)
    meta = _toy_meta("four-moons", _FOUR_MOONS)
    return LoadedDataset(train_x, train_y, test_x, test_y, meta, train_noisy=noisy)


# ----------------------------------------------------------------------------- registry

Loader = Callable[[Path | None, int], LoadedDataset]


def _image_loader(recipe: _ImageRecipe) -> Loader:
    """A registry loader for an image dataset (the seed does not apply)."""
    return lambda data_dir, seed: _load_image(recipe, data_dir)


_LOADERS: dict[str, Loader] = {
    **{recipe.name: _image_loader(recipe) for recipe in _IMAGE_RECIPES},
    "moons": _moons,
    "four-moons": _four_moons,
}


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(_LOADERS)


@cache
def _load_cached(name: str, data_dir: str | None, seed: int) -> LoadedDataset:
    """One load per process and argument set (failures are not cached)."""
    return _LOADERS[name](None if data_dir is None else Path(data_dir), seed)


def load_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, seed: int = 0
) -> LoadedDataset:
    """Load dataset ``name`` (see the module docstring for where files are looked for).

    ``seed`` only affects the synthetic toys; ``data_dir`` only the image datasets (an
    empty string means none). Repeated calls in a process return the same object.
    Raises ValueError for an unknown name, DatasetNotFoundError for missing files, and
    ConfigError for node folders (``"image-folder"``, loaded by :mod:`fedal.node_folder`).
    """
    if name == FOLDER_DATASET:
        raise ConfigError(
            "data.dataset 'image-folder' is each SuperNode's own folder of images: run it on "
            "the deployment engine (README, 'Real devices'), not as a simulation"
        )
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(_LOADERS)}")
    directory = str(Path(data_dir).expanduser().resolve()) if data_dir else None
    return _load_cached(name, directory, seed)


def clear_memory_cache() -> None:
    """Forget the datasets loaded by this process (the on-disk cache stays)."""
    _load_cached.cache_clear()
