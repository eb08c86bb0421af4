"""Node folders: images, folder labels, the protected set (list file and metadata rule),
the node's pool and the server's test set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from node_images import CLASSES, folder_config, write_node_folder, write_png
from PIL import Image

from fedal.config import ConfigError, load_config
from fedal.image_folder import (
    FolderError,
    Protection,
    image_files,
    parse_rule,
    read_pixels,
    scan_node,
)
from fedal.node_folder import NodeFolder, NodeSettings
from fedal.shards import load_experiment, partition_summary


def test_images_of_any_size_and_format_become_the_model_input(tmp_path: Path) -> None:
    Image.new("RGB", (50, 30), (255, 0, 0)).save(tmp_path / "wide.jpg")
    Image.new("L", (7, 9), 128).save(tmp_path / "tiny.bmp")
    assert read_pixels(tmp_path / "wide.jpg", 16, 3).shape == (3, 16, 16)
    assert read_pixels(tmp_path / "wide.jpg", 16, 3)[0].min() > 200  # red stays red
    grey = read_pixels(tmp_path / "tiny.bmp", 12, 1)
    assert grey.shape == (1, 12, 12) and grey.dtype == np.uint8
    (tmp_path / "broken.png").write_text("not an image")
    with pytest.raises(FolderError, match=r"broken.png: not a readable image"):
        read_pixels(tmp_path / "broken.png", 16, 3)


def test_the_protected_set_comes_from_the_list_and_the_rule(tmp_path: Path) -> None:
    node = write_node_folder(tmp_path / "album", seed=0)
    (node.directory / ".fedal").mkdir()
    write_png(node.directory / ".fedal/hidden.png", 0)  # hidden folders are skipped
    (node.directory / "notes.txt").write_text("not an image")
    paths = image_files(node.directory)
    assert ".fedal/hidden.png" not in paths and "notes.txt" not in paths
    protection = Protection.of(node.directory, str(node.protect_list), node.protect_rule)
    images = scan_node(node.directory, paths, CLASSES, protection)
    protected = {path for path, flag in zip(paths, images.protected, strict=True) if flag}
    assert protected == node.protected
    labelled = {p: int(k) for p, k in zip(paths, images.labels, strict=True) if k >= 0}
    assert labelled == {**node.labelled, "labelled/dark/dark-1.png": 0}
    assert images.summary() == {
        "images": len(paths),
        "labelled_in_folders": 3,
        "protected": 5,
        "protected_by_list": 3,
        "protected_by_rule": 2,
    }


def test_rule_clauses() -> None:
    from datetime import date

    from fedal.image_folder import ImageMetadata

    def holds(rule: str, taken: date | None, gps: bool = False) -> bool:
        return any(clause(ImageMetadata(taken, gps)) for clause in parse_rule(rule))

    assert holds("taken-between:2020-01-01..2020-12-31", date(2020, 12, 31))
    assert not holds("taken-between:2020-01-01..2020-12-31", date(2021, 1, 1))
    assert holds("taken-after:2022-01-01", date(2022, 1, 2))
    assert not holds("taken-before:2022-01-01", None)  # no date, no match
    assert holds("gps ; taken-after:2030-01-01", None, gps=True)
    assert parse_rule("") == ()


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("taken-before:01/02/2020", "'01/02/2020' is not a date YYYY-MM-DD"),
        ("flash", "cannot read 'flash'; clauses are taken-before"),
        ("taken-between:2020-01-01", "cannot read 'taken-between:2020-01-01'"),
    ],
)
def test_a_bad_rule_fails_in_one_line(rule: str, message: str) -> None:
    with pytest.raises(FolderError, match=message) as caught:
        parse_rule(rule)
    assert "\n" not in str(caught.value)


def test_bad_node_folders_fail_in_one_line(tmp_path: Path) -> None:
    write_png(tmp_path / "album/labelled/cats/c.png", 10)
    paths = image_files(tmp_path / "album")
    with pytest.raises(FolderError, match=r"labelled/cats/ is not a class; classes: dark, light"):
        scan_node(tmp_path / "album", paths, CLASSES, Protection())
    with pytest.raises(FolderError, match=r"image folder '.*nowhere' does not exist"):
        image_files(tmp_path / "nowhere")
    with pytest.raises(FolderError, match=r"protect-list '.*missing\.txt' does not exist"):
        Protection.of(tmp_path / "album", str(tmp_path / "missing.txt"))
    (tmp_path / "outside.txt").write_text("/etc/passwd\n")
    with pytest.raises(FolderError, match="'/etc/passwd' is outside"):
        Protection.of(tmp_path / "album", str(tmp_path / "outside.txt"))
    with pytest.raises(
        FolderError, match="--node-config 'partition-id=K num-partitions=N data-dir="
    ):
        NodeSettings.from_node_config({"partition-id": 0})


def test_node_folder_pool_labels_folders_and_never_offers_protected_images(
    tmp_path: Path,
) -> None:
    node = write_node_folder(tmp_path / "album", seed=1)
    settings = NodeSettings.from_node_config(
        {
            "data-dir": str(node.directory),
            "protect-list": str(node.protect_list),
            "protect-rule": node.protect_rule,
        }
    )
    data = folder_config(tmp_path / "test").data
    folder = NodeFolder.open(settings, data)
    paths = folder.images.paths
    assert folder.dataset.train_x.shape == (len(paths), 3, 16, 16)
    pool = folder.new_pool(client=3)
    assert {paths[i] for i in pool.protected} == node.protected
    assert {paths[i] for i in pool.candidates}.isdisjoint(node.protected)
    assert {paths[i]: int(k) for i, k in zip(pool.labelled, pool.labels, strict=True)} == (
        node.labelled
    )
    assert {row[1] for row in pool.ledger_array()} == {0}  # folder labels: round 0
    # images added later get new indices; the known ones keep theirs
    write_png(node.directory / "camera/aaa-new.png", 90)
    again = NodeFolder.open(settings, data)
    assert again.images.paths[: len(paths)] == paths
    assert again.images.paths[-1] == "camera/aaa-new.png"


def test_the_server_holds_the_test_folder_only(tmp_path: Path) -> None:
    for label, name in enumerate(CLASSES):
        for k in range(3):
            write_png(tmp_path / f"test/{name}/{k}.png", 40 + 170 * label, size=20, seed=k)
    config = folder_config(tmp_path / "test")
    experiment = load_experiment(config)
    assert experiment.dataset.test_x.shape == (6, 3, 16, 16)
    assert experiment.dataset.test_y.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(experiment.dataset.train_y) == 0 and experiment.shards == []
    summary = partition_summary(config, experiment)
    assert summary["classes"] == list(CLASSES) and summary["test_images"] == 6
    write_png(tmp_path / "test/stray.png", 0)
    with pytest.raises(FolderError, match=r"test image 'stray\.png' is not in a class folder"):
        load_experiment(config)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (['data.dataset="image-folder"'], "needs classes = two or more distinct names"),
        (
            ['data.dataset="image-folder"', 'data.classes="a,b"'],
            "needs test_dir = the server's test set",
        ),
        (
            ['data.dataset="image-folder"', 'data.classes="a,b"', 'data.test_dir="t"'],
            "oracle.annotator 'simulated' does not fit data.dataset 'image-folder'",
        ),
        (['oracle.annotator="human"'], "a person labels node folders"),
        (
            [
                'data.dataset="image-folder"',
                'data.classes="a,b"',
                'data.test_dir="t"',
                'oracle.annotator="human"',
                "oracle.answer_wait=600",
                "federation.round_timeout=600",
            ],
            "oracle.answer_wait 600 s must be shorter than federation.round_timeout 600 s",
        ),
    ],
)
def test_folder_config_errors_are_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(None, overrides)
    assert "\n" not in str(caught.value)


def test_a_simulation_on_node_folders_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedal.cli import main

    overrides = [
        'data.dataset="image-folder"',
        'data.classes="a,b"',
        f'data.test_dir="{tmp_path}"',
        'oracle.annotator="human"',
    ]
    assert main(["run", *(part for text in overrides for part in ("--set", text))]) == 2
    error = capsys.readouterr().err
    assert "each SuperNode's own folder of images: run it on the deployment engine" in error
    assert error.count("\n") == 1
