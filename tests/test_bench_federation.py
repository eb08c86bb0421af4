"""``fedal bench federation``: the accounting of phases on hand-made rounds, and the
bench on a real Flower + Ray simulation (no timing targets: those are bench rows)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_support import client_report, tiny_overrides, write_small_fashion_mnist

from fedal.app.bench.federation import account, first_contact_ratio
from fedal.cli import main
from fedal.config import load_config
from fedal.reports import ClientCost, ClientReport

DEMO = "experiments/configs/demo.toml"


def costed(client: int, handler: float, pid: int, start: float = 0.0) -> ClientReport:
    """A round report (train 1 s, select 0.1 s) with a cost: 0.04 s of the select were
    network passes over 50 images, 0.2 s loading, 20 images trained."""
    return dataclasses.replace(
        client_report(client, 10, 15),
        cost=ClientCost(
            inference_seconds=0.04,
            scored_images=50,
            train_images=20,
            load_seconds=0.2,
            handler_seconds=handler,
            state_bytes=1000,
            worker_pid=pid,
            worker_start_seconds=start,
            worker_peak_rss_bytes=100 * 2**20 * pid,
        ),
    )


def row(server_round: int, reports: list[ClientReport], elapsed: float) -> dict[str, object]:
    timed = {"exchange_seconds": 2.0, "aggregation_seconds": 0.1} if reports else {}
    return {
        "round": server_round,
        "elapsed_seconds": elapsed,
        "clients": [report.to_metrics(with_ledger=False) for report in reports],
        "evaluation_seconds": 0.5,
        **timed,
    }


def test_account_sums_the_phases_and_derives_the_shares() -> None:
    config = load_config(DEMO, ["data.num_clients=2", "federation.client_cpus=1"])
    rows = [
        row(0, [], 1.0),
        row(1, [costed(0, 1.5, pid=1, start=3.0), costed(1, 1.5, pid=2, start=4.0)], 6.0),
        row(2, [costed(0, 1.5, pid=1), costed(1, 1.5, pid=2)], 9.0),
    ]
    report = account(config, "demo", rows, 10.0, torch.device("cpu"), 100.0, 200.0)

    slots = min(2, len(os.sched_getaffinity(0)))
    assert report.slots == slots
    assert report.phases == pytest.approx(
        {
            "worker_start": 7.0,
            "data_load": 0.8,
            "training": 4.0,
            "strategy_fit": 0.0,
            "scoring": 0.16,
            "selection": 0.24,
            "client_overhead": 6.0 - 0.8 - 4.0 - 0.4,  # handler outside the phases
            "messaging_and_waiting": max(0.0, 2 * 2.0 * slots - 6.0),
            "aggregation": 0.2,
            "evaluation": 1.5,  # round 0 included
        }
    )
    assert report.model_compute_seconds == pytest.approx(4.4 + 1.5)
    assert report.framework_share == pytest.approx(1 - 5.9 / (10.0 * slots))
    # round 2 alone: 3 s of wall, 2 x (1 + 0.1) s of clients' compute + 0.5 s evaluation
    assert report.later_framework_share == pytest.approx(1 - 2.7 / (3.0 * slots))
    assert report.client_rounds == 4
    assert report.client_rounds_per_second == pytest.approx(0.4)
    assert (report.worker_processes, report.worker_starts_by_round) == (2, [2, 0])
    assert report.state_mib_per_client == pytest.approx(1000 / 2**20)
    assert report.round_seconds == [5.0, 3.0]
    flow = report.throughput
    assert (flow.train_images, flow.scored_images) == (80, 200)
    assert flow.achieved_images_per_second == pytest.approx(28.0)
    assert flow.device_efficiency == pytest.approx((80 / 100 + 200 / 200) / 10.0)
    assert report.host_mib_per_client > (100 + 200) / 2  # the workers' peaks plus ours


def test_evaluation_on_nodes_counts_its_round_trip_beyond_the_shards_as_waiting() -> None:
    """With ``federation.evaluation_shards`` a row's ``evaluation_seconds`` is the
    nodes' compute and ``evaluation_exchange_seconds`` the round trip's wall time: the
    slot-seconds of the trip not spent evaluating are messaging and waiting."""
    config = load_config(DEMO, ["data.num_clients=2", "federation.client_cpus=1"])
    reports = [costed(0, 1.5, pid=1), costed(1, 1.5, pid=2)]
    rows = [row(0, [], 1.0), row(1, reports, 6.0), row(2, reports, 9.0)]
    on_server = account(config, "demo", rows, 10.0, torch.device("cpu"), 100.0, 200.0)
    for timed in rows:
        timed["evaluation_exchange_seconds"] = 0.4  # 0.5 s of compute on the nodes
    on_nodes = account(config, "demo", rows, 10.0, torch.device("cpu"), 100.0, 200.0)

    slots = on_nodes.slots
    waiting = on_server.phases["messaging_and_waiting"] + max(0.0, 3 * 0.4 * slots - 1.5)
    assert on_nodes.phases["messaging_and_waiting"] == pytest.approx(waiting)
    assert on_nodes.phases["evaluation"] == on_server.phases["evaluation"] == pytest.approx(1.5)
    assert on_nodes.framework_share == on_server.framework_share


def test_first_contact_ratio_compares_a_clients_first_round_with_its_later_ones() -> None:
    first = [costed(0, 3.0, pid=1), costed(1, 1.0, pid=1)]
    later = [costed(0, 1.0, pid=1), costed(1, 1.0, pid=1)]
    assert first_contact_ratio([first, later]) == pytest.approx(2.0)
    assert first_contact_ratio([first]) is None


def labelled(report: ClientReport, labels: int) -> ClientReport:
    """``report`` with ``labels`` new labels (its ledger rows)."""
    return dataclasses.replace(report, new_labels=labels)


def test_first_contact_ratio_leaves_out_later_rounds_that_labelled_nothing() -> None:
    """A client whose pool ran out labels nothing and skips fit and scoring: such a
    round is not a later round's cost for a first round that queried."""
    first = [labelled(costed(0, 2.0, pid=1), 2), labelled(costed(1, 2.0, pid=1), 2)]
    full = [labelled(costed(0, 2.0, pid=1), 2), labelled(costed(1, 1.0, pid=1), 1)]
    empty = [costed(0, 0.5, pid=1), costed(1, 0.5, pid=1)]
    assert first_contact_ratio([first, full, empty]) == pytest.approx(2.0 / 1.5)
    assert first_contact_ratio([first, empty]) is None
    # a federation that labels nothing at all compares all its rounds
    assert first_contact_ratio([empty, [costed(0, 0.25, pid=1)]]) == pytest.approx(2.0)


def test_a_row_recorded_before_costs_existed_reads_as_zero_cost() -> None:
    metrics = client_report(0, 10, 15).to_metrics(with_ledger=False)
    old = {key: value for key, value in metrics.items() if key not in ClientCost().to_metrics()}
    assert ClientReport.from_metrics(old).cost == ClientCost()
    report = costed(0, 1.5, pid=7, start=2.0)
    assert ClientReport.from_metrics(report.to_metrics()) == report


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


def test_bench_federation_accounts_for_a_real_simulation(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = [
        f"--set={value}"
        for value in tiny_overrides(data_dir, tmp_path / "runs")
        if not value.startswith(("data.num_clients", "federation.rounds"))
    ]
    output = tmp_path / "bench.json"
    command = ["bench", "federation", DEMO, "--strategy", "entropy", "--clients", "3"]
    code = main([*command, "--rounds", "2", *settings, "--output", str(output)])

    assert code == 0
    assert "framework share" in capsys.readouterr().out
    report = json.loads(output.read_text())
    assert (report["clients"], report["rounds"], report["client_rounds"]) == (3, 2, 6)
    assert all(seconds >= 0 for seconds in report["phases"].values())
    for phase in ("worker_start", "training", "scoring", "evaluation", "aggregation"):
        assert report["phases"][phase] > 0, phase
    # every worker process reports its start once, in the first round it serves
    assert sum(report["worker_starts_by_round"]) == report["worker_processes"] >= 1
    # 1 epoch over 6 labels per client in round 1, 6 + 5 in round 2
    assert report["throughput"]["train_images"] == 3 * (6 + 11)
    assert report["throughput"]["scored_images"] > 0
    assert 0 < report["framework_share"] <= 1
    assert report["state_mib_per_client"] > 0 and report["host_mib_per_client"] > 0
    assert len(report["round_seconds"]) == 2
    assert report["gpu_utilisation_mean"] is None  # CPU: nothing sampled
    assert not list((tmp_path / "runs").glob("*"))  # the bench's run directory is temporary


def test_the_compiler_stack_is_imported_by_the_first_client_round_as_worker_start() -> None:
    """A simulation's driver imports the ClientApp too and trains nothing: importing it
    leaves ``torch._dynamo`` (about 1 s) out; a client round imports it first of all
    (``WorkerStart.warm``, here before the empty task fails), once, counting its seconds
    in the worker's start, which goes to the first round only."""
    probe = (
        "import sys\n"
        "from flwr.app import RecordDict\n"
        "import clients.app as client_app\n"
        "assert 'torch._dynamo' not in sys.modules\n"
        "start = client_app.WORKER_START\n"
        "before = start.pending\n"
        "try:\n"
        "    client_app.train_client(RecordDict(), {}, None)\n"
        "except KeyError as missing:\n"
        "    assert str(missing) == repr('config'), missing\n"
        "assert 'torch._dynamo' in sys.modules and start.pending > before\n"
        "assert start.take() > before\n"
        "start.warm()\n"
        "assert start.take() == 0.0\n"
    )
    finished = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
