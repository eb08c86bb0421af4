"""On-disk checkpoints for resuming a run (DESIGN section 3: "plus an on-disk checkpoint").

In the run directory's ``checkpoints/`` (file names: :class:`fedal.rundir.RunDirectory`):

- ``server.npz``: the global task-model arrays after the last recorded round, that round,
  how many ledger rows the run directory held then, and the server optimizer's state
  (FedAvgM's momentum, FedAdam / FedYogi / FedAdagrad's moments, SCAFFOLD's control
  variate c as section ``optimizer.control``). Rewritten after every round.
- ``client-<k>/round-<r>.npz``: client ``k``'s state after it trained in round ``r``
  (pool, strategy state, SCAFFOLD's control variate c_i, bookkeeping), as named sections
  of arrays, in a folder per client (beside its ``lock``), so that finding a client's
  files does not list every client's. The two newest per
  client are kept: the server records round ``r - 1`` before any client trains in round
  ``r``, so a resume from the server's round always finds a client file at or before it.
  Runs written before the folders (``client-<k>-round-<r>.npz``) are moved into them when
  they resume (:func:`adopt_flat_client_checkpoints`).

Every file is written to a temporary name and renamed, so a crash never leaves half a
checkpoint. Arrays are stored as ``<section>/<name>`` entries of one ``.npz``.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedal.rundir import CLIENT_ROUND_FILE, RunDirectory
from fedal.schema import ConfigError

KEPT_PER_CLIENT = 2
ROUND_KEY = "meta/round"
LEDGER_ROWS_KEY = "meta/ledger_rows"
MODEL_SECTION = "model"
MOMENTUM_SECTION = "momentum"
OPTIMIZER_PREFIX = "optimizer."  # sections optimizer.<moment>, e.g. optimizer.m_t

Sections = dict[str, dict[str, np.ndarray]]


@dataclass(frozen=True)
class ServerCheckpoint:
    """What the server needs to continue: the model after ``round`` and the ledger size."""

    round: int
    ledger_rows: int
    arrays: dict[str, np.ndarray]
    momentum: list[np.ndarray]  # FedAvgM's server momentum (empty otherwise)
    # FedOpt's moment estimates by name (m_t, v_t) or SCAFFOLD's control variate
    # (control), each by array name (empty otherwise)
    optimizer: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def save_server_checkpoint(run: RunDirectory, checkpoint: ServerCheckpoint) -> None:
    """Replace ``server.npz`` with ``checkpoint``."""
    momentum = {str(position): array for position, array in enumerate(checkpoint.momentum)}
    optimizer = {
        f"{OPTIMIZER_PREFIX}{name}": arrays for name, arrays in checkpoint.optimizer.items()
    }
    entries = _flatten({MODEL_SECTION: checkpoint.arrays, MOMENTUM_SECTION: momentum, **optimizer})
    entries[ROUND_KEY] = np.asarray(checkpoint.round)
    entries[LEDGER_ROWS_KEY] = np.asarray(checkpoint.ledger_rows)
    _write_atomically(run.server_checkpoint_file, entries)


def load_server_checkpoint(run: RunDirectory) -> ServerCheckpoint:
    """The server checkpoint of ``run``; a clear error when there is none."""
    path = run.server_checkpoint_file
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: {run.path} has no checkpoint to resume from (was it "
            "run with experiment.checkpoint = false, or stopped before its first round?)"
        )
    entries = _read(path)
    round_, ledger_rows = int(entries.pop(ROUND_KEY)), int(entries.pop(LEDGER_ROWS_KEY))
    sections = _unflatten(entries)
    momentum = sections.get(MOMENTUM_SECTION, {})
    return ServerCheckpoint(
        round=round_,
        ledger_rows=ledger_rows,
        arrays=sections.get(MODEL_SECTION, {}),
        momentum=[momentum[str(position)] for position in range(len(momentum))],
        optimizer={
            section.removeprefix(OPTIMIZER_PREFIX): arrays
            for section, arrays in sections.items()
            if section.startswith(OPTIMIZER_PREFIX)
        },
    )


def save_client_checkpoint(
    run: RunDirectory, client: int, server_round: int, state: Sections
) -> None:
    """Write client ``client``'s state after ``server_round``; prune older files."""
    _write_atomically(run.client_checkpoint_file(client, server_round), _flatten(state))
    for _, stale in run.client_checkpoint_files(client)[:-KEPT_PER_CLIENT]:
        stale.unlink(missing_ok=True)


def newest_client_round(run: RunDirectory, client: int, through_round: int) -> int | None:
    """The last round at or before ``through_round`` whose state client ``client`` saved
    (None if it had not trained by then)."""
    rounds = [r for r, _ in run.client_checkpoint_files(client) if r <= through_round]
    return rounds[-1] if rounds else None


def load_client_checkpoint(run: RunDirectory, client: int, through_round: int) -> Sections | None:
    """Client ``client``'s newest state saved at or before ``through_round`` (None if the
    client had not trained by then)."""
    files = [path for r, path in run.client_checkpoint_files(client) if r <= through_round]
    return _unflatten(_read(files[-1])) if files else None


def discard_client_checkpoints_after(run: RunDirectory, server_round: int) -> None:
    """Delete every client file of a round after ``server_round``: when a run resumes
    from its server checkpoint of ``server_round``, later client files belong to the
    interrupted run (rounds the results never recorded) and must not be restored."""
    for path in run.checkpoint_dir.glob("client-*/round-*.npz"):
        match = CLIENT_ROUND_FILE.fullmatch(path.name)
        if match and int(match.group(1)) > server_round:
            path.unlink()


FLAT_CLIENT_FILE = re.compile(r"client-(\d+)-round-(\d+)\.npz")
"""A client file as runs before the per-client folders named it, in ``checkpoints/``."""


def adopt_flat_client_checkpoints(run: RunDirectory) -> None:
    """Move client files of the earlier flat layout (``checkpoints/client-<k>-round-<r>.npz``)
    into the client's folder (:meth:`RunDirectory.client_checkpoint_file`), so a run
    written before the folders resumes; files are renamed, never rewritten."""
    for path in run.checkpoint_dir.glob("client-*-round-*.npz"):
        match = FLAT_CLIENT_FILE.fullmatch(path.name)
        if match:
            target = run.client_checkpoint_file(int(match.group(1)), int(match.group(2)))
            target.parent.mkdir(exist_ok=True)
            path.rename(target)


def _flatten(sections: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {
        f"{section}/{name}": np.asarray(value)
        for section, arrays in sections.items()
        for name, value in arrays.items()
    }


def _unflatten(entries: Mapping[str, np.ndarray]) -> Sections:
    sections: Sections = {}
    for key, value in entries.items():
        section, _, name = key.partition("/")
        sections.setdefault(section, {})[name] = value
    return sections


def _read(path: Path) -> dict[str, np.ndarray]:
    """A checkpoint's arrays; a damaged file is a one-line ConfigError."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ConfigError(
            f"{path}: damaged checkpoint ({error}); the run cannot be resumed from it"
        ) from None


def _write_atomically(path: Path, entries: Mapping[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as handle:
            np.savez(handle, allow_pickle=False, **entries)
        os.replace(temporary, path)
    finally:  # a full disk leaves no temporary file behind
        temporary.unlink(missing_ok=True)
