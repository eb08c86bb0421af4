"""The repository as a Flower App: `flwr run .` (simulation) and a loopback deployment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from engine_support import write_small_fashion_mnist
from flower_processes import (
    BIN,
    flower_env,
    free_port,
    processes_using,
    started,
    stop,
    wait_for_port,
)

from fedal.config import flatten, from_flat, load_config
from fedal.rundir import RunDirectory

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def run_overrides(data_dir: Path, output_dir: Path, clients: int, rounds: int = 2) -> str:
    """A small run (2 rounds by default) for `flwr run --run-config`."""
    return " ".join(
        [
            f'data.data_dir="{data_dir}"',
            f"data.num_clients={clients}",
            "data.initial_labels_per_client=6",
            "query.budget_per_query=4",
            f"federation.rounds={rounds}",
            "training.epochs=1",
            f'experiment.output_dir="{output_dir}"',
        ]
    )


def only_run_dir(output_dir: Path) -> Path:
    runs = [path for path in output_dir.iterdir() if path.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def check_results(run_dir: Path, clients: int) -> None:
    rounds = RunDirectory(run_dir).read_rounds()
    assert [row["round"] for row in rounds] == [0, 1, 2]
    assert rounds[-1]["labels"] == clients * (6 + 4)
    assert {client["client"] for client in rounds[-1]["clients"]} == set(range(clients))
    assert len(RunDirectory(run_dir).read_ledger()) == clients * (6 + 2 * 4)


def test_app_config_equals_the_demo_config() -> None:
    with (REPO / "pyproject.toml").open("rb") as handle:
        app_config = tomllib.load(handle)["tool"]["flwr"]["app"]["config"]
    flat = {
        f"{section}.{key}": value
        for section, values in app_config.items()
        for key, value in values.items()
    }
    demo = load_config(REPO / "experiments/configs/demo.toml")
    assert from_flat(flat) == demo
    assert set(flat) == set(flatten(demo)), "every field must be overridable by --run-config"


@pytest.fixture()
def small_data(tmp_path: Path) -> Path:
    return write_small_fashion_mnist(tmp_path / "data")


def test_flwr_run_simulation_and_resume(tmp_path: Path, small_data: Path) -> None:
    home, output = tmp_path / "flwr-home", tmp_path / "runs"
    env = flower_env(home)

    def flwr_run(run_config: str) -> subprocess.CompletedProcess[str]:
        command = [str(BIN / "flwr"), "run", ".", "--stream", "--run-config", run_config]
        return subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400
        )

    try:
        first = flwr_run(run_overrides(small_data, output, clients=2))
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        run_dir = only_run_dir(output)
        check_results(run_dir, clients=2)
        resume = f'experiment.resume=true experiment.run_dir="{run_dir}"'
        recorded = RunDirectory(run_dir).config_file.read_bytes()
        refused = flwr_run(
            f"{run_overrides(small_data, output, clients=2, rounds=3)} {resume} "
            'query.strategy="random"'
        )
        assert "resume: cannot change query.strategy: 'entropy' -> 'random'" in (
            refused.stdout + refused.stderr
        )
        assert RunDirectory(run_dir).config_file.read_bytes() == recorded
        assert [row["round"] for row in RunDirectory(run_dir).read_rounds()] == [0, 1, 2]
        resumed = flwr_run(f"{run_overrides(small_data, output, clients=2, rounds=3)} {resume}")
    finally:
        stop(processes_using(home))  # the local SuperLink `flwr run` left running
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert [row["round"] for row in RunDirectory(run_dir).read_rounds()] == [0, 1, 2, 3]
    assert len(RunDirectory(run_dir).read_ledger()) == 2 * (6 + 3 * 4)


def test_loopback_deployment(tmp_path: Path, small_data: Path) -> None:
    home, output = tmp_path / "flwr-home", tmp_path / "runs"
    home.mkdir()
    port = free_port()
    clients = 2
    link = [
        str(BIN / "flower-superlink"),
        "--insecure",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database",
        str(tmp_path / "state.db"),
        "--disable-runtime-dependency-installation",
    ]
    nodes = [
        [
            str(BIN / "flower-supernode"),
            "--insecure",
            "--superlink",
            f"127.0.0.1:{port}",
            "--port",
            str(free_port()),
            "--node-config",
            f"partition-id={k} num-partitions={clients}",
        ]
        for k in range(clients)
    ]
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    with started([(link, flower_env(home))], tmp_path / "logs-link"):
        wait_for_port(port)
        node_envs = [flower_env(tmp_path / f"node-home-{k}") for k in range(clients)]
        with started(list(zip(nodes, node_envs, strict=True)), tmp_path / "logs-nodes"):
            result = subprocess.run(
                [
                    str(BIN / "flwr"),
                    "run",
                    ".",
                    "loopback",
                    "--stream",
                    "--run-config",
                    run_overrides(small_data, output, clients),
                ],
                cwd=REPO,
                env=flower_env(home),
                capture_output=True,
                text=True,
                timeout=400,
            )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_results(only_run_dir(output), clients)
