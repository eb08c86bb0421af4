"""fedal sweep's study grid (variants, a directory it continues) and the table's pairing
of each group with its reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from engine_support import client_report, tiny_overrides, write_small_fashion_mnist

from fedal.app.sweep import Variant, summary_rows
from fedal.cli import main
from fedal.config import ConfigError, load_config
from fedal.results import RunRecorder
from fedal.rundir import RunDirectory


def test_a_variant_is_a_name_and_its_overrides() -> None:
    variant = Variant.parse("no_in_class: query.options.in_class=false 'experiment.tag=\"a b\"'")
    overrides = ("query.options.in_class=false", 'experiment.tag="a b"')
    assert variant == Variant("no_in_class", overrides)
    for bad in ("query.options.peers=1", "peers 1: query.options.peers=1", "peers1:"):
        with pytest.raises(ConfigError, match="NAME: KEY=VALUE"):
            Variant.parse(bad)


SETTINGS = {"iid": [], "skew": ['data.partition="dirichlet"'], "iid-peers1": ["data.alpha=0.3"]}


def recorded(run_dir: Path, name: str, strategy: str, seed: int, final: float) -> Path:
    """A finished two-round run of ``strategy`` in experiment ``name`` (which has its
    own settings, as a variant does) ending at ``final``."""
    settings = [*SETTINGS[name], f'experiment.name="{name}"', f"experiment.seed={seed}"]
    config = load_config(None, settings, strategy)
    recorder = RunRecorder.start(RunDirectory(run_dir), config)
    for server_round, accuracy in ((0, 0.1), (1, 0.3), (2, final)):
        reports = [client_report(0, 10, 10)] if server_round else []
        recorder.record_round(server_round, accuracy, 1.0, reports, elapsed=1.0)
    recorder.finish()
    return run_dir


def test_groups_pair_within_their_experiment_or_with_the_only_match(tmp_path: Path) -> None:
    """Two experiments of random and psl (each psl pairs with its own experiment's
    random), and an ablation of psl paired with its base run by EXPERIMENT/STRATEGY."""
    finals = {("iid", "random"): 0.5, ("iid", "psl"): 0.6, ("skew", "random"): 0.4}
    finals |= {("skew", "psl"): 0.3, ("iid-peers1", "psl"): 0.65}
    runs = [
        recorded(tmp_path / f"{name}-{strategy}-{seed}", name, strategy, seed, final + seed / 100)
        for (name, strategy), final in finals.items()
        for seed in range(3)
    ]

    def differences(reference: str) -> dict[tuple[str, str], float | None]:
        return {
            (row["name"], row["strategy"]): row["vs_final_accuracy"]
            and round(row["vs_final_accuracy"].mean, 6)
            for row in summary_rows(runs, reference)
        }

    by_random = differences("random")
    assert by_random[("iid", "psl")] == 0.1 and by_random[("skew", "psl")] == -0.1
    assert by_random[("iid", "random")] is None
    assert by_random[("iid-peers1", "psl")] is None  # two random groups, neither its own
    by_base = differences("iid/psl")
    assert by_base[("iid-peers1", "psl")] == 0.05 and by_base[("skew", "psl")] == -0.3
    assert by_base[("iid", "psl")] is None


def test_sweep_into_a_directory_runs_variants_and_continues_a_stopped_grid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seed 0 of random as written and with a variant; then, as if the grid had stopped
    during the variant's run, the same command runs that one again (the same ledger, the
    same seed) and keeps the finished one. Other settings are refused, not mixed in."""
    data_dir = write_small_fashion_mnist(tmp_path / "data")
    into = tmp_path / "grid"
    sets = [arg for value in tiny_overrides(data_dir, tmp_path) for arg in ("--set", value)]
    command = [
        "sweep", "experiments/configs/demo.toml", "--strategies", "random", "--seeds", "0",
        "--into", str(into), "--variant", "long: training.epochs=2", *sets,
    ]  # fmt: skip
    assert main(command) == 0
    first = capsys.readouterr().out
    as_written, variant = RunDirectory(into / "random-s0"), RunDirectory(into / "long-random-s0")
    assert variant.read_summary()["name"] == f"{as_written.read_summary()['name']}-long"
    assert variant.read_config().training.epochs == 2
    assert "| long" not in first and "-long | random |" in first
    ledger = variant.read_ledger()
    kept = as_written.summary_file.stat().st_mtime_ns
    variant.summary_file.unlink()

    assert main(command) == 0
    second = capsys.readouterr().out
    assert f"kept {as_written.path}" in second
    assert f"starting over the unfinished run in {variant.path}" in second
    assert as_written.summary_file.stat().st_mtime_ns == kept
    assert np.array_equal(variant.read_ledger(), ledger)

    changed = [*command, "--set", "training.lr=0.2"]
    assert main(changed) == 2
    assert "training.lr: 0.01 -> 0.2" in capsys.readouterr().err

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "random-s0").mkdir(parents=True)
    (elsewhere / "random-s0" / "todo.txt").write_text("mine")
    assert main([*command[:7], str(elsewhere), *command[8:]]) == 2
    assert "holds files but no fedal run" in capsys.readouterr().err
    assert (elsewhere / "random-s0" / "todo.txt").read_text() == "mine"
