"""``fedal bench federation``: one real simulation, timed phase by phase.

The measuring half of the federation bench (:mod:`fedal.app.bench.cli` imports it when
the command runs). It runs an experiment config, with the command's overrides, on
Flower's Simulation Runtime exactly as ``fedal run`` does (:func:`fedal.app.simulation.
simulate`), into a temporary run directory, and reads where the time went from the run's
``rounds.jsonl``: every client's report (training, fit and select seconds and its
:class:`fedal.reports.ClientCost`) and the server's per-round timings.

Phases, in seconds summed over clients (client phases) or over rounds (server phases):

- ``worker_start``: worker processes from creation to the ClientApp imported, summed
  over the processes; ``data_load``: loading the dataset and a client's partition;
  ``training``: the helper's training; ``strategy_fit``: the strategy's own networks;
  ``scoring``: the network passes inside ``select``; ``selection``: ``select`` minus its
  passes (scores, distances, k-means);
- ``client_overhead``: a round's time in the ClientApp outside the phases above (message
  and state (de)serialisation, checkpoint writes);
- ``messaging_and_waiting``: the slot-seconds of each round's exchange (tasks sent to
  replies aggregated, times ``slots``) not spent inside a ClientApp: transport, Ray
  scheduling, and slots idle while the round waits for its slowest client; with
  ``federation.evaluation_shards`` also those of the evaluation's round trip not spent
  evaluating;
- ``aggregation``: the server's; ``evaluation``: the central evaluation's compute, on the
  server or summed over the nodes that evaluate a shard (``federation.evaluation_shards``).

Derived figures (the README's "Federation bench" defines them the same way):

- ``slots``: clients that can run at once, ``min(clients per round, CPUs // client_cpus,
  GPUs // client_gpus when client_gpus > 0, federation.packs when set)``;
- ``model_compute`` = training + strategy_fit + scoring + selection + evaluation, and
  ``framework_share = 1 - model_compute / (wall_seconds * slots)``: the share of the
  workers' wall time not spent computing with models (the server's evaluation counts as
  model compute once: it holds the machine while the workers wait; evaluated on the
  nodes, it occupies the slots that evaluate);
- ``later_framework_share``: the same over rounds 2 and later only (their wall time,
  their clients' compute and evaluations): the share a long run converges to;
- ``client_rounds_per_second`` = client rounds / wall seconds;
- ``host_mib_per_client``: (this process's peak resident set, which holds the server, plus
  every worker process's peak) / clients; ``state_mib_per_client``: the mean state a
  client keeps between rounds after the last round;
- ``first_contact_ratio``: a client's mean handler seconds in its first round over its
  mean in later rounds, like for like (rounds that labelled against rounds that
  labelled, when first rounds did);
- ``throughput``: the images the clients pushed through training and scoring per wall
  second, against the helper model alone on the same device with large batches
  (:func:`model_throughput`): ``device_efficiency`` = (train images / alone training rate
  + scored images / alone inference rate) / wall seconds;
- on CUDA, ``gpu_utilisation_mean`` and ``gpu_memory_peak_mib`` sampled through NVML
  every 0.2 s during the run (``None`` with ``gpu_note`` saying why when NVML is missing).
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from fedal.compute import compute_context, memory_format, place, synchronise
from fedal.config import ExperimentConfig
from fedal.models import build_for_dataset
from fedal.reports import ClientReport
from fedal.rundir import RunDirectory
from fedal.shards import load_experiment
from fedal.training import default_device

MIB = 2**20
CLIENT_PHASES = ("data_load", "training", "strategy_fit", "scoring", "selection")
MODEL_PHASES = ("training", "strategy_fit", "scoring", "selection", "evaluation")
GPU_SAMPLE_SECONDS = 0.2


@dataclass(frozen=True)
class Throughput:
    """Images per second through training and scoring: what the clients achieved over the
    run's wall time, and the helper alone with large batches on the same device."""

    train_images: int
    scored_images: int
    achieved_images_per_second: float
    alone_train_images_per_second: float
    alone_inference_images_per_second: float
    device_efficiency: float


@dataclass(frozen=True)
class FederationReport:
    """One federation bench: the setting, the phases (seconds) and the derived figures."""

    config: str
    clients: int
    rounds: int
    device: str
    slots: int
    wall_seconds: float
    phases: dict[str, float]
    model_compute_seconds: float
    framework_share: float
    later_framework_share: float | None
    client_rounds: int
    client_rounds_per_second: float
    worker_processes: int
    worker_starts_by_round: list[int]
    host_mib_per_client: float
    state_mib_per_client: float
    first_contact_ratio: float | None
    round_seconds: list[float]
    throughput: Throughput
    gpu_utilisation_mean: float | None = None
    gpu_memory_peak_mib: float | None = None
    gpu_note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The JSON the command writes."""
        return asdict(self)


def slots(config: ExperimentConfig, clients_per_round: int) -> int:
    """Clients that can run at once on this machine (see the module docstring)."""
    fed = config.federation
    limits = [clients_per_round, int(len(os.sched_getaffinity(0)) // fed.client_cpus)]
    if fed.packs:
        limits.append(fed.packs)
    if fed.client_gpus > 0:
        limits.append(int(torch.cuda.device_count() // fed.client_gpus))
    return max(1, min(limits))


def model_throughput(
    config: ExperimentConfig, device: torch.device, batch_size: int = 256, steps: int = 5
) -> tuple[float, float]:
    """Images per second of the helper alone on ``device``: SGD training steps and
    inference passes on ``batch_size`` random inputs of the dataset's shape (after one
    warm-up step each), computing as the clients do (:mod:`fedal.compute`)."""
    dataset = load_experiment(config).dataset
    with compute_context(device, config.training):
        model = place(build_for_dataset(config.model.helper, dataset, config.model.dropout), device)
        inputs = torch.randn((batch_size, *dataset.train_x.shape[1:]), device=device)
        if inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=memory_format(device))
        targets = torch.randint(0, dataset.meta.num_classes, (batch_size,), device=device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

        def train_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(inputs), targets).backward()
            optimizer.step()

        def inference_step() -> None:
            with torch.no_grad():
                model(inputs)

        rates = []
        for step, mode in ((train_step, True), (inference_step, False)):
            model.train(mode)
            step()
            synchronise(device)
            started = time.perf_counter()
            for _ in range(steps):
                step()
            synchronise(device)
            rates.append(batch_size * steps / (time.perf_counter() - started))
    return rates[0], rates[1]


class GpuSampler:
    """Samples the GPU's utilisation and used memory through NVML in a thread."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.utilisation: list[float] = []
        self.memory: list[float] = []
        self.note = ""
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(GPU_SAMPLE_SECONDS):
            try:
                self.utilisation.append(float(torch.cuda.utilization(self.device)))
                self.memory.append(torch.cuda.device_memory_used(self.device) / MIB)
            except (ModuleNotFoundError, RuntimeError) as error:
                self.note = f"NVML unavailable: {error}"
                return


@contextmanager
def gpu_sampling(device: torch.device) -> Iterator[GpuSampler | None]:
    """A running :class:`GpuSampler` on CUDA, ``None`` on the CPU."""
    if device.type != "cuda":
        yield None
        return
    sampler = GpuSampler(device)
    thread = threading.Thread(target=sampler.run, daemon=True)
    thread.start()
    try:
        yield sampler
    finally:
        sampler.stop.set()
        thread.join()


def run_federation_bench(
    config: ExperimentConfig, config_name: str, ray_address: str | None = None
) -> FederationReport:
    """Simulate ``config`` in a temporary run directory and account for its time."""
    from fedal.app.simulation import simulate

    device = default_device()
    with tempfile.TemporaryDirectory(prefix="fedal-bench-") as scratch:
        run_dir = Path(scratch) / "run"
        run = RunDirectory(run_dir)
        bench_config = config.replace("experiment", run_dir=str(run_dir))
        with gpu_sampling(device) as sampler:
            started = time.perf_counter()
            simulate(bench_config, ray_address=ray_address)
            wall = time.perf_counter() - started
        rows = run.read_rounds()
    train_rate, inference_rate = model_throughput(config, device)
    report = account(config, config_name, rows, wall, device, train_rate, inference_rate)
    if sampler is not None:
        report = _with_gpu(report, sampler)
    return report


def account(
    config: ExperimentConfig,
    config_name: str,
    rows: Sequence[dict[str, Any]],
    wall: float,
    device: torch.device,
    train_rate: float,
    inference_rate: float,
) -> FederationReport:
    """The report of a finished run: ``rows`` of its ``rounds.jsonl``, its ``wall``
    seconds and the helper's alone rates (images per second)."""
    rounds = [row for row in rows if row["round"] > 0]
    reports = [[ClientReport.from_metrics(client) for client in row["clients"]] for row in rounds]
    every = [report for round_reports in reports for report in round_reports]
    parallel = slots(config, max((len(r) for r in reports), default=1))
    phases = {
        "worker_start": sum(r.cost.worker_start_seconds for r in every),
        "data_load": sum(r.cost.load_seconds for r in every),
        "training": sum(r.train_seconds for r in every),
        "strategy_fit": sum(r.fit_seconds for r in every),
        "scoring": sum(r.cost.inference_seconds for r in every),
        "selection": sum(r.select_seconds - r.cost.inference_seconds for r in every),
    }
    handler = sum(r.cost.handler_seconds for r in every)
    phases["client_overhead"] = max(0.0, handler - sum(phases[key] for key in CLIENT_PHASES))
    exchange = sum(row.get("exchange_seconds", 0.0) for row in rounds)
    on_nodes = [row for row in rows if "evaluation_exchange_seconds" in row]
    evaluation_exchange = sum(row["evaluation_exchange_seconds"] for row in on_nodes)
    node_evaluation = sum(row["evaluation_seconds"] for row in on_nodes)
    phases["messaging_and_waiting"] = max(0.0, exchange * parallel - handler) + max(
        0.0, evaluation_exchange * parallel - node_evaluation
    )
    phases["aggregation"] = sum(row.get("aggregation_seconds", 0.0) for row in rounds)
    phases["evaluation"] = sum(row.get("evaluation_seconds", 0.0) for row in rows)
    compute = sum(phases[key] for key in MODEL_PHASES)

    peaks: dict[int, int] = {}
    for r in every:
        peaks[r.cost.worker_pid] = max(
            peaks.get(r.cost.worker_pid, 0), r.cost.worker_peak_rss_bytes
        )
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    clients = config.data.num_clients
    last = reports[-1] if reports else []
    train_images = sum(r.cost.train_images for r in every)
    scored_images = sum(r.cost.scored_images for r in every)
    ideal = train_images / train_rate + scored_images / inference_rate
    return FederationReport(
        config=config_name,
        clients=clients,
        rounds=len(rounds),
        device=str(device),
        slots=parallel,
        wall_seconds=wall,
        phases=phases,
        model_compute_seconds=compute,
        framework_share=1.0 - compute / (wall * parallel),
        later_framework_share=later_framework_share(rows, parallel),
        client_rounds=len(every),
        client_rounds_per_second=len(every) / wall,
        worker_processes=len(peaks),
        worker_starts_by_round=[
            sum(1 for r in round_reports if r.cost.worker_start_seconds > 0)
            for round_reports in reports
        ],
        host_mib_per_client=(own_peak + sum(peaks.values())) / MIB / clients,
        state_mib_per_client=sum(r.cost.state_bytes for r in last) / MIB / max(1, len(last)),
        first_contact_ratio=first_contact_ratio(reports),
        round_seconds=[
            row["elapsed_seconds"] - before["elapsed_seconds"]
            for before, row in itertools.pairwise(rows)
        ],
        throughput=Throughput(
            train_images=train_images,
            scored_images=scored_images,
            achieved_images_per_second=(train_images + scored_images) / wall,
            alone_train_images_per_second=train_rate,
            alone_inference_images_per_second=inference_rate,
            device_efficiency=ideal / wall,
        ),
    )


def later_framework_share(rows: Sequence[dict[str, Any]], parallel: int) -> float | None:
    """The framework share of rounds 2 and later alone (their wall time from the
    previous round's row to theirs): what a long run converges to, without the one-time
    start of Ray and the workers, the first contacts and the initial evaluation
    (``None`` with fewer than 2 rounds)."""
    later = [(before, row) for before, row in itertools.pairwise(rows) if row["round"] >= 2]
    if not later:
        return None
    wall = sum(row["elapsed_seconds"] - before["elapsed_seconds"] for before, row in later)
    compute = 0.0
    for _, row in later:
        reports = [ClientReport.from_metrics(client) for client in row["clients"]]
        compute += sum(r.train_seconds + r.fit_seconds + r.select_seconds for r in reports)
        compute += row.get("evaluation_seconds", 0.0)
    return 1.0 - compute / (wall * parallel)


def first_contact_ratio(reports: Sequence[Sequence[ClientReport]]) -> float | None:
    """Mean handler seconds of a client's first round over the mean of its later rounds,
    like for like: a round in which a client labels nothing (its pool used up) skips the
    strategy's fit and scoring, so when first rounds labelled, only the rounds that
    labelled count on either side (``None`` without a comparable later round)."""
    seen: set[int] = set()
    first: list[ClientReport] = []
    later: list[ClientReport] = []
    for round_reports in reports:
        for report in round_reports:
            (later if report.client in seen else first).append(report)
            seen.add(report.client)
    labelled = any(report.new_labels > 0 for report in first)

    def comparable(rounds: list[ClientReport]) -> list[float]:
        return [r.cost.handler_seconds for r in rounds if (r.new_labels > 0) == labelled]

    first_seconds, later_seconds = comparable(first), comparable(later)
    if not first_seconds or not later_seconds:
        return None
    return statistics.fmean(first_seconds) / statistics.fmean(later_seconds)


def _with_gpu(report: FederationReport, sampler: GpuSampler) -> FederationReport:
    """``report`` with the sampled GPU utilisation and peak memory."""
    if not sampler.utilisation:
        return replace(report, gpu_note=sampler.note or "no GPU sample taken")
    return replace(
        report,
        gpu_utilisation_mean=sum(sampler.utilisation) / len(sampler.utilisation),
        gpu_memory_peak_mib=max(sampler.memory),
        gpu_note=sampler.note,
    )


def write_report(report: FederationReport, output: Path) -> None:
    """The report as JSON at ``output``."""
    output.write_text(json.dumps(report.as_dict(), indent=2))
