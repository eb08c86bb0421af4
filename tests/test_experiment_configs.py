"""Every experiment config loads and validates; every paper-scale config has a CPU twin."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedal.app.preflight import check_strategy
from fedal.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "experiments" / "configs").glob("*.toml"))
OFFLINE = {"fashion-mnist", "mnist", "moons", "four-moons"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.stem)
def test_config_loads_and_its_strategy_accepts_its_options(path: Path) -> None:
    config = load_config(path)
    check_strategy(config)


def test_every_paper_scale_config_has_a_cpu_twin_on_offline_data() -> None:
    names = {path.stem for path in CONFIGS}
    twins = {name for name in names if name.endswith("_cpu")}
    for twin in twins:
        assert twin.removesuffix("_cpu") in names
        assert load_config(CONFIGS[0].parent / f"{twin}.toml").data.dataset in OFFLINE
    paper_scale = {name for name in names if f"{name}_cpu" in names}
    assert paper_scale == {twin.removesuffix("_cpu") for twin in twins}


def test_every_paper_scale_config_has_a_gpu_twin_with_the_papers_setting() -> None:
    """Same data, models, protection, label schedule, rounds and training settings; only
    the name and (at most) the epochs differ; the client gets a GPU."""
    names = {path.stem for path in CONFIGS}
    paper_scale = {name for name in names if f"{name}_cpu" in names}
    assert paper_scale and {f"{name}_gpu" for name in paper_scale} <= names
    for name in paper_scale:
        paper = load_config(CONFIGS[0].parent / f"{name}.toml")
        twin = load_config(CONFIGS[0].parent / f"{name}_gpu.toml")
        peer_epochs = twin.query.options["epochs"]
        expected = (
            paper.replace("experiment", name=twin.experiment.name)
            .replace("training", epochs=twin.training.epochs)
            .replace("query", options={**paper.query.options, "epochs": peer_epochs})
        )
        assert twin == expected, name
        assert twin.training.epochs <= paper.training.epochs
        assert peer_epochs <= paper.query.options["epochs"]
        assert twin.federation.client_gpus > 0
