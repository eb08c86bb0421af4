"""KAFAL's KCFU training option (fedal.kcfu): each loss against a hand computation,
training with ``training.kcfu = true`` and its wiring into a client round."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from strategy_context import unbalanced_blobs

from clients.round import run_client_round
from fedal.app.preflight import check_aggregation
from fedal.config import TrainingSection, load_config
from fedal.kcfu import (
    KcfuObjective,
    balanced_softmax_loss,
    compensatory_class_weights,
    compensatory_distillation,
    frozen_copy,
    label_counts,
    mixup,
)
from fedal.models import build_for_dataset, build_model
from fedal.shards import load_experiment
from fedal.training import helper_objective, train_supervised
from strategies import build_strategy

CPU = torch.device("cpu")
COUNTS = torch.tensor([2.0, 0.0, 6.0])


def test_balanced_softmax_loss_matches_a_hand_computation() -> None:
    logits = torch.tensor([[1.0, 0.0, 2.0], [0.5, 3.0, -1.0]], requires_grad=True)
    targets = torch.tensor([0, 2])
    # -log(n_y e^{z_y} / sum_j n_j e^{z_j}); the class without labels drops out
    first = -math.log(2 * math.e / (2 * math.e + 6 * math.e**2))
    second = -math.log(6 * math.exp(-1) / (2 * math.exp(0.5) + 6 * math.exp(-1)))
    loss = balanced_softmax_loss(logits, targets, COUNTS)
    assert float(loss.detach()) == pytest.approx((first + second) / 2, rel=1e-6)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad[:, 1].tolist() == [0.0, 0.0]


def test_class_weights_favour_scarce_classes_and_skip_absent_ones() -> None:
    # N / n_c = (4, -, 4/3), normalised by 16/3
    assert compensatory_class_weights(COUNTS).tolist() == pytest.approx([0.75, 0.0, 0.25])
    assert label_counts(np.array([2, 0, 2, 2, 2, 2, 0, 2]), 3).tolist() == COUNTS.tolist()


def test_mixup_pairs_rows() -> None:
    inputs = torch.tensor([[0.0, 4.0], [8.0, 0.0]])
    mixed = mixup(inputs, torch.tensor([0.5, 0.25]), torch.tensor([1, 0]))
    assert mixed.tolist() == [[4.0, 2.0], [2.0, 3.0]]  # (0.5 x0 + 0.5 x1, 0.25 x1 + 0.75 x0)


def test_compensatory_distillation_matches_a_hand_computation() -> None:
    student = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    teacher = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    lam, partner = torch.tensor([0.5, 0.25]), torch.tensor([1, 0])
    weights = torch.tensor([0.75, 0.0, 0.25])
    # the teacher predicts (0, 2): Gamma = (0.5*0.75 + 0.5*0.25, 0.25*0.25 + 0.75*0.75)
    gamma = [0.5, 0.625]

    def kl_over_classes(student_row: list[float], teacher_row: list[float]) -> float:
        def log_softmax(row: list[float]) -> list[float]:
            norm = math.log(sum(math.exp(v) for v in row))
            return [v - norm for v in row]

        log_p, log_q = log_softmax(teacher_row), log_softmax(student_row)
        return sum(math.exp(a) * (a - b) for a, b in zip(log_p, log_q, strict=True)) / 3

    expected = (
        gamma[0] * kl_over_classes([0, 0, 0], [2, 0, 0])
        + gamma[1] * kl_over_classes([1, 0, 0], [0, 0, 3])
    ) / 2
    loss = compensatory_distillation(student, teacher, weights, lam, partner)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_frozen_copy_is_a_detached_eval_copy() -> None:
    model = build_model("mlp", in_channels=2, num_classes=3)
    teacher = frozen_copy(model)
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_without_a_teacher_the_objective_is_the_balanced_softmax_loss() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", in_channels=2, num_classes=3)
    inputs, targets = torch.randn(4, 2), torch.tensor([0, 2, 2, 0])
    objective = KcfuObjective(COUNTS, None, 2.0, np.random.default_rng(0))
    expected = balanced_softmax_loss(model(inputs), targets, COUNTS)
    assert torch.equal(objective(model, inputs, targets), expected)


def _trained(settings: TrainingSection, server_round: int) -> torch.Tensor:
    view = unbalanced_blobs()
    torch.manual_seed(7)
    received = build_model("mlp", in_channels=2, num_classes=3)
    torch.manual_seed(0)
    model = build_model("mlp", in_channels=2, num_classes=3)
    generator = torch.Generator().manual_seed(1)
    assert view.labels is not None
    teacher = frozen_copy(received)
    objective = helper_objective(settings, view.labels, 3, server_round, teacher, generator)
    train_supervised(model, view, settings, CPU, generator, objective=objective)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_kcfu_training_differs_from_cross_entropy_and_is_seeded() -> None:
    plain = TrainingSection(epochs=2, batch_size=16)
    kcfu = plain.model_copy(update={"kcfu": True})
    first = _trained(kcfu, 2)
    assert torch.equal(first, _trained(kcfu, 2))
    assert not torch.allclose(first, _trained(plain, 2))
    assert not torch.allclose(first, _trained(kcfu, 1))  # round 1: no distillation


def test_a_kcfu_client_round_distils_from_the_global_model_as_received() -> None:
    config = load_config(
        "experiments/configs/demo.toml",
        ["data.train_subset=600", "data.num_clients=3", "data.initial_labels_per_client=20"],
    )
    experiment = load_experiment(config)
    torch.manual_seed(0)
    state = build_for_dataset(config.model.helper, experiment.dataset).state_dict()

    def uploaded(training: TrainingSection) -> dict[str, torch.Tensor]:
        run = config.replace("training", **training.model_dump())
        pool = experiment.new_pool(run, 0)
        reply = run_client_round(
            run, experiment.dataset, pool, build_strategy("random"), state, 2, CPU
        )
        return reply.helper_state

    kcfu = config.training.model_copy(update={"kcfu": True})
    first, again, plain = uploaded(kcfu), uploaded(kcfu), uploaded(config.training)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert any(not torch.equal(first[name], plain[name]) for name in first)


def test_scaffold_accepts_kcfu() -> None:
    """KCFU's steps are plain SGD steps on one differentiable local loss, counted in K, so
    SCAFFOLD's option II holds: the edge check lets it through."""
    scaffold = ['federation.aggregation="scaffold"', "training.momentum=0", "training.kcfu=true"]
    check_aggregation(load_config(None, scaffold))
