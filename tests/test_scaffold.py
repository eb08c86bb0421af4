"""SCAFFOLD (Karimireddy et al. 2020, Algorithm 1, option II): the control-variate
arithmetic on a hand-computed two-client case, the corrected local step, the protocol's
conversions and the one-line refusals of settings the derivation does not cover."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest
import torch
from flwr.app import Message, RecordDict
from torch import nn

from clients.protocol import CONTROL_KEY, RoundReply, RoundTask
from clients.round import ControlVariates, control_delta, next_client_control
from clients.state import load_control, read_record, save_control, write_record
from fedal.app.preflight import checked_config, preflight
from fedal.app.server import (
    RoundReports,
    Scaffold,
    aggregation_strategy,
    optimizer_state,
    restore_optimizer_state,
    scaffold_aggregate,
)
from fedal.checkpoint import Sections, load_client_checkpoint, save_client_checkpoint
from fedal.config import TrainingSection, load_config
from fedal.reports import ClientReport
from fedal.rundir import RunDirectory
from fedal.schema import ConfigError
from fedal.training import train_supervised
from fedal.views import InputSpec, SampleView


def tensor(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_control_variates_of_two_clients_by_hand() -> None:
    """x = 1, c = 0.5, N = 4 clients, eta_l = 0.1.

    client 1: c_1 = 0.25, K = 2 steps to y_1 = 0.4: (x - y_1) / (K eta_l) = 3, so
    delta c_1 = 3 - 0.5 = 2.5 and c_1+ = 0.25 - 0.5 + 3 = 2.75.
    client 2: c_2 = 0, K = 4 steps to y_2 = 0.8: (x - y_2) / (K eta_l) = 0.5, so
    delta c_2 = 0 and c_2+ = 0.
    server: x+ = 1 + eta_g * mean(-0.6, -0.2) = 0.6 (eta_g = 1) or 0.8 (eta_g = 0.5);
    c+ = 0.5 + (2.5 + 0) / 4 = 1.125 (|S| / N * mean = sum / N).
    """
    x = {"w": tensor(1.0, -2.0)}
    server = {"w": tensor(0.5, 0.0)}
    one = ControlVariates(server=server, client={"w": tensor(0.25, 1.0)})
    two = ControlVariates(server=server, client={"w": tensor(0.0, 0.0)})
    y_one, y_two = {"w": tensor(0.4, -2.0)}, {"w": tensor(0.8, -1.6)}

    delta_one = control_delta(one, x, y_one, steps=2, lr=0.1)
    delta_two = control_delta(two, x, y_two, steps=4, lr=0.1)
    torch.testing.assert_close(delta_one["w"], tensor(2.5, 0.0))
    torch.testing.assert_close(delta_two["w"], tensor(0.0, -1.0))
    torch.testing.assert_close(next_client_control(one.client, delta_one)["w"], tensor(2.75, 1.0))
    torch.testing.assert_close(next_client_control(two.client, delta_two)["w"], tensor(0.0, -1.0))

    def numpy(arrays: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return {name: value.numpy() for name, value in arrays.items()}

    for server_lr, expected in ((1.0, [0.6, -1.8]), (0.5, [0.8, -1.9])):
        arrays, control = scaffold_aggregate(
            numpy(x),
            numpy(server),
            [numpy(y_one), numpy(y_two)],
            [numpy(delta_one), numpy(delta_two)],
            server_lr,
            num_clients=4,
        )
        np.testing.assert_allclose(arrays["w"], expected, rtol=1e-6)
        np.testing.assert_allclose(control["w"], [1.125, -0.25], rtol=1e-6)
        assert arrays["w"].dtype == control["w"].dtype == np.float32


def test_no_step_leaves_the_client_control_variate_as_it_was() -> None:
    control = ControlVariates(server={"w": tensor(0.5)}, client={"w": tensor(0.25)})
    delta = control_delta(control, {"w": tensor(1.0)}, {"w": tensor(1.0)}, steps=0, lr=0.1)
    torch.testing.assert_close(delta["w"], tensor(0.0))


def _toy_view(count: int = 32) -> SampleView:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=count).astype(np.int64)
    features = (rng.normal(size=(count, 2)) + 2.0 * labels[:, None]).astype(np.float32)
    return SampleView(features, np.arange(count), InputSpec((), ()), labels)


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(2, 2)


def test_one_corrected_full_batch_step_recovers_the_gradient_at_x() -> None:
    """K = 1 plain SGD step on the full batch: y = x - eta_l (g(x) + c - c_i), so option II
    gives c_i+ = c_i - c + (x - y) / eta_l = g(x), the full-batch gradient at x."""
    view = _toy_view()
    settings = TrainingSection(
        epochs=1, batch_size=len(view), lr=0.1, momentum=0.0, weight_decay=0.0, augment=False
    )
    model = _linear()
    start = {name: value.detach().clone() for name, value in model.state_dict().items()}
    loss = nn.functional.cross_entropy(
        model(view.inputs(slice(None), torch.device("cpu"))),
        view.targets(slice(None), torch.device("cpu")),
    )
    gradient = dict(zip(start, torch.autograd.grad(loss, list(model.parameters())), strict=True))
    control = ControlVariates(
        server={name: torch.full_like(value, 0.3) for name, value in start.items()},
        client={name: torch.full_like(value, -0.2) for name, value in start.items()},
    )
    stats = train_supervised(
        model,
        view,
        settings,
        torch.device("cpu"),
        torch.Generator().manual_seed(0),
        gradient_correction=control.correction(model),
    )
    trained = {name: value.detach().clone() for name, value in model.state_dict().items()}
    assert stats.steps == 1
    for name, value in start.items():
        torch.testing.assert_close(trained[name], value - 0.1 * (gradient[name] + 0.5))
    updated = next_client_control(control.client, control_delta(control, start, trained, 1, 0.1))
    for name, value in gradient.items():
        torch.testing.assert_close(updated[name], value, atol=1e-5, rtol=1e-4)


def test_without_a_correction_training_is_untouched() -> None:
    """No correction (every other aggregation) and an all-zero one give the same steps;
    the default path never adds anything."""
    view = _toy_view()
    settings = TrainingSection(epochs=2, batch_size=8, lr=0.1, momentum=0.0, augment=False)
    plain, zero = _linear(), _linear()
    train_supervised(plain, view, settings, torch.device("cpu"), torch.Generator().manual_seed(1))
    train_supervised(
        zero,
        view,
        settings,
        torch.device("cpu"),
        torch.Generator().manual_seed(1),
        gradient_correction=[torch.zeros_like(p) for p in zero.parameters()],
    )
    for a, b in zip(plain.parameters(), zero.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="shape"):
        train_supervised(
            _linear(),
            view,
            settings,
            torch.device("cpu"),
            torch.Generator(),
            gradient_correction=[torch.zeros(3), torch.zeros(2)],
        )


def _report(client: int) -> ClientReport:
    return ClientReport(
        client=client,
        num_examples=4,
        labels_used=4,
        new_labels=0,
        new_noisy=0,
        candidates_left=10,
        budget_short=False,
        train_loss=0.5,
        train_seconds=1.0,
        finetune_confident=0,
        fit_seconds=0.0,
        select_seconds=0.0,
        selected_class_histogram=(0, 0),
        ledger=(),
    )


def test_the_control_variates_cross_the_flower_boundary_once_each_way() -> None:
    config = load_config(None, ['federation.aggregation="scaffold"'])
    task = RoundTask(3, config, (0,), control={"w": np.array([0.5, 1.5], np.float32)})
    content = RecordDict({"config": task.to_config_record(), **task.to_array_records()})
    assert CONTROL_KEY in content.array_records
    message = cast(Message, SimpleNamespace(content=content))  # what a client receives
    parsed = RoundTask.from_content(message.content)
    assert parsed.control is not None
    np.testing.assert_array_equal(parsed.control["w"], [0.5, 1.5])
    plain = RoundTask(3, config.replace("federation", aggregation="fedavg"), (0,))
    assert plain.to_array_records() == {}

    reply = RoundReply({"w": tensor(1.0, 2.0)}, _report(0), control_delta={"w": tensor(0.1, 0.2)})
    assert set(reply.uploaded_arrays()) == {"w", "delta-c/w"}
    back = RoundReply.from_content(reply.to_content())
    assert set(back.helper_state) == {"w"} and back.control_delta is not None
    torch.testing.assert_close(back.control_delta["w"], tensor(0.1, 0.2))
    without = RoundReply.from_content(RoundReply({"w": tensor(1.0)}, _report(0)).to_content())
    assert without.control_delta is None and set(without.helper_state) == {"w"}


def test_the_client_control_variate_lives_in_the_state_and_its_checkpoint(tmp_path: Path) -> None:
    """c_i survives both stores of a client's state: a node's ``context.state`` record and
    the checkpoint file (a packed client's only store)."""
    state: Sections = {}
    assert load_control(state) is None
    save_control(state, {"w": tensor(2.75, 1.0)})
    record = RecordDict()
    write_record(record, state)
    run = RunDirectory(tmp_path)
    save_client_checkpoint(run, 0, 1, read_record(record))
    restored = load_client_checkpoint(run, 0, 1)
    assert restored is not None
    control = load_control(restored)
    assert control is not None
    torch.testing.assert_close(control["w"], tensor(2.75, 1.0))


def test_the_server_keeps_c_in_its_optimizer_state(tmp_path: Path) -> None:
    config = load_config(None, ['federation.aggregation="scaffold"', "federation.server_lr=0.5"])
    strategy = aggregation_strategy(config, RoundReports(RunDirectory(tmp_path), False))
    assert isinstance(strategy, Scaffold) and type(strategy).__name__ == "Scaffold"
    assert strategy.server_learning_rate == 0.5 and strategy.num_clients == 10
    assert optimizer_state(strategy) == {}
    control = {"control": {"w": np.array([1.125, -0.25], np.float32)}}
    restore_optimizer_state(strategy, control)
    assert optimizer_state(strategy) == control
    task = strategy.task(1)
    assert task.control is not None and task.control["w"] is control["control"]["w"]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ('training.optimizer="adam"', "training.optimizer"),
        ("training.momentum=0.9", "training.momentum"),
        ('training.schedule="cosine"', "training.schedule"),
        ("training.finetune=true", "training.finetune"),
    ],
)
def test_scaffold_refuses_what_its_derivation_does_not_cover(override: str, named: str) -> None:
    base = ['federation.aggregation="scaffold"', "training.momentum=0"]
    checked_config(load_config(None, base))
    with pytest.raises(ConfigError, match=f"^{named}: .*scaffold") as error:
        checked_config(load_config(None, [*base, override]))
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=f"^{named}: "):  # `fedal run`, before Ray starts
        preflight(load_config(None, [*base, override]))
    checked_config(load_config(None, [override]))  # fedavg takes it
