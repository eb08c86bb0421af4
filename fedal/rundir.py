"""The run directory of DESIGN section 8: the one owner of its layout.

``<run_dir>/``: ``config.toml`` (the resolved config), ``partition.json``,
``node-<client>.json`` (with node folders: what each node holds and protects),
``rounds.jsonl`` (one row per round), ``ledger.csv`` (client, round, sample index, label
given), ``summary.json``, ``accuracy_vs_labels.png``, ``uploads/`` (with
``experiment.save_uploads``: every client's uploaded arrays per round) and
``checkpoints/`` (:mod:`fedal.checkpoint`). Every file name is spelled here and every
read and write of these files goes through :class:`RunDirectory`.

A run directory holds one run, written by one process at a time: :meth:`RunDirectory.lock`
takes an exclusive ``flock`` on ``.lock`` for the run's lifetime, and every results file
is replaced atomically (written to a temporary name, then renamed), so a crash leaves
either the old or the new file, never half of one.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
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
CLIENT_ROUND_FILE = re.compile(r"round-(\d+)\.npz")
"""A client checkpoint's name in its folder (:meth:`RunDirectory.client_checkpoint_file`)."""


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
        try:
            path.mkdir(parents=True, exist_ok=False)
        except OSError as error:
            raise ConfigError(
                f"experiment.output_dir: cannot create {path} ({error.strerror}); "
                "choose a writable directory"
            ) from None
        return cls(path)

    @classmethod
    def existing(cls, path: str | Path) -> RunDirectory:
        """A directory a run wrote before (it has a config); a ConfigError otherwise."""
        run = cls(Path(path))
        if not run.config_file.is_file():
            raise ConfigError(f"{path}: not a fedal run directory (no {run.config_file.name})")
        return run

    # ---------------------------------------------------------------- ownership
    @property
    def holds_run(self) -> bool:
        """Whether a run was started here (its config is recorded)."""
        return self.config_file.is_file()

    def refuse_if_taken(self) -> None:
        """A new run may not overwrite a recorded one (one line says what to do)."""
        if self.holds_run:
            raise ConfigError(
                f"{self.path} already holds a run; continue it with `fedal resume {self.path}` "
                "or choose a new run directory"
            )

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory for one process; a second one is refused with one line."""
        self.path.mkdir(parents=True, exist_ok=True)
        with (self.path / ".lock").open("a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                raise ConfigError(
                    f"{self.path} is in use by another fedal process (pid {holder}); wait for "
                    "it to finish or choose another run directory"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def check_free(self) -> None:
        """Refuse now (before any work) when another process holds the directory."""
        with self.lock():
            pass

    # ---------------------------------------------------------------- paths
    @property
    def config_file(self) -> Path:
        return self.path / "config.toml"

    @property
    def partition_file(self) -> Path:
        return self.path / "partition.json"

    def node_file(self, client: int) -> Path:
        return self.path / f"node-{client}.json"

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

    def client_checkpoint_dir(self, client: int) -> Path:
        """Client ``client``'s own folder of checkpoint files: finding a client's files
        lists only its folder, so it costs the same with 10 clients as with 10,000."""
        return self.checkpoint_dir / f"client-{client}"

    def client_checkpoint_file(self, client: int, server_round: int) -> Path:
        return self.client_checkpoint_dir(client) / f"round-{server_round}.npz"

    @contextmanager
    def client_lock(self, client: int) -> Iterator[None]:
        """Hold client ``client``'s state for one round. In a simulation a round whose reply
        came too late may still run when the client's next task starts on another worker;
        the next round waits here until the late one has saved its state."""
        folder = self.client_checkpoint_dir(client)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def client_checkpoint_files(self, client: int) -> list[tuple[int, Path]]:
        """``(round, path)`` of ``client``'s checkpoint files, oldest first."""
        found = []
        for path in self.client_checkpoint_dir(client).glob("round-*.npz"):
            match = CLIENT_ROUND_FILE.fullmatch(path.name)
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
        _replace(self.config_file, tomli_w.dumps(resolved.to_dict()))

    def read_config_tables(self) -> dict[str, Any]:
        """The recorded config as nested tables (not validated)."""
        with self.config_file.open("rb") as handle:
            return tomllib.load(handle)

    def read_config(self) -> ExperimentConfig:
        """The recorded config, validated."""
        return from_dict(self.read_config_tables())

    # ---------------------------------------------------------------- results
    def write_partition(self, summary: Mapping[str, Any]) -> None:
        _replace(self.partition_file, json.dumps(summary, indent=2))

    def write_node(self, client: int, summary: Mapping[str, Any]) -> None:
        """What a node on its own folder holds and protects (written by that client)."""
        self.path.mkdir(parents=True, exist_ok=True)
        _replace(self.node_file(client), json.dumps(summary, indent=2))

    def read_node(self, client: int) -> dict[str, Any]:
        return dict(json.loads(self.node_file(client).read_text()))

    def start_results(
        self, rows: Iterable[Mapping[str, Any]] = (), ledger: np.ndarray | None = None
    ) -> None:
        """(Re)write ``rounds.jsonl`` and ``ledger.csv`` with the given rows only."""
        _replace(self.rounds_file, "".join(json.dumps(row) + "\n" for row in rows))
        rows_text = _csv_text([LEDGER_COLUMNS, *([] if ledger is None else ledger.tolist())])
        _replace(self.ledger_file, rows_text)

    def append_round(self, row: Mapping[str, Any]) -> None:
        _replace(self.rounds_file, self.rounds_file.read_text() + json.dumps(row) + "\n")

    def append_ledger(self, rows: Iterable[tuple[int, int, int, int]]) -> None:
        _replace(self.ledger_file, self.ledger_file.read_text() + _csv_text(rows))

    def read_rounds(self) -> list[dict[str, Any]]:
        rows = []
        for number, line in enumerate(self.rounds_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise ConfigError(f"{self.rounds_file}: line {number} is damaged") from None
        return rows

    def read_ledger(self) -> np.ndarray:
        """The ledger as an int64 array of rows (client, round, index, label)."""
        with self.ledger_file.open() as handle:
            rows = list(csv.reader(handle))[1:]
        return np.asarray(rows, dtype=np.int64).reshape(-1, 4)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        _replace(self.summary_file, json.dumps(summary, indent=2))

    def read_summary(self) -> dict[str, Any]:
        if not self.summary_file.is_file():
            raise ConfigError(f"{self.path}: no {self.summary_file.name} (unfinished run?)")
        return json.loads(self.summary_file.read_text())

    def save_upload(self, server_round: int, client: int, arrays: Mapping[str, np.ndarray]) -> None:
        """What left ``client`` in ``server_round`` (an audit of every upload)."""
        target = self.upload_file(server_round, client)
        target.parent.mkdir(parents=True, exist_ok=True)
        np.savez(target, allow_pickle=False, **arrays)


def _csv_text(rows: Iterable[Iterable[Any]]) -> str:
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder, rename)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", newline="") as handle:
            handle.write(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
