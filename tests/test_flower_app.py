"""The repository as a Flower App: `flwr run .` (simulation) and a loopback deployment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

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
from flower_security import write_node_key, write_tls_files

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

    def flattened(tables: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        """Dotted keys, as Flower flattens nested run-config tables."""
        flat: dict[str, Any] = {}
        for key, value in tables.items():
            if isinstance(value, dict):
                flat.update(flattened(value, f"{prefix}{key}."))
            else:
                flat[f"{prefix}{key}"] = value
        return flat

    flat = flattened(app_config)
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
            'query.private_data="candidates"'  # the privacy mode may not change mid-run
        )
        assert "resume: cannot change query.private_data: 'all' -> 'candidates'" in (
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


def loopback_run(
    tmp_path: Path,
    data: Path,
    clients: int,
    started_nodes: int,
    extra: str = "",
    tls: bool = False,
    auth: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`flwr run` against a loopback SuperLink with ``started_nodes`` of ``clients``
    SuperNodes, optionally over TLS (a CA made by the test) and with SuperNode
    authentication (each node's key registered with `flwr supernode register`); every
    process is stopped by PID afterwards."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    port = free_port()
    link = [
        str(BIN / "flower-superlink"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database",
        str(tmp_path / "state.db"),
        "--disable-runtime-dependency-installation",
    ]
    node_security = [["--insecure"] for _ in range(started_nodes)]
    connection = "insecure = true"
    if tls:
        files = write_tls_files(tmp_path / "tls")
        link += ["--ssl-ca-certfile", str(files.ca_certificate)]
        link += ["--ssl-certfile", str(files.server_certificate)]
        link += ["--ssl-keyfile", str(files.server_key)]
        node_security = [
            ["--root-certificates", str(files.ca_certificate)] for _ in range(started_nodes)
        ]
        connection = f'root-certificates = "{files.ca_certificate}"'
    else:
        link.append("--insecure")
    keys = [write_node_key(tmp_path / "keys", f"node-{k}") for k in range(started_nodes)]
    if auth:
        link.append("--enable-supernode-auth")
        for k, (private, _) in enumerate(keys):
            node_security[k] += ["--auth-supernode-private-key", str(private)]
    nodes = [
        [
            str(BIN / "flower-supernode"),
            *node_security[k],
            "--superlink",
            f"127.0.0.1:{port}",
            "--port",
            str(free_port()),
            "--node-config",
            f"partition-id={k} num-partitions={clients}",
        ]
        for k in range(started_nodes)
    ]
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
        f'address = "127.0.0.1:{port}"\n{connection}\n'
    )
    run_config = f"{run_overrides(data, tmp_path / 'runs', clients)} {extra}"
    with started([(link, flower_env(home))], tmp_path / "logs-link"):
        wait_for_port(port)
        if auth:
            for _, public in keys:
                register = [str(BIN / "flwr"), "supernode", "register", str(public), "loopback"]
                registered = subprocess.run(
                    register, env=flower_env(home), capture_output=True, text=True, timeout=60
                )
                assert registered.returncode == 0, registered.stdout + registered.stderr
        node_envs = [flower_env(tmp_path / f"node-home-{k}") for k in range(started_nodes)]
        with started(list(zip(nodes, node_envs, strict=True)), tmp_path / "logs-nodes"):
            command = [str(BIN / "flwr"), "run", ".", "loopback", "--stream"]
            return subprocess.run(
                [*command, "--run-config", run_config],
                cwd=REPO,
                env=flower_env(home),
                capture_output=True,
                text=True,
                timeout=400,
            )


# TLS without node authentication is the transport of the end-to-end test on node folders
# (tests/test_real_devices.py); here the benchmark partitions run without TLS and with
# TLS plus SuperNode authentication.
@pytest.mark.parametrize(("tls", "auth"), [(False, False), (True, True)], ids=["plain", "tls+auth"])
def test_loopback_deployment(tmp_path: Path, small_data: Path, tls: bool, auth: bool) -> None:
    result = loopback_run(tmp_path, small_data, clients=2, started_nodes=2, tls=tls, auth=auth)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_results(only_run_dir(tmp_path / "runs"), clients=2)


def test_a_supernode_that_never_connects_fails_the_run_with_one_line(
    tmp_path: Path, small_data: Path
) -> None:
    result = loopback_run(
        tmp_path, small_data, clients=2, started_nodes=1, extra="federation.connect_timeout=5"
    )
    output = result.stdout + result.stderr
    assert "only 1 of 2 nodes (data.num_clients" in output, output[-3000:]
    assert "federation.connect_timeout=5 s" in output
    assert not list((tmp_path / "runs").glob("*/rounds.jsonl"))  # no round ran
