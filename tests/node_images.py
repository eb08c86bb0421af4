"""Node folders of small PNG images for the real-device tests, and their run config:
labelled images under ``labelled/<class>/``, unlabelled ones elsewhere, some with an EXIF
capture date or GPS data written by Pillow (``exif=``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from fedal.config import ExperimentConfig, load_config

CLASSES = ("dark", "light")


def folder_config(test_dir: Path, *extra: str) -> ExperimentConfig:
    """A run on node folders of :data:`CLASSES` at 16 x 16, labelled by a person."""
    return load_config(
        None,
        [
            'data.dataset="image-folder"',
            f'data.classes="{",".join(CLASSES)}"',
            f'data.test_dir="{test_dir}"',
            "data.image_size=16",
            'oracle.annotator="human"',
            *extra,
        ],
    )


def write_png(
    path: Path, shade: int, size: int = 16, taken: str = "", gps: bool = False, seed: int = 0
) -> Path:
    """A ``size`` x ``size`` RGB PNG around grey level ``shade``, optionally with an EXIF
    DateTime (``"YYYY:MM:DD HH:MM:SS"``) and a GPS position."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = np.clip(shade + rng.integers(-20, 21, size=(size, size, 3)), 0, 255)
    exif = Image.Exif()
    if taken:
        exif[ExifTags.Base.DateTime] = taken
    if gps:
        exif[ExifTags.IFD.GPSInfo] = {
            ExifTags.GPS.GPSLatitudeRef: "N",
            ExifTags.GPS.GPSLatitude: (52.0, 31.0, 0.0),
        }
    Image.fromarray(pixels.astype(np.uint8)).save(path, exif=exif)
    return path


@dataclass(frozen=True)
class NodeFiles:
    """A node folder written by :func:`write_node_folder` and what it should protect."""

    directory: Path
    protect_list: Path
    protect_rule: str
    protected: frozenset[str]  # relative paths the list or the rule protects
    labelled: dict[str, int]  # unprotected images under labelled/<class>/ -> class


def write_node_folder(directory: Path, seed: int, unlabelled: int = 6) -> NodeFiles:
    """A node folder: two labelled images per class (one of them protected by the list),
    ``unlabelled`` open images, two images in ``private/`` (protected by the list file),
    one taken in 2019 and one with GPS data (protected by the rule
    ``taken-before:2020-01-01;gps``), and one taken in 2023 (not protected)."""
    files: dict[str, int] = {}
    for label, name in enumerate(CLASSES):
        for k in range(2):
            relative = f"labelled/{name}/{name}-{k}.png"
            write_png(directory / relative, 40 + 170 * label, seed=seed + k)
            files[relative] = label
    for k in range(unlabelled):
        write_png(directory / f"camera/img-{k}.png", 40 + 170 * (k % 2), seed=seed + 10 + k)
    write_png(directory / "camera/recent.png", 200, taken="2023:05:01 10:00:00", seed=seed)
    write_png(directory / "camera/old.png", 60, taken="2019:06:01 12:00:00", seed=seed + 1)
    write_png(directory / "camera/where.png", 200, gps=True, seed=seed + 2)
    write_png(directory / "private/secret-0.png", 50, seed=seed + 3)
    write_png(directory / "private/secret-1.png", 210, seed=seed + 4)
    protect_list = directory.parent / f"{directory.name}-protected.txt"
    protect_list.write_text("# private things\nprivate/\nlabelled/dark/dark-1.png\n")
    protected = frozenset(
        {
            "private/secret-0.png",
            "private/secret-1.png",
            "labelled/dark/dark-1.png",
            "camera/old.png",
            "camera/where.png",
        }
    )
    labelled = {path: label for path, label in files.items() if path not in protected}
    return NodeFiles(directory, protect_list, "taken-before:2020-01-01;gps", protected, labelled)
