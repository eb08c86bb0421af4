"""Real Flower + Ray simulations: results, determinism and the privacy isolation test."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_support import TRAIN_COUNT, tiny_config, tiny_overrides, write_small_fashion_mnist
from flwr.app import ArrayRecord, RecordDict
from ray_head import RayHead

from clients.app import train_client
from clients.protocol import RoundReply, RoundTask
from fedal.app.simulation import simulate
from fedal.checkpoint import ServerCheckpoint
from fedal.cli import main
from fedal.config import ExperimentConfig
from fedal.datasets import load_dataset
from fedal.models import build_for_dataset
from fedal.reports import ClientCost, ClientReport
from fedal.rundir import RunDirectory
from fedal.shards import client_shards, load_experiment, new_client_pool

# One worker process for all of a federation's clients (each client takes both CPUs),
# for the privacy tests, whose point is not clients running side by side: a tiny
# federation's time is mostly its workers' start (the interpreter, torch and Flower,
# about 5 CPU-seconds each; 14-17 s per isolation variant instead of 15-20). Every run
# such a test compares uses it: two threads per client round differently from one
# (README, "Determinism").
ONE_WORKER = "federation.client_cpus=2"


def run(config: ExperimentConfig, run_dir: Path) -> Path:
    simulate(config.replace("experiment", run_dir=str(run_dir)))
    return run_dir


def read_ledger(run_dir: Path) -> np.ndarray:
    return RunDirectory(run_dir).read_ledger()


def uploads(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every client's uploaded arrays, by file name (round and client)."""
    return {
        path.name: dict(np.load(path))
        for path in sorted(RunDirectory(run_dir).upload_file(0, 0).parent.glob("*.npz"))
    }


def assert_same_uploads(run_a: Path, run_b: Path) -> None:
    """Both runs uploaded bit-identical arrays from every client in every round."""
    before, after = uploads(run_a), uploads(run_b)
    assert before.keys() == after.keys()
    for name, arrays in before.items():
        for key, value in arrays.items():
            assert np.array_equal(value, after[name][key]), f"{name}:{key} differs"


def protected_indices(config: ExperimentConfig) -> np.ndarray:
    dataset = load_dataset(config.data.dataset, config.data.data_dir)
    shards = client_shards(config, dataset)
    pools = [new_client_pool(config, dataset, k, shard) for k, shard in enumerate(shards)]
    return np.concatenate([pool.protected for pool in pools])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def baseline(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    return run(tiny_config(data_dir, out), out / "baseline")


def test_simulation_writes_the_run_directory(baseline: Path) -> None:
    rounds = RunDirectory(baseline).read_rounds()
    assert [row["round"] for row in rounds] == [0, 1, 2]
    assert rounds[1]["labels"] == 3 * 6 and rounds[2]["labels"] == 3 * (6 + 5)
    assert all(0.0 <= row["test_accuracy"] <= 1.0 for row in rounds)
    assert {client["client"] for client in rounds[2]["clients"]} == {0, 1, 2}
    summary = json.loads((baseline / "summary.json").read_text())
    assert summary["final_accuracy"] == rounds[-1]["test_accuracy"]
    assert summary["rounds"] == 2
    ledger = read_ledger(baseline)
    assert len(ledger) == 3 * 6 + 2 * 3 * 5
    assert len(np.unique(ledger[:, 2])) == len(ledger), "a sample was labelled twice"
    plot = (baseline / "accuracy_vs_labels.png").read_bytes()
    assert plot.startswith(b"\x89PNG") and len(plot) > 1000
    assert (baseline / "config.toml").is_file()
    assert len(uploads(baseline)) == 2 * 3


def test_same_seed_same_run_and_other_seed_differs(
    baseline: Path, data_dir: Path, tmp_path: Path
) -> None:
    again = run(tiny_config(data_dir, tmp_path), tmp_path / "again")
    assert np.array_equal(read_ledger(again), read_ledger(baseline))
    assert [r["test_accuracy"] for r in RunDirectory(again).read_rounds()] == [
        r["test_accuracy"] for r in RunDirectory(baseline).read_rounds()
    ]
    other = run(tiny_config(data_dir, tmp_path, "experiment.seed=1"), tmp_path / "other")
    assert not np.array_equal(read_ledger(other), read_ledger(baseline))


SCAFFOLD = ('federation.aggregation="scaffold"', "training.momentum=0")
DROPOUT = "model.dropout=0.3"  # the MC-dropout strategies need a dropout layer
# Strict mode for every registered strategy; the settings that change what reaches a
# client (split, oracle noise, scoring model, aggregation, the helper's loss) ride along
# on some of them (KAFAL with its KCFU update and FEAL with its evidential loss, as their
# papers train).
STRICT_VARIANTS = {
    "entropy": (),
    "psl+finetune": (
        'query.strategy="psl"',
        "training.finetune=true",
        "training.finetune_gamma=0.1",  # max softmax of 10 classes > 0.1: all but ties
        "query.options.epochs=1",
    ),
    "pal": ('query.strategy="pal"', "query.options.epochs=1"),
    "lhd": (
        'query.strategy="lhd"',
        "query.options.max_steps=2",
        "query.options.finetune=true",
        "query.options.finetune_gamma=0.1",
    ),
    "ads": ('query.strategy="ads"', "query.options.epochs=1"),
    "alfa_mix": ('query.strategy="alfa_mix"',),
    "vaal": ('query.strategy="vaal"', "query.options.epochs=1"),
    "ll4al": ('query.strategy="ll4al"',),
    "logo": ('query.strategy="logo"', 'query.scoring_model="global"', "query.options.epochs=1"),
    "kafal+kcfu": ('query.strategy="kafal"', 'query.scoring_model="both"', "training.kcfu=true"),
    "feal+evidential": (
        'query.strategy="feal"',
        'query.scoring_model="both"',
        'training.loss="evidential"',
    ),
    "random+dirichlet+fedprox": (
        'query.strategy="random"',
        'data.partition="dirichlet"',
        "data.alpha=0.5",
        'federation.aggregation="fedprox"',
        "federation.proximal_mu=0.1",
    ),
    "least_confidence+noisy-oracle": (
        'query.strategy="least_confidence"',
        'oracle.noise="uniform"',
        "oracle.rate=0.3",
    ),
    "margin+global-scoring": ('query.strategy="margin"', 'query.scoring_model="global"'),
    "coreset+scaffold": ('query.strategy="coreset"', *SCAFFOLD),
    "badge": ('query.strategy="badge"',),
    "kmeans": ('query.strategy="kmeans"',),
    "bald": ('query.strategy="bald"', DROPOUT, "query.options.samples=3"),
    "vote_entropy": ('query.strategy="vote_entropy"', DROPOUT, "query.options.members=3"),
    "consensus_entropy": ('query.strategy="consensus_entropy"', DROPOUT, "query.options.members=3"),
    "kl_to_consensus": ('query.strategy="kl_to_consensus"', DROPOUT, "query.options.members=3"),
}


def test_every_registered_strategy_has_an_isolation_variant() -> None:
    from strategies import available

    covered = {variant.split("+")[0] for variant in STRICT_VARIANTS}
    assert covered == set(available())


def perturbed_copy(protected: np.ndarray, data_dir: Path, directory: Path) -> Path:
    """The small Fashion-MNIST with the pixels of every ``protected`` sample inverted."""
    assert len(protected) > 0.8 * TRAIN_COUNT
    images = load_dataset("fashion-mnist", str(data_dir)).train_x[:, 0].copy()
    images[protected] = 255 - images[protected]
    return write_small_fashion_mnist(directory, train_images=images)


def client_rounds(config: ExperimentConfig, client: int) -> list[RoundReply]:
    """Two rounds of one client through the ClientApp's handler, its state kept in a
    node's record between them: round 1 from the seeded initial helper, round 2 from
    round 1's upload (any fixed global model will do: the server receives only uploads
    and reports, so a client whose uploads and reports are isolated makes an isolated
    federation)."""
    torch.manual_seed(config.experiment.seed)
    dataset = load_experiment(config).dataset
    helper = build_for_dataset(config.model.helper, dataset, config.model.dropout)
    arrays = {name: value.detach().clone() for name, value in helper.state_dict().items()}
    control = None  # SCAFFOLD's server c: zeros, as the server starts it
    if config.federation.aggregation == "scaffold":
        control = {name: np.zeros(p.shape, np.float32) for name, p in helper.named_parameters()}
    node = {"partition-id": client, "num-partitions": config.data.num_clients}
    record, replies, known = RecordDict(), [], (0,) * config.data.num_clients
    for server_round in (1, 2):
        task = RoundTask(server_round, config, known, control)
        content = RecordDict(
            {"arrays": ArrayRecord(arrays), "config": task.to_config_record()}
            | task.to_array_records()
        )
        replies.append(RoundReply.from_content(train_client(content, node, record)))
        arrays = replies[-1].helper_state
    return replies


def without_timings(report: ClientReport) -> ClientReport:
    """A round's report without what the machine decides (seconds, process, memory)."""
    timings = {"train_seconds": 0.0, "fit_seconds": 0.0, "select_seconds": 0.0}
    return replace(report, **timings, cost=ClientCost())


@pytest.mark.parametrize("variant", list(STRICT_VARIANTS))
def test_a_clients_rounds_never_let_protected_pixels_reach_its_uploads_or_labels(
    variant: str, tmp_path: Path, data_dir: Path
) -> None:
    """Every strategy variant, client by client: two rounds on the original data and on
    data whose protected pixels are inverted upload bit-identical helpers (and SCAFFOLD
    control updates), report the same (labels, losses, selection statistics) and label
    the same samples, none of them protected."""
    overrides = STRICT_VARIANTS[variant]
    config = tiny_config(data_dir, tmp_path, *overrides, f'experiment.run_dir="{tmp_path}/a"')
    protected = protected_indices(config)
    perturbed_dir = perturbed_copy(protected, data_dir, tmp_path / "perturbed")
    perturbed = tiny_config(
        perturbed_dir, tmp_path, *overrides, f'experiment.run_dir="{tmp_path}/b"'
    )
    scaffold = config.federation.aggregation == "scaffold"
    for client in range(config.data.num_clients):
        original, changed = client_rounds(config, client), client_rounds(perturbed, client)
        for server_round, (a, b) in enumerate(zip(original, changed, strict=True), start=1):
            where = f"client {client}, round {server_round}"
            assert a.report.ledger, where
            assert without_timings(a.report) == without_timings(b.report), where
            assert not {index for _, index, _ in a.report.ledger} & set(protected), where
            assert a.helper_state.keys() == b.helper_state.keys()
            for name, value in a.helper_state.items():
                assert torch.equal(value, b.helper_state[name]), f"{where}: {name}"
            assert (a.control_delta is not None) == (b.control_delta is not None) == scaffold, where
            for name, value in (a.control_delta or {}).items():
                assert torch.equal(value, b.control_delta[name]), f"{where}: delta-c/{name}"


# Federations for the variants whose isolation also involves the server or the split:
# the default path, the paper's strategy with private networks, the helper losses that
# distil from or regularise towards the global model, SCAFFOLD's control variates,
# FedProx on a Dirichlet split and scoring with the global model.
FEDERATION_VARIANTS = (
    "entropy",
    "psl+finetune",
    "kafal+kcfu",
    "feal+evidential",
    "random+dirichlet+fedprox",
    "coreset+scaffold",
    "margin+global-scoring",
)


@pytest.mark.parametrize("variant", FEDERATION_VARIANTS)
def test_protected_pixels_never_influence_uploads_or_ledger(
    variant: str, tmp_path: Path, data_dir: Path
) -> None:
    overrides = (*STRICT_VARIANTS[variant], ONE_WORKER)
    config = tiny_config(data_dir, tmp_path, *overrides)
    original = run(config, tmp_path / "original")
    protected = protected_indices(config)
    perturbed_dir = perturbed_copy(protected, data_dir, tmp_path / "perturbed")
    perturbed = run(tiny_config(perturbed_dir, tmp_path, *overrides), tmp_path / "perturbed-run")

    assert np.isin(read_ledger(original)[:, 2], protected).sum() == 0
    assert np.array_equal(read_ledger(perturbed), read_ledger(original))
    uploaded = uploads(original)
    assert len(uploaded) == config.data.num_clients * config.federation.rounds
    assert_same_uploads(original, perturbed)
    if config.training.finetune:
        rows = RunDirectory(original).read_rounds()
        assert sum(c["finetune-confident"] for row in rows for c in row["clients"]) > 0


def test_paper_mode_protected_data_reaches_the_choice_only(tmp_path: Path, data_dir: Path) -> None:
    """``query.private_data = "all"`` (the demo's paper mode): PSL's peers study the
    protected data, so the *choice* of samples may depend on it, but protected samples
    are never labelled, and a helper trained on the same ledger uploads the same arrays.

    Rounds whose labelled set (the ledger of earlier rounds) is the same in both runs
    must upload bit-identical helpers; the negative control checks that the ledger does
    change here, so the strict test above would have caught this mode."""
    overrides = (
        'query.strategy="psl"',
        'query.private_data="all"',
        "query.options.epochs=2",
        ONE_WORKER,
    )
    config = tiny_config(data_dir, tmp_path, *overrides)
    original = run(config, tmp_path / "original")
    protected = protected_indices(config)
    perturbed_dir = perturbed_copy(protected, data_dir, tmp_path / "perturbed")
    perturbed = run(tiny_config(perturbed_dir, tmp_path, *overrides), tmp_path / "perturbed-run")

    ledgers = read_ledger(original), read_ledger(perturbed)
    for ledger in ledgers:
        assert np.isin(ledger[:, 2], protected).sum() == 0
    assert not np.array_equal(*ledgers), "negative control: the choice depends on protected data"
    before, after = uploads(original), uploads(perturbed)
    assert before.keys() == after.keys() and len(before) == 2 * 3
    same_ledger_rounds = [
        server_round
        for server_round in (1, 2)
        if np.array_equal(*(ledger[ledger[:, 1] < server_round] for ledger in ledgers))
    ]
    assert 1 in same_ledger_rounds
    for name, arrays in before.items():
        if int(name.split("-")[1]) in same_ledger_rounds:
            for key, value in arrays.items():
                assert np.array_equal(value, after[name][key]), f"{name}:{key} differs"


def test_partial_participation_draws_the_same_clients_every_run_packed_or_not(
    data_dir: Path, tmp_path: Path
) -> None:
    """Half the clients drawn per round, twice with the same seed: once on a node per
    client, once packed (federation.packs=2: two nodes running two clients each, one after
    another). The same draw, ledger, uploads and accuracies; a pack's clients ran in its
    worker process."""
    overrides = ("data.num_clients=4", "federation.fraction_train=0.5", "federation.rounds=3")

    def participants(run_dir: Path) -> list[list[int]]:
        return [
            sorted(c["client"] for c in row["clients"])
            for row in RunDirectory(run_dir).read_rounds()[1:]
        ]

    apart = run(tiny_config(data_dir, tmp_path, *overrides), tmp_path / "apart")
    packed = run(
        tiny_config(data_dir, tmp_path, *overrides, "federation.packs=2"), tmp_path / "packed"
    )

    drawn = participants(apart)
    assert all(len(clients) == 2 for clients in drawn)
    assert len({tuple(clients) for clients in drawn}) > 1, "every round trained the same pair"
    assert participants(packed) == drawn
    assert np.array_equal(read_ledger(packed), read_ledger(apart))
    assert_same_uploads(apart, packed)
    rows = {path: RunDirectory(path).read_rounds() for path in (apart, packed)}
    assert [r["test_accuracy"] for r in rows[packed]] == [r["test_accuracy"] for r in rows[apart]]
    for row in rows[packed][1:]:
        pack_pids = {(c["client"] % 2, c["worker-pid"]) for c in row["clients"]}
        assert len(pack_pids) == len({pack for pack, _ in pack_pids}), "a pack was split"


def test_fedal_run_joins_a_ray_head_started_with_ray_start(
    shared_ray_head: RayHead,
    baseline: Path,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``ray start --head`` on loopback (the suite's head, tests/ray_head.py), then
    ``fedal run --ray-address``: the 2-round federation runs on the head's workers and
    gives the baseline's results."""
    monkeypatch.delenv("RAY_ADDRESS")  # only the flag names the cluster
    workers_before = shared_ray_head.worker_logs()
    settings = [f"--set={value}" for value in tiny_overrides(data_dir, tmp_path)]
    arguments = ["--strategy", "entropy", "--ray-address", shared_ray_head.address]
    run_dir = tmp_path / "on-the-head"

    assert (
        main(
            [
                "run",
                "experiments/configs/demo.toml",
                *settings,
                *arguments,
                "--run-dir",
                str(run_dir),
            ]
        )
        == 0
    )

    assert shared_ray_head.worker_logs() > workers_before
    assert [row["round"] for row in RunDirectory(run_dir).read_rounds()] == [0, 1, 2]
    assert np.array_equal(read_ledger(run_dir), read_ledger(baseline))
    assert_same_uploads(baseline, run_dir)


def test_a_resumed_run_equals_the_uninterrupted_run(data_dir: Path, tmp_path: Path) -> None:
    """Also when the interrupted run's client files are in the flat layout of the runs
    written before the per-client folders (``client-<k>-round-<r>.npz``)."""
    settings = (
        'query.strategy="psl"',  # peers persist in the client checkpoints
        "query.options.epochs=1",
        "data.num_clients=4",
        'federation.aggregation="fedavgm"',  # server momentum persists in server.npz
        "federation.server_momentum=0.9",
    )
    straight = run(
        tiny_config(
            data_dir, tmp_path, *settings, "federation.rounds=3", "federation.fraction_train=0.5"
        ),
        tmp_path / "straight",
    )
    interrupted = tmp_path / "interrupted"
    run(
        tiny_config(
            data_dir, tmp_path, *settings, "federation.rounds=2", "federation.fraction_train=0.5"
        ),
        interrupted,
    )
    # a crash after round 2 left a client file of an unrecorded round 3 behind
    checkpoints = RunDirectory(interrupted).checkpoint_dir
    (checkpoints / "client-0-round-3.npz").write_bytes(b"not reached")
    for path in checkpoints.glob("client-*/round-*.npz"):  # as runs before the folders
        path.rename(checkpoints / f"{path.parent.name}-{path.name}")
    assert not list(checkpoints.glob("client-*/round-*.npz"))

    assert main(["resume", str(interrupted), "--rounds", "3"]) == 0

    assert [r["round"] for r in RunDirectory(interrupted).read_rounds()] == [0, 1, 2, 3]
    assert [r["test_accuracy"] for r in RunDirectory(interrupted).read_rounds()] == [
        r["test_accuracy"] for r in RunDirectory(straight).read_rounds()
    ]
    assert np.array_equal(read_ledger(interrupted), read_ledger(straight))
    assert_same_uploads(straight, interrupted)
    summary = json.loads((interrupted / "summary.json").read_text())
    assert summary == json.loads((straight / "summary.json").read_text())


def test_evaluation_on_nodes_gives_the_servers_results_and_may_change_on_resume(
    data_dir: Path, tmp_path: Path
) -> None:
    """``federation.evaluation_shards=3``: three nodes evaluate a shard of the test set
    each after every round (300 images in batches of 64: shards of 1, 2 and 2 batches)
    and the server adds them up; the run records the same test accuracies as the
    server's own evaluation, losses to float64 rounding, and the same ledger and uploads.
    A resume may move the evaluation back to the server."""
    batches = "training.eval_batch_size=64"
    straight = run(
        tiny_config(data_dir, tmp_path, batches, "federation.rounds=3"), tmp_path / "straight"
    )
    on_nodes = run(
        tiny_config(data_dir, tmp_path, batches, "federation.evaluation_shards=3"),
        tmp_path / "on-nodes",
    )
    back_on_the_server = ["--set", "federation.evaluation_shards=0"]
    assert main(["resume", str(on_nodes), "--rounds", "3", *back_on_the_server]) == 0

    expected, rows = RunDirectory(straight).read_rounds(), RunDirectory(on_nodes).read_rounds()
    assert [row["test_accuracy"] for row in rows] == [row["test_accuracy"] for row in expected]
    for row, server_row in zip(rows, expected, strict=True):
        assert row["test_loss"] == pytest.approx(server_row["test_loss"], rel=1e-12)
    exchanges = ["evaluation_exchange_seconds" in row for row in rows]
    assert exchanges == [False, True, True, False]  # rounds 1-2 on the nodes
    assert all(row["evaluation_seconds"] > 0 for row in rows)
    assert np.array_equal(read_ledger(on_nodes), read_ledger(straight))
    assert_same_uploads(straight, on_nodes)


@pytest.mark.parametrize(
    ("aggregation", "strategy_class", "betas"),
    [
        ("fedadam", "FedAdam", True),
        ("fedyogi", "FedYogi", True),
        ("fedadagrad", "FedAdagrad", False),
    ],
)
def test_adaptive_optimizers_are_flowers_own_with_the_configured_settings(
    aggregation: str, strategy_class: str, betas: bool, tmp_path: Path
) -> None:
    from flwr.serverapp import strategy as flower_strategies

    from fedal.app.server import (
        RoundReports,
        aggregation_strategy,
        optimizer_state,
        restore_optimizer_state,
    )

    config = tiny_config(
        tmp_path,
        tmp_path,
        f'federation.aggregation="{aggregation}"',
        "federation.eta=0.03",
        "federation.beta_1=0.8",
        "federation.beta_2=0.9",
        "federation.tau=0.01",
    )
    strategy = aggregation_strategy(config, RoundReports(RunDirectory(tmp_path), False))
    assert isinstance(strategy, getattr(flower_strategies, strategy_class))
    assert type(strategy).__name__ == strategy_class
    assert (strategy.eta, strategy.tau, strategy.eta_l) == (0.03, 0.01, config.training.lr)
    assert (strategy.beta_1, strategy.beta_2) == ((0.8, 0.9) if betas else (0.0, 0.0))
    assert optimizer_state(strategy) == {}

    moments = {"m_t": {"w": np.ones(2)}, "v_t": {"w": np.full(2, 3.0)}}
    restore_optimizer_state(strategy, moments)
    assert optimizer_state(strategy) == moments


def assert_resume_equals_the_uninterrupted_run(
    data_dir: Path,
    tmp_path: Path,
    settings: tuple[str, ...],
    check_saved: Callable[[ServerCheckpoint], None],
) -> None:
    """A run of 2 rounds resumed to 3 equals the run of 3 rounds: results, ledger,
    uploads, the task model and the server optimizer's state, bit for bit.
    ``check_saved`` inspects the server checkpoint the resume starts from."""
    from fedal.checkpoint import load_server_checkpoint

    straight = run(
        tiny_config(data_dir, tmp_path, *settings, "federation.rounds=3"), tmp_path / "straight"
    )
    interrupted = tmp_path / "interrupted"
    run(tiny_config(data_dir, tmp_path, *settings, "federation.rounds=2"), interrupted)
    saved = load_server_checkpoint(RunDirectory(interrupted))
    assert saved.round == 2
    check_saved(saved)

    assert main(["resume", str(interrupted), "--rounds", "3"]) == 0

    assert [r["round"] for r in RunDirectory(interrupted).read_rounds()] == [0, 1, 2, 3]
    assert [r["test_loss"] for r in RunDirectory(interrupted).read_rounds()] == [
        r["test_loss"] for r in RunDirectory(straight).read_rounds()
    ]
    assert np.array_equal(read_ledger(interrupted), read_ledger(straight))
    assert_same_uploads(straight, interrupted)
    resumed, uninterrupted = (
        load_server_checkpoint(RunDirectory(d)) for d in (interrupted, straight)
    )
    assert resumed.round == uninterrupted.round == 3
    for name, array in uninterrupted.arrays.items():  # the task model, bit for bit
        assert np.array_equal(resumed.arrays[name], array), name
    assert resumed.optimizer.keys() == uninterrupted.optimizer.keys()
    for moment, arrays in uninterrupted.optimizer.items():
        for name, array in arrays.items():
            assert np.array_equal(resumed.optimizer[moment][name], array), f"{moment}:{name}"


def test_a_resumed_fedadam_run_equals_the_uninterrupted_run(data_dir: Path, tmp_path: Path) -> None:
    """FedAdam's moments (m_t, v_t) live on the server: they persist in server.npz, and
    the resumed run's bias correction counts the run's rounds, not the resumed ones."""

    def moments_saved(saved: ServerCheckpoint) -> None:
        assert saved.optimizer.keys() == {"m_t", "v_t"}
        assert saved.optimizer["m_t"].keys() == saved.arrays.keys()
        assert any(np.any(moment != 0) for moment in saved.optimizer["v_t"].values())

    settings = ('federation.aggregation="fedadam"', "federation.eta=0.01")
    assert_resume_equals_the_uninterrupted_run(data_dir, tmp_path, settings, moments_saved)


ROUND_TIMEOUT = 20.0  # far above a warm round of this federation (about 1 s)


def test_failed_and_late_replies_are_recorded_and_their_labels_reach_the_ledger(
    data_dir: Path, tmp_path: Path
) -> None:
    """In round 2, client 1 trains and labels but its reply is an error (as a crash
    before replying leaves it), and client 2 replies only after the server gave up on it
    (a real delay past ``federation.round_timeout``; its round-3 task then runs on the
    other Ray worker while the late round still holds client 2's state). The round goes
    on with the others, rounds.jsonl says who was dropped and why, and both clients'
    round-2 labels reach the ledger with their next reply: the ledger and every client's
    own ledger (its checkpoint on disk) agree row for row."""
    from flwr.app import Context, Error, Message, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    from clients.app import client_id, partition_of, train
    from clients.protocol import CLIENT_ID_ACTION, RoundTask
    from clients.state import POOL_KEY
    from fedal.app.server import app as server_app
    from fedal.app.simulation import backend_config
    from fedal.checkpoint import load_client_checkpoint
    from fedal.config import flatten

    run = RunDirectory(tmp_path / "lossy")
    unreliable = ClientApp()
    unreliable.query(CLIENT_ID_ACTION)(client_id)

    @unreliable.train()
    def train_and_fail_or_be_late(msg: Message, context: Context) -> Message:
        reply = train(msg, context)
        task = RoundTask.from_content(msg.content)
        client = partition_of(context.node_config, task.config.data.num_clients)
        if (task.server_round, client) == (2, 1):
            return Message(Error(code=1, reason="injected: the reply is lost"), reply_to=msg)
        if (task.server_round, client) == (2, 2):
            deadline = time.monotonic() + 10 * ROUND_TIMEOUT
            while len(run.read_rounds()) < 3 and time.monotonic() < deadline:
                time.sleep(0.2)  # until the server has closed round 2 without this reply
            time.sleep(2.0)  # long enough for round 3's task to start on the other worker
        return reply

    config = tiny_config(
        data_dir,
        tmp_path,
        "data.num_clients=4",
        "federation.rounds=3",
        f"federation.round_timeout={ROUND_TIMEOUT}",
    ).replace("experiment", run_dir=str(run.path))
    _run_simulation(
        num_supernodes=config.data.num_clients,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=unreliable,
        server_app=server_app,
        backend_name="ray",
        backend_config=backend_config(config, None, False),
        server_app_context=Context(
            run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=flatten(config)
        ),
        verbose_logging=False,
    )
    rounds = run.read_rounds()
    assert [row["round"] for row in rounds] == [0, 1, 2, 3]
    failed, late = rounds[2]["dropped"]
    assert failed["client"] == 1 and "injected: the reply is lost" in failed["reason"]
    assert late["client"] == 2 and f"no reply within {ROUND_TIMEOUT:g} s" in late["reason"]
    assert [client["client"] for client in rounds[2]["clients"]] == [0, 3]
    assert [row["dropped"] for row in rounds if row["round"] != 2] == [[], [], []]
    ledger = run.read_ledger()
    for client in range(config.data.num_clients):
        own = load_client_checkpoint(run, client, 3)[POOL_KEY]["ledger"]
        assert np.array_equal(ledger[ledger[:, 0] == client], own), f"client {client}"
        assert set(ledger[ledger[:, 0] == client, 1].tolist()) == {0, 1, 2, 3}, f"client {client}"


def test_a_scaffold_run_keeps_c_and_a_resumed_one_equals_the_uninterrupted_run(
    data_dir: Path, tmp_path: Path
) -> None:
    """SCAFFOLD with 2 of 3 clients a round: the server's c persists in server.npz, each
    client's c_i in its own checkpoint (a client left out of a round keeps its c_i), and
    every upload's audit holds delta c_i next to the helper's weights."""
    from clients.state import CONTROL_KEY
    from fedal.checkpoint import load_client_checkpoint
    from fedal.models import build_model

    trainable = {
        name
        for name, p in build_model(
            "cnn", in_channels=1, num_classes=10, image_size=(28, 28)
        ).named_parameters()
    }

    def control_saved(saved: ServerCheckpoint) -> None:
        assert saved.optimizer.keys() == {"control"}
        control = saved.optimizer["control"]
        assert control.keys() == trainable and control.keys() < saved.arrays.keys()
        assert any(np.any(value != 0) for value in control.values())
        run_dir = RunDirectory(tmp_path / "interrupted")
        rounds = run_dir.read_rounds()
        assert [len(row["clients"]) for row in rounds[1:]] == [2, 2]
        for client in range(3):
            state = load_client_checkpoint(run_dir, client, 2)
            if state is not None:  # a client that trained keeps its c_i
                assert state[CONTROL_KEY].keys() == trainable
        for arrays in uploads(run_dir.path).values():
            assert {f"delta-c/{name}" for name in trainable} < arrays.keys()

    settings = (*SCAFFOLD, "federation.fraction_train=0.67")
    assert_resume_equals_the_uninterrupted_run(data_dir, tmp_path, settings, control_saved)
