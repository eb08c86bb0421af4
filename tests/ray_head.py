"""One Ray head for the whole test session, started as a user would: ``ray start --head``.

Every simulation in the suite joins it through ``RAY_ADDRESS`` (Ray's own way to name a
running cluster), so the suite pays for Ray's start-up once instead of per federation,
and the ``--ray-address`` path of ``fedal run`` is the one the suite exercises. The head
and everything it started are stopped by PID (its processes are found by the session's
private temporary directory), never by name.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flower_processes import BIN, free_port, processes_using, stop, wait_for_port


@dataclass(frozen=True)
class RayHead:
    """A running head: its address and the temporary directory it logs under."""

    address: str
    temp_dir: Path

    def worker_logs(self) -> int:
        """How many worker processes this head has started so far (one log each)."""
        return len(list(self.temp_dir.glob("session_*/logs/worker-*.out")))


@contextmanager
def ray_head(num_cpus: int = 2) -> Iterator[RayHead]:
    """A Ray head on loopback (``127.0.0.1:PORT``)."""
    # a short path: Ray's unix sockets live under it (about 100 characters allowed)
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    port = free_port()
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    log = (temp_dir / "ray-start.log").open("w")
    head = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
        time.sleep(1)  # the raylet registers with the GCS right after it listens
        yield RayHead(f"127.0.0.1:{port}", temp_dir)
    finally:
        stop([head.pid, *processes_using(temp_dir)])
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
