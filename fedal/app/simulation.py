"""Run an experiment on Flower's Simulation Runtime with the Ray backend.

This calls the same engine entry point that ``flwr run`` uses for a local simulation
(``flwr.simulation.run_simulation._run_simulation``) with fedal's ServerApp and
ClientApp, in this process, so ``fedal run`` is synchronous, prints its own progress,
and needs no SuperLink. The public ``run_simulation`` wrapper is deprecated in flwr
1.41 and cannot pass a run config; the flwr pin (<1.42) guards this private entry.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from flwr.app import Context, RecordDict
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.telemetry import EventType

from fedal.config import ConfigError, ExperimentConfig, flatten


def backend_config(
    config: ExperimentConfig, ray_address: str | None, verbose: bool
) -> dict[str, Any]:
    """Ray backend settings: per-client CPUs / GPU fraction, quiet unless verbose."""
    init_args: dict[str, Any] = {
        "logging_level": "INFO" if verbose else "ERROR",
        "log_to_driver": verbose,
    }
    if ray_address:
        init_args["address"] = ray_address
    return {
        "client_resources": {
            "num_cpus": config.federation.client_cpus,
            "num_gpus": config.federation.client_gpus,
        },
        "init_args": init_args,
    }


def quiet_logging(verbose: bool) -> None:
    """Hide Flower's and Ray's chatter unless ``verbose``."""
    level = logging.DEBUG if verbose else logging.ERROR
    logging.getLogger("flwr").setLevel(level)
    if not verbose:
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def check_resources(config: ExperimentConfig, ray_address: str | None) -> None:
    """Each simulated client must fit on what Ray offers; Ray would otherwise never place
    it and Flower would wait for its reply forever. One line says what is available."""
    fed = config.federation
    if ray_address:
        import ray

        ray.init(address=ray_address, logging_level=logging.ERROR, log_to_driver=False)
        try:
            offered = ray.cluster_resources()
        finally:
            ray.shutdown()
        cpus, gpus = float(offered.get("CPU", 0.0)), float(offered.get("GPU", 0.0))
        where = f"the Ray cluster at {ray_address}"
    else:
        import torch

        cpus, gpus = float(len(os.sched_getaffinity(0))), float(torch.cuda.device_count())
        where = "this machine"
    if fed.client_cpus > cpus:
        raise ConfigError(
            f"federation.client_cpus: {fed.client_cpus:g} is more than the {cpus:g} CPU(s) of "
            f"{where}; allowed: 0 < value <= {cpus:g}"
        )
    if fed.client_gpus > gpus:
        raise ConfigError(
            f"federation.client_gpus: {fed.client_gpus:g} is more than the {gpus:g} GPU(s) of "
            f"{where}; allowed: 0 <= value <= {min(gpus, 1.0):g}"
        )


def simulate(
    config: ExperimentConfig,
    *,
    ray_address: str | None = None,
    verbose: bool = False,
) -> None:
    """Simulate ``data.num_clients`` clients (on ``federation.packs`` nodes if set) for
    ``federation.rounds`` rounds into ``experiment.run_dir`` (a new run directory when it
    is empty)."""
    from clients.app import app as client_app
    from fedal.app.server import app as server_app

    check_resources(config, ray_address)
    quiet_logging(verbose)
    run_config = flatten(config)
    context = Context(
        run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    _run_simulation(
        num_supernodes=config.node_count,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client_app,
        server_app=server_app,
        backend_name="ray",
        backend_config=backend_config(config, ray_address, verbose),
        server_app_context=context,
        verbose_logging=verbose,
    )
