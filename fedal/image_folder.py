"""A node's own folder of images: which images it holds, which are labelled, which are
protected, and their pixels at the model's input size.

Layout of a node folder (``data-dir``)::

    DATA_DIR/labelled/<class>/...   already labelled: the sub-folder names the class
    DATA_DIR/...anything else...    unlabelled (any depth, any file name)

Hidden files and folders (a leading dot, e.g. the node's ``.fedal/`` state) are skipped;
an image is any file with a suffix of :data:`IMAGE_SUFFIXES` that Pillow opens. Every
image is converted to grey or RGB (``data.image_channels``), turned upright by its EXIF
orientation, and scaled and centre-cropped to ``data.image_size`` squared
(``PIL.ImageOps.fit``). The server's test set (``data.test_dir``) has one sub-folder
per class and nothing else.

The protected set is what the user marks, by either or both of:

- a list file (``protect-list``): one path or glob pattern per line, relative to
  DATA_DIR (absolute paths inside DATA_DIR work too); ``#`` starts a comment. A pattern is
  matched with :func:`fnmatch.fnmatchcase` against the image's path relative to DATA_DIR
  with ``/`` separators (``*`` also matches across ``/``), and an entry naming a folder
  protects everything under it: ``private/``, ``*.jpg``, ``2019-*/beach.png``.
- a metadata rule (``protect-rule``): clauses separated by ``;``, an image is protected
  when any clause holds. ``taken-before:YYYY-MM-DD``, ``taken-after:YYYY-MM-DD``,
  ``taken-between:YYYY-MM-DD..YYYY-MM-DD`` (inclusive) compare the EXIF capture date
  (DateTimeOriginal, else DateTime); ``gps`` holds for an image with EXIF GPS data. An
  image without an EXIF date matches no date clause.

Protected images are never labelled, never queued for the annotator, never used by the
helper and never leave the node, exactly as a benchmark client's protected samples.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from fedal.datasets import DatasetMeta, LoadedDataset

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
LABELLED_DIR = "labelled"
# Reference channel statistics of node images: fixed constants, never computed from the
# images (statistics over a node's pixels would include its protected images).
FOLDER_MEAN, FOLDER_STD = 0.5, 0.25
_DATE_FORMAT = "%Y-%m-%d"


class FolderError(ValueError):
    """A node folder, test folder, list file or rule is not usable; one line says why."""


# ----------------------------------------------------------------------------- images


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def image_files(directory: Path) -> list[str]:
    """Paths of the images under ``directory``, relative with ``/``, sorted; hidden
    files and folders are skipped."""
    if not directory.is_dir():
        raise FolderError(f"image folder {str(directory)!r} does not exist")
    found = []
    for root, folders, files in os.walk(directory):
        folders[:] = [name for name in folders if not name.startswith(".")]
        for name in files:
            relative = (Path(root) / name).relative_to(directory)
            if relative.suffix.lower() in IMAGE_SUFFIXES and not _is_hidden(relative):
                found.append(relative.as_posix())
    return sorted(found)


def folder_label(relative: str, classes: Sequence[str]) -> int:
    """The class of an image under ``labelled/<class>/``, -1 for any other image; an
    unknown class folder is an error."""
    parts = relative.split("/")
    if len(parts) < 3 or parts[0] != LABELLED_DIR:
        return -1
    if parts[1] not in classes:
        raise FolderError(
            f"{LABELLED_DIR}/{parts[1]}/ is not a class; classes: {', '.join(classes)}"
        )
    return classes.index(parts[1])


def read_pixels(path: Path, size: int, channels: int) -> np.ndarray:
    """One image as uint8 ``(channels, size, size)``: upright, scaled and centre-cropped."""
    try:
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image).convert("L" if channels == 1 else "RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise FolderError(f"{path}: not a readable image ({error})") from None
    fitted = ImageOps.fit(upright, (size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(fitted, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def read_images(directory: Path, paths: Sequence[str], size: int, channels: int) -> np.ndarray:
    """``paths`` (relative to ``directory``) as uint8 ``(N, channels, size, size)``."""
    stacked = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    for row, relative in enumerate(paths):
        stacked[row] = read_pixels(directory / relative, size, channels)
    return stacked


def folder_meta(classes: Sequence[str], size: int, channels: int) -> DatasetMeta:
    """What models need to know about node images (the same on the server and every node)."""
    return DatasetMeta(
        name="image-folder",
        num_classes=len(classes),
        channels=channels,
        image_size=(size, size),
        mean=(FOLDER_MEAN,) * channels,
        std=(FOLDER_STD,) * channels,
        class_names=tuple(classes),
    )


def load_test_folder(
    test_dir: Path, classes: Sequence[str], size: int, channels: int
) -> LoadedDataset:
    """The server's test set: every image of ``test_dir/<class>/``, no training images."""
    paths = image_files(test_dir)
    labels = []
    for relative in paths:
        folder = relative.split("/")[0]
        if "/" not in relative or folder not in classes:
            raise FolderError(
                f"test image {relative!r} is not in a class folder of {str(test_dir)!r}; "
                f"classes: {', '.join(classes)}"
            )
        labels.append(classes.index(folder))
    if not paths:
        raise FolderError(f"test folder {str(test_dir)!r} holds no images")
    empty = np.empty((0, channels, size, size), dtype=np.uint8)
    return LoadedDataset(
        train_x=empty,
        train_y=np.empty(0, dtype=np.int64),
        test_x=read_images(test_dir, paths, size, channels),
        test_y=np.asarray(labels, dtype=np.int64),
        meta=folder_meta(classes, size, channels),
    )


# ----------------------------------------------------------------------------- protection


def read_protect_list(list_file: Path, data_dir: Path) -> tuple[str, ...]:
    """The patterns of a protect list, relative to ``data_dir``."""
    if not list_file.is_file():
        raise FolderError(f"protect-list {str(list_file)!r} does not exist")
    patterns = []
    for line in list_file.read_text().splitlines():
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if Path(entry).is_absolute():
            try:
                entry = Path(entry).relative_to(data_dir).as_posix()
            except ValueError:
                raise FolderError(
                    f"protect-list {str(list_file)!r}: {entry!r} is outside {str(data_dir)!r}"
                ) from None
        patterns.append(entry.rstrip("/"))
    return tuple(patterns)


def listed(relative: str, patterns: Sequence[str]) -> bool:
    """Whether a list pattern names the image or a folder above it."""
    return any(
        fnmatch.fnmatchcase(relative, pattern) or relative.startswith(pattern + "/")
        for pattern in patterns
    )


@dataclass(frozen=True)
class ImageMetadata:
    """What the metadata rules look at: the EXIF capture date and whether GPS is there."""

    taken: date | None
    has_gps: bool


def read_metadata(path: Path) -> ImageMetadata:
    """The capture date (DateTimeOriginal, else DateTime) and GPS presence of an image."""
    try:
        with Image.open(path) as image:
            exif = image.getexif()
    except (OSError, UnidentifiedImageError) as error:
        raise FolderError(f"{path}: not a readable image ({error})") from None
    stamp = exif.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.DateTimeOriginal) or exif.get(
        ExifTags.Base.DateTime
    )
    taken = None
    if isinstance(stamp, str):
        try:
            taken = datetime.strptime(stamp.strip()[:10], "%Y:%m:%d").date()
        except ValueError:
            taken = None
    return ImageMetadata(taken=taken, has_gps=bool(exif.get_ifd(ExifTags.IFD.GPSInfo)))


Clause = Callable[[ImageMetadata], bool]


def _day(text: str, rule: str) -> date:
    try:
        return datetime.strptime(text, _DATE_FORMAT).date()
    except ValueError:
        raise FolderError(f"protect-rule {rule!r}: {text!r} is not a date YYYY-MM-DD") from None


def _clause(text: str, rule: str) -> Clause:
    kind, _, argument = text.partition(":")
    if kind == "gps" and not argument:
        return lambda meta: meta.has_gps
    if kind == "taken-before":
        limit = _day(argument, rule)
        return lambda meta: meta.taken is not None and meta.taken < limit
    if kind == "taken-after":
        limit = _day(argument, rule)
        return lambda meta: meta.taken is not None and meta.taken > limit
    if kind == "taken-between" and ".." in argument:
        first, last = (_day(part, rule) for part in argument.split("..", 1))
        return lambda meta: meta.taken is not None and first <= meta.taken <= last
    raise FolderError(
        f"protect-rule {rule!r}: cannot read {text!r}; clauses are taken-before:YYYY-MM-DD, "
        "taken-after:YYYY-MM-DD, taken-between:YYYY-MM-DD..YYYY-MM-DD and gps, joined by ';'"
    )


def parse_rule(rule: str) -> tuple[Clause, ...]:
    """The clauses of a metadata rule (see the module docstring); empty for ``""``."""
    return tuple(_clause(part.strip(), rule) for part in rule.split(";") if part.strip())


@dataclass(frozen=True)
class Protection:
    """A node's protected-set definition: list patterns and metadata-rule clauses."""

    patterns: tuple[str, ...] = ()
    clauses: tuple[Clause, ...] = ()

    @classmethod
    def of(cls, data_dir: Path, list_file: str = "", rule: str = "") -> Protection:
        """From a ``protect-list`` file (optional) and a ``protect-rule`` (optional)."""
        patterns = read_protect_list(Path(list_file), data_dir) if list_file else ()
        return cls(patterns, parse_rule(rule))

    def by_list(self, relative: str) -> bool:
        """Whether the list protects the image."""
        return listed(relative, self.patterns)

    def by_rule(self, path: Path) -> bool:
        """Whether the metadata rule protects the image at ``path``."""
        if not self.clauses:
            return False
        metadata = read_metadata(path)
        return any(clause(metadata) for clause in self.clauses)


@dataclass(frozen=True)
class NodeImages:
    """A node folder's images (relative paths), their folder labels (-1: unlabelled) and
    which are protected, and by what."""

    directory: Path
    paths: tuple[str, ...]
    labels: np.ndarray
    by_list: np.ndarray
    by_rule: np.ndarray

    @property
    def protected(self) -> np.ndarray:
        """Mask of the protected images (by the list or by the rule)."""
        return self.by_list | self.by_rule

    def summary(self) -> dict[str, int]:
        """How many images the node holds, labels, and protects (and by what)."""
        protected = self.protected
        return {
            "images": len(self.paths),
            "labelled_in_folders": int(((self.labels >= 0) & ~protected).sum()),
            "protected": int(protected.sum()),
            "protected_by_list": int(self.by_list.sum()),
            "protected_by_rule": int(self.by_rule.sum()),
        }


def scan_node(
    directory: Path, paths: Sequence[str], classes: Sequence[str], protection: Protection
) -> NodeImages:
    """Folder labels and protection of ``paths`` (images of ``directory``, in node order)."""
    labels = np.asarray([folder_label(path, classes) for path in paths], dtype=np.int64)
    by_list = np.asarray([protection.by_list(path) for path in paths], dtype=bool)
    by_rule = np.asarray([protection.by_rule(directory / path) for path in paths], dtype=bool)
    return NodeImages(directory, tuple(paths), labels, by_list, by_rule)
