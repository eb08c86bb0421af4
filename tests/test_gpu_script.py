"""``scripts/bench_gpu.sh``, the one prepared run that measures the CUDA targets, run dry
on this machine: bash runs the real script with ``python3`` and ``nvidia-smi`` standing in
on ``PATH``. The stand-in for ``python3`` parses each command with fedal's own parser and
validates it as the command would before it measures anything (the sampling bench's
settings, the federation bench's config and preflight against the data), then writes
the JSON file the command names. Each step of the script must exit 0, so a renamed flag,
an unknown strategy or model, or an override the config rejects fails here, on a CPU,
before a lent GPU's few minutes are spent on it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from fedal.datasets import DEBIAN_FASHION_MNIST_DIR

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench_gpu.sh"

CHECK_COMMAND = """
import json, sys
from pathlib import Path
from fedal.cli import build_parser
from fedal.app.arguments import config_from_args
from fedal.app.bench.cli import _sampling_settings
from fedal.app.preflight import preflight

if sys.argv[1:3] != ["-m", "fedal.cli"]:
    sys.exit(f"not a fedal command: {sys.argv[1:]}")
args = build_parser().parse_args(sys.argv[3:])
if args.bench == "sampling":
    settings = _sampling_settings(args)
    checked = {"kind": "sampling", "device": settings.device, "bf16": settings.bf16,
               "strategies": list(settings.strategies), "models": list(settings.models)}
else:
    config = config_from_args(args)
    preflight(config)
    fed = config.federation
    checked = {"kind": "federation", "clients": config.data.num_clients,
               "client_gpus": fed.client_gpus, "packs": fed.packs}
Path(args.output).write_text(json.dumps(checked))
"""


def stand_in(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_every_step_of_the_gpu_script_is_a_valid_command(tmp_path: Path) -> None:
    bin_dir, out = tmp_path / "bin", tmp_path / "out"
    bin_dir.mkdir()
    checker = tmp_path / "check_command.py"
    checker.write_text(CHECK_COMMAND)
    stand_in(bin_dir, "python3", f'exec "{sys.executable}" "{checker}" "$@"')
    stand_in(bin_dir, "nvidia-smi", "echo 'no GPU here: a stand-in'")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "OUT": str(out),
        "PYTHONPATH": str(REPO),
    }
    finished = subprocess.run(
        ["bash", str(SCRIPT), str(DEBIAN_FASHION_MNIST_DIR)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr
    steps = (out / "steps.txt").read_text().splitlines()
    logs = {path.name: path.read_text() for path in out.glob("*.log")}
    assert len(steps) == 6, steps
    assert all(": exit 0 after" in step for step in steps), (steps, logs)

    checked = {path.name: json.loads(path.read_text()) for path in out.glob("*.json")}
    sampling = [c for c in checked.values() if c["kind"] == "sampling"]
    federation = [c for c in checked.values() if c["kind"] == "federation"]
    assert {c["device"] for c in sampling} == {"cuda"}
    assert {c["bf16"] for c in sampling} == {"cuda", "off"}
    assert {s for c in sampling for s in c["strategies"]} == {
        "entropy",
        "badge",
        "kmeans",
        "coreset",
        "lhd",
    }
    assert sorted(c["packs"] for c in federation) == [0, 10]
    assert {(c["clients"], c["client_gpus"]) for c in federation} == {(100, 0.1)}
