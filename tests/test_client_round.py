"""One client round without a federation: budgets, exhaustion, caps, query cadence, contract,
the compute switches (one test through the ClientApp's handler on Flower records)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, RecordDict

from clients.app import train_client
from clients.protocol import RoundReply, RoundTask
from clients.round import SelectionError, check_selection, query_budget, run_client_round
from clients.state import STRATEGY_KEY, read_record
from fedal.checkpoint import load_client_checkpoint
from fedal.compute import compute_context
from fedal.config import load_config
from fedal.models import build_for_dataset
from fedal.rundir import RunDirectory
from fedal.shards import load_experiment
from strategies import build_strategy


def setup(*overrides: str):
    config = load_config(
        "experiments/configs/demo.toml",
        [
            "data.train_subset=600",
            "data.num_clients=3",
            "data.initial_labels_per_client=5",
            "training.epochs=1",
            *overrides,
        ],
    )
    experiment = load_experiment(config)
    torch.manual_seed(0)
    model = build_for_dataset(config.model.helper, experiment.dataset)
    return config, experiment, model.state_dict()


def one_round(config, experiment, state, pool, server_round: int, strategy: str = "random"):
    return run_client_round(
        config,
        experiment.dataset,
        pool,
        build_strategy(strategy),
        state,
        server_round,
        torch.device("cpu"),
    )


def test_budget_beyond_the_pool_takes_what_is_left_then_keeps_training() -> None:
    config, experiment, state = setup("query.budget_per_query=100")
    pool = experiment.new_pool(config, 0)
    open_left = len(pool.candidates)
    assert open_left < 100
    first = one_round(config, experiment, state, pool, 1).report
    assert first.new_labels == open_left and first.budget_short
    assert len(pool.candidates) == 0
    assert len(np.unique(pool.labelled)) == len(pool.labelled)
    second = one_round(config, experiment, state, pool, 2)
    assert second.report.new_labels == 0 and second.report.num_examples == len(pool.labelled)
    assert set(second.helper_state) == set(state)  # still trains and uploads


def test_label_cap_and_query_cadence() -> None:
    config, experiment, state = setup(
        "query.budget_per_query=4", "query.max_labels_per_client=11", "query.query_every=2"
    )
    pool = experiment.new_pool(config, 1)
    assert query_budget(config, pool, 1) == 0
    assert query_budget(config, pool, 2) == 4
    for server_round in range(1, 7):
        one_round(config, experiment, state, pool, server_round)
    assert len(pool.labelled) == 11
    rounds = [entry.round for entry in pool.ledger]
    assert set(rounds) == {0, 2, 4} and rounds.count(4) == 2  # 5 + 4 + 2 (capped)


def test_helper_upload_is_trained_before_the_query_and_reports_ledger() -> None:
    config, experiment, state = setup("query.budget_per_query=3")
    pool = experiment.new_pool(config, 2)
    outcome = one_round(config, experiment, state, pool, 1, strategy="entropy")
    report = outcome.report
    assert report.num_examples == 5 and report.labels_used == 8
    assert [entry[0] for entry in report.ledger] == [0] * 5 + [1] * 3
    assert [entry[1] for entry in report.ledger] == pool.labelled.tolist()
    assert [entry[2] for entry in report.ledger] == pool.labels.tolist()
    assert sum(report.selected_class_histogram) == 3
    helper = build_for_dataset(config.model.helper, experiment.dataset)
    helper.load_state_dict(outcome.helper_state)
    picked = pool.labelled[5:]
    inputs = experiment.dataset.input_spec.to_tensor(experiment.dataset.train_x[picked])
    with torch.no_grad():
        predicted = helper.eval()(inputs).argmax(1).numpy()
    assert report.picked_helper_correct == int((predicted == pool.labels[5:]).sum())
    assert any(not torch.equal(outcome.helper_state[k], state[k]) for k in state)


def test_selection_contract_is_enforced() -> None:
    assert check_selection(np.array([2, 0]), 2, 5, "x").tolist() == [2, 0]
    with pytest.raises(SelectionError, match="expected 2 distinct"):
        check_selection(np.array([1, 1]), 2, 5, "x")
    with pytest.raises(SelectionError, match="expected 2"):
        check_selection(np.array([1]), 2, 5, "x")
    with pytest.raises(SelectionError, match="outside"):
        check_selection(np.array([1, 7]), 2, 5, "x")


def test_a_round_in_channels_last_on_the_cpu_is_reproducible_and_learns_alike() -> None:
    """``training.channels_last = "always"``: the helper and PSL's peers compute with
    channels_last convolution weights on the CPU (the uploaded weights keep that layout),
    the round repeats bit for bit from its seed, and its weights agree with the
    contiguous layout's up to float rounding (same batches, other kernels)."""
    config, experiment, state = setup("query.budget_per_query=3", 'training.channels_last="always"')

    def psl_round() -> tuple[RoundReply, dict[str, torch.Tensor]]:
        strategy = build_strategy("psl")
        pool = experiment.new_pool(config, 2)
        reply = run_client_round(
            config, experiment.dataset, pool, strategy, state, 1, torch.device("cpu")
        )
        return reply, strategy.state_dict()

    outcomes = []
    for _ in range(2):
        with compute_context(torch.device("cpu"), config.training):
            outcomes.append(psl_round())
    (first, peers), (second, _) = outcomes
    for weights in (first.helper_state, peers):
        conv_weights = [v for v in weights.values() if v.dim() == 4]
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights)
        assert any(not w.is_contiguous() for w in conv_weights)  # 1-channel ones are both
    for name, value in first.helper_state.items():
        assert torch.equal(value, second.helper_state[name]), name
    assert first.report.ledger == second.report.ledger
    contiguous, contiguous_peers = psl_round()
    assert all(v.is_contiguous() for v in [*contiguous.helper_state.values()])
    assert all(v.is_contiguous() for v in contiguous_peers.values())
    for name, value in first.helper_state.items():
        torch.testing.assert_close(value, contiguous.helper_state[name], rtol=1e-3, atol=1e-4)


def test_the_client_app_computes_under_the_configured_switches(tmp_path: Path) -> None:
    """The ClientApp's round handler (``clients.app.train_client``, on Flower records)
    computes as ``training`` configures: channels_last gives helper weights other than
    the contiguous layout's (float rounding), and the same ones when repeated."""
    uploads = {}
    for name, layout in (("first", "always"), ("again", "always"), ("contiguous", "cuda")):
        config, _, state = setup(
            f'training.channels_last="{layout}"', f'experiment.run_dir="{tmp_path / name}"'
        )
        task = RoundTask(1, config, (0,) * config.data.num_clients)
        content = RecordDict({"arrays": ArrayRecord(state), "config": task.to_config_record()})
        node = {"partition-id": 2, "num-partitions": config.data.num_clients}
        reply = train_client(content, node, record=None)
        uploads[name] = RoundReply.from_content(reply).helper_state
    first, again, contiguous = uploads["first"], uploads["again"], uploads["contiguous"]
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], contiguous[k]) for k in first)
    for name, value in first.items():
        torch.testing.assert_close(value, contiguous[name], rtol=1e-3, atol=1e-4)


def test_a_round_under_bf16_autocast_uploads_float32_and_is_reproducible() -> None:
    """The CUDA compute path on the CPU (training.bf16 = "always"): the helper computes
    in bf16 but keeps and uploads float32 weights, learns, and repeats from its seed."""
    config, experiment, state = setup("query.budget_per_query=3", 'training.bf16="always"')
    outcomes = []
    for _ in range(2):
        pool = experiment.new_pool(config, 2)
        with compute_context(torch.device("cpu"), config.training):
            outcomes.append(one_round(config, experiment, state, pool, 1, strategy="entropy"))
    first, second = outcomes
    assert {t.dtype for t in first.helper_state.values() if t.is_floating_point()} == {
        torch.float32
    }
    assert any(not torch.equal(first.helper_state[k], state[k]) for k in state)
    for name, value in first.helper_state.items():
        assert torch.equal(value, second.helper_state[name]), name
    assert first.report.ledger == second.report.ledger
    pool = experiment.new_pool(config, 2)
    in_float32 = one_round(config, experiment, state, pool, 1, strategy="entropy")
    assert any(not torch.equal(first.helper_state[k], in_float32.helper_state[k]) for k in state), (
        "the round did not compute in bf16"
    )


def test_a_round_continues_alike_from_the_nodes_record_or_from_the_checkpoint(
    tmp_path: Path,
) -> None:
    """A client's state reaches its next round through a node's ``context.state`` record
    (a node per client) or through its checkpoint file alone (a packed client): PSL's
    second round uploads the same helper, selects the same samples and keeps the same
    state either way."""
    config, _, state = setup('query.strategy="psl"', f'experiment.run_dir="{tmp_path}"')
    node = {"partition-id": 1, "num-partitions": config.data.num_clients}

    def content(server_round: int) -> RecordDict:
        task = RoundTask(server_round, config, (0,) * config.data.num_clients)
        return RecordDict({"arrays": ArrayRecord(state), "config": task.to_config_record()})

    record = RecordDict()
    train_client(content(1), node, record)
    assert read_record(record)[STRATEGY_KEY]  # PSL's peers are part of the state
    second = {}
    for name, held_in in (("record", record), ("checkpoint", None)):
        reply = RoundReply.from_content(train_client(content(2), node, held_in))
        second[name] = reply, load_client_checkpoint(RunDirectory(tmp_path), 1, 2)
    (by_record, kept_by_record), (by_file, kept_by_file) = second["record"], second["checkpoint"]
    assert kept_by_record is not None and kept_by_file is not None
    assert by_record.report.ledger == by_file.report.ledger
    assert by_record.report.new_labels > 0
    for name, value in by_record.helper_state.items():
        assert torch.equal(value, by_file.helper_state[name]), name
    assert read_record(record).keys() == kept_by_record.keys() == kept_by_file.keys()
    for key, arrays in kept_by_record.items():
        for name, array in arrays.items():
            np.testing.assert_array_equal(array, kept_by_file[key][name], err_msg=f"{key}/{name}")
            np.testing.assert_array_equal(array, read_record(record)[key][name])
    assert by_record.report.cost.state_bytes == by_file.report.cost.state_bytes > 0
