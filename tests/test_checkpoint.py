"""On-disk checkpoints: atomic files, the two newest per client, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedal.checkpoint import (
    ServerCheckpoint,
    adopt_flat_client_checkpoints,
    discard_client_checkpoints_after,
    load_client_checkpoint,
    load_server_checkpoint,
    newest_client_round,
    save_client_checkpoint,
    save_server_checkpoint,
)
from fedal.rundir import RunDirectory


def test_server_checkpoint_round_trips_model_momentum_and_counts(tmp_path: Path) -> None:
    arrays = {"conv.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "bn.n": np.array(7)}
    momentum = [np.ones(3, dtype=np.float32), np.zeros((2, 2), dtype=np.float32)]
    save_server_checkpoint(RunDirectory(tmp_path), ServerCheckpoint(4, 123, arrays, momentum))

    loaded = load_server_checkpoint(RunDirectory(tmp_path))
    assert (loaded.round, loaded.ledger_rows) == (4, 123)
    assert loaded.arrays.keys() == arrays.keys()
    for name, value in arrays.items():
        assert np.array_equal(loaded.arrays[name], value)
        assert loaded.arrays[name].dtype == value.dtype
    assert [m.tolist() for m in loaded.momentum] == [m.tolist() for m in momentum]
    assert [p.name for p in RunDirectory(tmp_path).checkpoint_dir.iterdir()] == ["server.npz"]


def test_server_checkpoint_round_trips_the_adaptive_optimizer_moments(tmp_path: Path) -> None:
    arrays = {"conv.weight": np.zeros((2, 3), dtype=np.float32)}
    moments = {
        "m_t": {"conv.weight": np.full((2, 3), 0.5), "bn.n": np.array(0.25)},
        "v_t": {"conv.weight": np.full((2, 3), 2.0), "bn.n": np.array(4.0)},
    }
    checkpoint = ServerCheckpoint(3, 7, arrays, [], optimizer=moments)
    save_server_checkpoint(RunDirectory(tmp_path), checkpoint)

    loaded = load_server_checkpoint(RunDirectory(tmp_path))
    assert loaded.momentum == []
    assert loaded.optimizer.keys() == {"m_t", "v_t"}
    for moment, values in moments.items():
        assert loaded.optimizer[moment].keys() == values.keys()
        for name, value in values.items():
            assert np.array_equal(loaded.optimizer[moment][name], value)
            assert loaded.optimizer[moment][name].dtype == value.dtype
    assert loaded.arrays.keys() == arrays.keys()


def test_server_checkpoint_without_optimizer_state_loads_none(tmp_path: Path) -> None:
    save_server_checkpoint(RunDirectory(tmp_path), ServerCheckpoint(1, 0, {}, []))
    assert load_server_checkpoint(RunDirectory(tmp_path)).optimizer == {}


def test_missing_server_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        load_server_checkpoint(RunDirectory(tmp_path))


def test_client_checkpoints_keep_the_two_newest_and_load_at_or_before_a_round(
    tmp_path: Path,
) -> None:
    for server_round in (1, 3, 4):
        state = {"fedal.pool": {"labelled": np.full(2, server_round)}, "fedal.strategy": {}}
        save_client_checkpoint(RunDirectory(tmp_path), 2, server_round, state)
    save_client_checkpoint(RunDirectory(tmp_path), 12, 9, {"fedal.pool": {"labelled": np.zeros(1)}})

    checkpoints = RunDirectory(tmp_path).checkpoint_dir
    names = sorted(str(p.relative_to(checkpoints)) for p in checkpoints.rglob("*.npz"))
    assert names == ["client-12/round-9.npz", "client-2/round-3.npz", "client-2/round-4.npz"]
    assert load_client_checkpoint(RunDirectory(tmp_path), 2, 3)["fedal.pool"][
        "labelled"
    ].tolist() == [3, 3]
    assert load_client_checkpoint(RunDirectory(tmp_path), 2, 10)["fedal.pool"][
        "labelled"
    ].tolist() == [4, 4]
    assert load_client_checkpoint(RunDirectory(tmp_path), 2, 2) is None
    assert load_client_checkpoint(RunDirectory(tmp_path), 1, 10) is None


def test_a_resume_discards_client_files_of_rounds_the_server_never_recorded(
    tmp_path: Path,
) -> None:
    run = RunDirectory(tmp_path)
    for client, server_round in ((0, 2), (0, 3), (1, 1), (1, 4), (12, 3)):
        save_client_checkpoint(run, client, server_round, {"fedal.pool": {"l": np.zeros(1)}})

    discard_client_checkpoints_after(run, 2)

    names = sorted(
        str(p.relative_to(run.checkpoint_dir)) for p in run.checkpoint_dir.rglob("*.npz")
    )
    assert names == ["client-0/round-2.npz", "client-1/round-1.npz"]
    assert newest_client_round(run, 0, 10) == 2
    assert newest_client_round(run, 1, 0) is None


def test_client_files_of_the_flat_layout_move_into_their_folders(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)
    for client, server_round in ((0, 2), (0, 3), (12, 1)):
        save_client_checkpoint(run, client, server_round, {"fedal.pool": {"l": np.full(1, client)}})
        path = run.client_checkpoint_file(client, server_round)
        path.rename(run.checkpoint_dir / f"client-{client}-round-{server_round}.npz")
    assert newest_client_round(run, 0, 10) is None  # not found where they were

    adopt_flat_client_checkpoints(run)

    assert not list(run.checkpoint_dir.glob("*.npz"))
    assert newest_client_round(run, 0, 10) == 3 and newest_client_round(run, 12, 10) == 1
    assert load_client_checkpoint(run, 12, 1)["fedal.pool"]["l"].tolist() == [12]
