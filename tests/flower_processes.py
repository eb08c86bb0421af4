"""Start and stop Flower's own processes for tests: by PID, with a private FLWR_HOME."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def flower_env(home: Path) -> dict[str, str]:
    """Environment for flwr commands: private home, offline, quiet, no telemetry."""
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def stop(pids: list[int]) -> None:
    """Terminate the given processes and their descendants (by PID), then kill stragglers."""
    processes = []
    for pid in pids:
        try:
            parent = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        processes.extend([*parent.children(recursive=True), parent])
    for process in processes:
        with suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=10)
    for process in alive:
        with suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


def processes_using(path: Path) -> list[int]:
    """PIDs of processes whose command line names ``path`` (our private temp dirs only)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info.get("cmdline") or [])
        if str(path) in cmdline:
            found.append(int(process.info["pid"]))
    return found


@contextmanager
def started(commands: list[tuple[list[str], dict[str, str]]], logs: Path) -> Iterator[list[int]]:
    """Start long-running (command, environment) pairs, logging under ``logs``; stop all on exit.
    Nothing waits here: a SuperNode retries until its SuperLink listens, and fedal's
    ServerApp waits for the nodes (``federation.connect_timeout``)."""
    logs.mkdir(parents=True, exist_ok=True)
    pids: list[int] = []
    try:
        for number, (command, env) in enumerate(commands):
            handle = (logs / f"process-{number}.log").open("w")
            process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
            pids.append(process.pid)
        yield pids
    finally:
        stop(pids)


def wait_for_port(port: int, timeout: float = 60) -> None:
    """Block until something listens on loopback ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")
