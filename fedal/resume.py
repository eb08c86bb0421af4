"""What may change when a run is resumed, checked on every path that resumes.

``fedal resume RUN_DIR`` and ``flwr run . --run-config 'experiment.resume=true
experiment.run_dir=RUN_DIR ...'`` both continue a recorded run; a resumed run must be the
same experiment, so only the number of rounds and the resources (client CPUs and GPUs,
the nodes that evaluate) may differ from the recorded ``config.toml`` (and the
bookkeeping fields that never affect results: where the run lives and the resume switch
itself). Anything else is refused with one line
before any file of the run directory is touched.
"""

from __future__ import annotations

from typing import Any

from fedal.config import ExperimentConfig
from fedal.rundir import RunDirectory
from fedal.schema import ConfigError

# where the work runs; on the CPU client_cpus also sets torch's threads per client,
# which changes the last bits of the weights (README, "Determinism")
RESOURCES = frozenset(
    {"federation.client_cpus", "federation.client_gpus", "federation.evaluation_shards"}
)
RESUMABLE_CHANGES = RESOURCES | {"federation.rounds"}
BOOKKEEPING = frozenset({"experiment.resume", "experiment.run_dir", "experiment.output_dir"})


def _fields(config: ExperimentConfig) -> dict[str, Any]:
    return {
        f"{section}.{name}": value
        for section, values in config.to_dict().items()
        for name, value in values.items()
    }


def changed_settings(
    recorded: ExperimentConfig, requested: ExperimentConfig, allowed: frozenset[str]
) -> str:
    """The settings (``section.key``) outside ``allowed`` whose values differ, as
    ``"key: recorded -> requested, ..."``; empty when there are none."""
    before, after = _fields(recorded), _fields(requested)
    changed = sorted(key for key in before if before[key] != after[key] and key not in allowed)
    return ", ".join(f"{key}: {before[key]!r} -> {after[key]!r}" for key in changed)


def check_resume(recorded: ExperimentConfig, requested: ExperimentConfig) -> None:
    """Refuse a resume that changes anything but rounds and resources."""
    detail = changed_settings(recorded, requested, RESUMABLE_CHANGES | BOOKKEEPING)
    if detail:
        raise ConfigError(
            f"resume: cannot change {detail} of a recorded run; "
            f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change"
        )


def check_results(run: RunDirectory, checkpoint_round: int, ledger_rows: int) -> None:
    """The results files hold everything the checkpoint counts (rounds 0..its round and
    its ledger rows); rows after it are dropped on resume. Missing rows cannot be
    rebuilt from the checkpoint, so the resume is refused with one line."""
    recorded = {row["round"] for row in run.read_rounds()}
    missing = sorted(set(range(checkpoint_round + 1)) - recorded)
    if missing:
        raise ConfigError(
            f"resume: {run.rounds_file} lacks round(s) {missing} of the checkpoint (after "
            f"round {checkpoint_round}); the run cannot be continued, start a new one"
        )
    held = len(run.read_ledger())
    if held < ledger_rows:
        raise ConfigError(
            f"resume: {run.ledger_file} holds {held} rows, the checkpoint counts "
            f"{ledger_rows}; the run cannot be continued, start a new one"
        )
