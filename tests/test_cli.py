"""Tests for the ``fedal`` command's train, partition and plot subcommands (``run`` is
tested with the simulation)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import ray
import torch
from engine_support import client_report

from fedal.checkpoint import ServerCheckpoint, save_server_checkpoint
from fedal.cli import main
from fedal.config import ConfigError, load_config
from fedal.results import RunRecorder
from fedal.rundir import RunDirectory

DEMO = str(Path(__file__).resolve().parents[1] / "experiments" / "configs" / "demo.toml")


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The single line the command printed on stderr."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("fedal: error: ")
    return lines[0]


def test_train_prints_accuracy(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["train", "--model", "cnn", "--labels", "200", "--epochs", "1"])
    assert status == 0
    out = capsys.readouterr().out
    match = re.search(r"test accuracy (\d+\.\d+)%", out)
    assert match, out
    assert float(match.group(1)) > 20.0  # chance is 10%
    assert "fashion-mnist | cnn | 200 random labels | 1 epochs" in out


def test_partition_writes_summary_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "partition.json"
    status = main(["partition", DEMO, "--set", "data.train_subset=2000", "-o", str(out)])
    assert status == 0
    assert "class histogram" in capsys.readouterr().out
    summary = json.loads(out.read_text())
    assert summary["dataset"] == "fashion-mnist"
    assert summary["partition"] == "iid"
    assert summary["num_clients"] == 10
    assert summary["protected_fraction"] == 0.9
    clients = summary["clients"]
    assert [client["client"] for client in clients] == list(range(10))
    assert sum(client["size"] for client in clients) == 2000
    for client in clients:
        assert client["size"] == 200
        assert sum(client["class_histogram"]) == client["size"]
        assert len(client["class_histogram"]) == 10
        assert client["protected"] == 180
        assert client["candidates"] == 20


def test_partition_shortcut_flags(tmp_path: Path) -> None:
    out = tmp_path / "partition.json"
    args = ["partition", DEMO, "--set", "data.train_subset=600", "--clients", "3", "--seed", "2"]
    assert main([*args, "-o", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["num_clients"] == 3
    assert summary["seed"] == 2


def test_bad_override_exits_2_naming_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["partition", DEMO, "--set", "data.partition=dirichlet", "--set", "data.alpha=-1"]
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert "data.alpha" in line
    assert "-1" in line


def test_data_dependent_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["partition", DEMO, "--set", "data.train_subset=100", "--clients", "10"]
    assert main([*args, "--set", "data.initial_labels_per_client=5"]) == 2
    assert "data.initial_labels_per_client" in _one_error_line(capsys)


def test_unknown_strategy_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["partition", DEMO, "--strategy", "clairvoyant"]) == 2
    assert "clairvoyant" in _one_error_line(capsys)


def test_plot_rejects_a_non_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plot", str(tmp_path), "-o", str(tmp_path / "plot.png")]) == 2
    assert "not a fedal run directory" in _one_error_line(capsys)
    assert not (tmp_path / "plot.png").exists()


def test_plot_overlays_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = []
    for seed in (0, 1):
        run_dir = tmp_path / f"run-s{seed}"
        config = load_config(None, [f"experiment.seed={seed}"])
        recorder = RunRecorder.start(RunDirectory(run_dir), config)
        for server_round in (1, 2):
            report = client_report(0, trained=10 * server_round, requested=10 * server_round)
            recorder.record_round(server_round, 0.3 * server_round, 1.0, [report], 1.0)
        runs.append(str(run_dir))
    output = tmp_path / "overlay.png"
    assert main(["plot", *runs, "-o", str(output), "--title", "seeds"]) == 0
    assert capsys.readouterr().out.strip() == str(output)
    assert output.stat().st_size > 1000


def test_resume_refuses_what_it_cannot_continue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["resume", str(tmp_path)]) == 2
    assert "not a fedal run directory" in _one_error_line(capsys)

    run_dir = tmp_path / "run"
    RunRecorder.start(RunDirectory(run_dir), load_config(None, ["federation.rounds=2"]))
    assert main(["resume", str(run_dir)]) == 2
    assert "no checkpoint to resume from" in _one_error_line(capsys)

    save_server_checkpoint(RunDirectory(run_dir), ServerCheckpoint(2, 0, {}, []))
    assert main(["resume", str(run_dir)]) == 2
    assert "already has 2 of federation.rounds=2 rounds" in _one_error_line(capsys)

    recorded = RunDirectory(run_dir).config_file.read_bytes()
    assert main(["resume", str(run_dir), "--rounds", "3", "--set", "training.lr=0.5"]) == 2
    assert "cannot change training.lr: 0.05 -> 0.5" in _one_error_line(capsys)
    assert main(["resume", str(run_dir), "--set", "query.strategy=entropy"]) == 2
    assert "cannot change query.strategy: 'random' -> 'entropy'" in _one_error_line(capsys)
    assert RunDirectory(run_dir).config_file.read_bytes() == recorded


@pytest.mark.parametrize(
    ("shortcut", "field"),
    [
        (["--rounds", "0"], "federation.rounds"),
        (["--clients", "0"], "data.num_clients"),
    ],
)
def test_shortcuts_are_validated_like_set(
    shortcut: list[str], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["partition", DEMO, *shortcut]) == 2
    line = _one_error_line(capsys)
    assert field in line and "0" in line


@pytest.mark.parametrize(
    "arguments",
    [
        ["--set", "federation.rounds=abc", "--rounds", "3"],
        ["--clients", "4", "--set", "data.num_clients=5"],
        ["--strategy", "psl", "--set", 'query.strategy="random"'],
    ],
)
def test_a_shortcut_and_set_on_the_same_field_are_refused(
    arguments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["partition", DEMO, *arguments]) == 2
    assert "give one of them" in _one_error_line(capsys)


def test_a_run_directory_holds_one_run_of_one_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = RunDirectory(tmp_path / "run")
    RunRecorder.start(run, load_config(None, ["federation.rounds=2"]))
    assert main(["run", DEMO, "--run-dir", str(run.path)]) == 2
    assert f"{run.path} already holds a run; continue it with `fedal resume" in _one_error_line(
        capsys
    )

    save_server_checkpoint(run, ServerCheckpoint(1, 0, {}, []))
    with run.lock():
        assert main(["resume", str(run.path), "--rounds", "3"]) == 2
        line = _one_error_line(capsys)
        assert "is in use by another fedal process" in line and str(os.getpid()) in line
        with pytest.raises(ConfigError, match="in use"), run.lock():
            pass


def test_resume_refuses_results_shorter_than_the_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = RunDirectory(tmp_path / "run")
    recorder = RunRecorder.start(run, load_config(None, ["federation.rounds=2"]))
    recorder.record_round(0, 0.1, 2.0, [], 0.0)
    recorder.record_round(1, 0.5, 1.0, [client_report(0, 5, 8, [(0, 3, 1)] * 3)], 1.0)
    save_server_checkpoint(run, ServerCheckpoint(2, 3, {}, []))
    assert main(["resume", str(run.path), "--rounds", "3"]) == 2
    assert "lacks round(s) [2] of the checkpoint (after round 2)" in _one_error_line(capsys)

    save_server_checkpoint(run, ServerCheckpoint(1, 5, {}, []))
    assert main(["resume", str(run.path), "--rounds", "3"]) == 2
    assert "holds 3 rows, the checkpoint counts 5" in _one_error_line(capsys)

    run.rounds_file.write_text(run.rounds_file.read_text()[:-20])
    assert main(["resume", str(run.path), "--rounds", "3"]) == 2
    assert "line 2 is damaged" in _one_error_line(capsys)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--set", "data.initial_labels_per_client=0"],
            "data.initial_labels_per_client: 0 is not allowed; allowed: an integer >= 1",
        ),
        (
            ["--strategy", "bald"],
            "model.dropout: 0.0 is not allowed with query.strategy 'bald'",
        ),
        (
            ["--strategy", "kafal"],
            "query.scoring_model: 'helper' is not allowed with query.strategy 'kafal'; "
            "allowed: 'both'",
        ),
        (
            ["--strategy", "logo"],
            "query.scoring_model: 'helper' is not allowed with query.strategy 'logo'; "
            "allowed: 'global', 'both'",
        ),
        (
            ["--strategy", "feal", "--set", 'query.scoring_model="global"'],
            "query.scoring_model: 'global' is not allowed with query.strategy 'feal'; "
            "allowed: 'both'",
        ),
        (
            ["--set", 'data.dataset="moons"'],
            "model.helper: 'cnn' does not take moons's inputs; allowed: mlp",
        ),
        (
            ["--set", 'data.corruption="noisy-class"', "--set", "data.corruption_class=12"],
            "data.corruption_class: 12 is not a class of fashion-mnist; allowed: 0 <= value < 10",
        ),
        (
            ["--set", 'experiment.output_dir="/proc/fedal-cannot-write-here"'],
            "experiment.output_dir: cannot create /proc/fedal-cannot-write-here/",
        ),
        (
            ["--client-cpus", "1000"],
            "federation.client_cpus: 1000 is more than the",
        ),
    ],
)
def test_input_errors_stop_before_ray_with_one_line(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", DEMO, *arguments]) == 2
    assert message in _one_error_line(capsys)
    assert not ray.is_initialized()  # stopped before Ray (and any federation) started


def test_a_run_without_a_gpu_refuses_gpu_clients(capsys: pytest.CaptureFixture[str]) -> None:
    gpus = torch.cuda.device_count()
    assert main(["run", DEMO, "--client-gpus", "0.5" if gpus == 0 else "1.5"]) == 2
    line = _one_error_line(capsys)
    assert "federation.client_gpus" in line and (
        "GPU(s) of this machine" in line if gpus == 0 else "allowed" in line
    )


def test_a_broken_toml_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[training]\nlr = = 0.1\n")
    assert main(["run", str(broken)]) == 2
    assert f"{broken}: not valid TOML" in _one_error_line(capsys)


def test_a_damaged_checkpoint_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = RunDirectory(tmp_path / "run")
    RunRecorder.start(run, load_config(None, ["federation.rounds=2"]))
    run.checkpoint_dir.mkdir()
    run.server_checkpoint_file.write_bytes(b"PK\x03\x04 half a zip file")
    assert main(["resume", str(run.path), "--rounds", "3"]) == 2
    assert "damaged checkpoint" in _one_error_line(capsys)


@pytest.mark.parametrize("scheme", ["balanced-dirichlet", "shards"])
def test_partition_plot_writes_a_png(
    scheme: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import matplotlib.image

    plot = tmp_path / "labels.png"
    args = [
        "partition",
        DEMO,
        "--set",
        "data.train_subset=2000",
        "--set",
        f"data.partition={scheme}",
    ]
    assert main([*args, "--plot", str(plot)]) == 0
    assert f"fashion-mnist | {scheme}" in capsys.readouterr().out
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    pixels = matplotlib.image.imread(plot)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert pixels.std() > 0.05  # bars, not a blank canvas
