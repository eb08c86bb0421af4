"""The run directory of DESIGN section 8: the one owner of its layout.

``<run_dir>/``: ``config.toml`` (the resolved config), ``partition.json``,
``rounds.jsonl`` (one row per round), ``ledger.csv`` (client, round, sample index, label
given), ``summary.json``, ``accuracy_vs_labels.png``, ``uploads/`` (with
``experiment.save_uploads``: every client's uploaded arrays per round) and
``checkpoints/`` (:mod:`fedal.checkpoint`). Every file name is spelled here and every
read and write of these files goes through :class:`RunDirectory`.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from fedal.config import ExperimentConfig, from_dict
from fedal.schema import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LEDGER_COLUMNS = ("client", "round", "index", "label")


@dataclass(frozen=True)
class RunDirectory:
    """Paths and file formats of one run directory."""

    path: Path

    @classmethod
    def create(cls, config: ExperimentConfig) -> RunDirectory:
        """A fresh directory ``<output_dir>/<name>-<strategy>-s<seed>-<timestamp>``."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        name = f"{config.experiment.name}-{config.query.strategy}-s{config.experiment.seed}"
        path = Path(config.experiment.output_dir).resolve() / f"{name}-{stamp}"
        path.mkdir(parents=True, exist_ok=False)
        return cls(path)

    @classmethod
    def existing(cls, path: str | Path) -> RunDirectory:
        """A directory a run wrote before (it has a config); a ConfigError otherwise."""
        run = cls(Path(path))
        if not run.config_file.is_file():
            raise ConfigError(f"{path}: not a fedal run directory (no {run.config_file.name})")
        return run

    # ---------------------------------------------------------------- paths
    @property
    def config_file(self) -> Path:
        return self.path / "config.toml"

    @property
    def partition_file(self) -> Path:
        return self.path / "partition.json"

    @property
    def rounds_file(self) -> Path:
        return self.path / "rounds.jsonl"

    @property
    def ledger_file(self) -> Path:
        return self.path / "ledger.csv"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def plot_file(self) -> Path:
        return self.path / "accuracy_vs_labels.png"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def server_checkpoint_file(self) -> Path:
        return self.checkpoint_dir / "server.npz"

    def client_checkpoint_file(self, client: int, server_round: int) -> Path:
        return self.checkpoint_dir / f"client-{client}-round-{server_round}.npz"

    def client_checkpoint_files(self, client: int) -> list[tuple[int, Path]]:
        """``(round, path)`` of ``client``'s checkpoint files, oldest first."""
        pattern = re.compile(rf"client-{client}-round-(\d+)\.npz")
        found = []
        for path in self.checkpoint_dir.glob(f"client-{client}-round-*.npz"):
            match = pattern.fullmatch(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def upload_file(self, server_round: int, client: int) -> Path:
        return self.path / "uploads" / f"round-{server_round}-client-{client}.npz"

    # ---------------------------------------------------------------- config
    def write_config(self, config: ExperimentConfig) -> None:
        """The resolved config, as a file to rerun as is (``resume`` off)."""
        self.path.mkdir(parents=True, exist_ok=True)
        resolved = config.replace("experiment", resume=False)
        self.config_file.write_text(tomli_w.dumps(resolved.to_dict()))

    def read_config_tables(self) -> dict[str, Any]:
        """The recorded config as nested tables (not validated)."""
        with self.config_file.open("rb") as handle:
            return tomllib.load(handle)

    def read_config(self) -> ExperimentConfig:
        """The recorded config, validated."""
        return from_dict(self.read_config_tables())

    # ---------------------------------------------------------------- results
    def write_partition(self, summary: Mapping[str, Any]) -> None:
        self.partition_file.write_text(json.dumps(summary, indent=2))

    def start_results(
        self, rows: Iterable[Mapping[str, Any]] = (), ledger: np.ndarray | None = None
    ) -> None:
        """(Re)write ``rounds.jsonl`` and ``ledger.csv`` with the given rows only."""
        self.rounds_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
        with self.ledger_file.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(LEDGER_COLUMNS)
            if ledger is not None:
                writer.writerows(ledger.tolist())

    def append_round(self, row: Mapping[str, Any]) -> None:
        with self.rounds_file.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    def append_ledger(self, rows: Iterable[tuple[int, int, int, int]]) -> None:
        with self.ledger_file.open("a", newline="") as handle:
            csv.writer(handle).writerows(rows)

    def read_rounds(self) -> list[dict[str, Any]]:
        lines = self.rounds_file.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def read_ledger(self) -> np.ndarray:
        """The ledger as an int64 array of rows (client, round, index, label)."""
        with self.ledger_file.open() as handle:
            rows = list(csv.reader(handle))[1:]
        return np.asarray(rows, dtype=np.int64).reshape(-1, 4)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        self.summary_file.write_text(json.dumps(summary, indent=2))

    def read_summary(self) -> dict[str, Any]:
        if not self.summary_file.is_file():
            raise ConfigError(f"{self.path}: no {self.summary_file.name} (unfinished run?)")
        return json.loads(self.summary_file.read_text())

    def save_upload(self, server_round: int, client: int, arrays: Mapping[str, np.ndarray]) -> None:
        """What left ``client`` in ``server_round`` (an audit of every upload)."""
        target = self.upload_file(server_round, client)
        target.parent.mkdir(parents=True, exist_ok=True)
        np.savez(target, allow_pickle=False, **arrays)
