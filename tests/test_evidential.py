"""FEAL's evidential training option (fedal.evidential): the loss against a hand
computation, the annealing, and training with ``training.loss = "evidential"``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import digamma
from strategy_context import unbalanced_blobs

from fedal.app.preflight import check_aggregation
from fedal.config import TrainingSection, load_config
from fedal.evidential import (
    annealing_coefficient,
    class_prior,
    correction_term,
    evidential_loss,
    uniform_dirichlet_kl,
)
from fedal.models import build_model
from fedal.training import cross_entropy, helper_objective, train_supervised

CPU = torch.device("cpu")


def _uniform_kl_by_hand(alpha: list[float]) -> float:
    total = sum(alpha)
    return (
        math.lgamma(total)
        - sum(math.lgamma(a) for a in alpha)
        - math.lgamma(len(alpha))
        + sum((a - 1) * (digamma(a) - digamma(total)) for a in alpha)
    )


def test_evidential_loss_matches_a_hand_computation() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]], dtype=torch.float64)
    targets = torch.tensor([0, 2])
    prior = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    # row 0: alpha = (3, 1, 1.5), S = 5.5, y = 0; row 1: alpha = (1, 4, 2), S = 7, y = 2;
    # the KL sees alpha~ with the label's evidence removed: (1, 1, 1.5) and (1, 4, 1)
    ce = (
        (2 - 0.5) * (digamma(5.5) - digamma(3.0)) + (2 - 0.25) * (digamma(7.0) - digamma(2.0))
    ) / 2
    kl = (_uniform_kl_by_hand([1.0, 1.0, 1.5]) + _uniform_kl_by_hand([1.0, 4.0, 1.0])) / 2
    cor = (-3 / 5.5 * 2.0 + -3 / 7.0 * 1.0) / 2
    expected = ce + 0.1 * (0.5 * kl + cor)
    loss = evidential_loss(logits, targets, prior, annealing=0.5, kl_weight=0.1)
    assert float(loss) == pytest.approx(expected, rel=1e-12)


def test_uniform_dirichlet_kl_is_the_kl_divergence_to_dir_one() -> None:
    alpha = torch.tensor([[1.0, 2.5, 4.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    dirichlet = torch.distributions.Dirichlet
    reference = torch.distributions.kl_divergence(dirichlet(alpha), dirichlet(torch.ones(2, 3)))
    assert float(uniform_dirichlet_kl(alpha)) == pytest.approx(float(reference.mean()))
    assert float(uniform_dirichlet_kl(alpha[1:])) == pytest.approx(0.0, abs=1e-12)


def test_correction_term_holds_the_strength_constant() -> None:
    """d L_cor / d z = -K / S on the label's logit and 0 elsewhere (S is detached)."""
    logits = torch.tensor([[2.0, -1.0, 0.5]], dtype=torch.float64, requires_grad=True)
    alpha = torch.relu(logits) + 1
    one_hot = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    correction_term(logits, alpha, one_hot).backward()
    assert logits.grad is not None
    assert logits.grad[0].tolist() == pytest.approx([-3 / 5.5, 0.0, 0.0])


def test_annealing_grows_from_zero_in_round_one_to_one() -> None:
    assert annealing_coefficient(1, 10) == 0.0
    assert annealing_coefficient(6, 10) == 0.5
    assert annealing_coefficient(11, 10) == 1.0
    assert annealing_coefficient(40, 10) == 1.0


def test_class_prior_is_the_share_of_held_labels() -> None:
    assert class_prior(np.array([0, 2, 2, 2]), 4).tolist() == [0.25, 0.0, 0.75, 0.0]


def _trained(settings: TrainingSection, server_round: int) -> torch.Tensor:
    view = unbalanced_blobs()
    torch.manual_seed(0)
    model = build_model("mlp", in_channels=2, num_classes=3)
    generator = torch.Generator().manual_seed(1)
    assert view.labels is not None
    objective = helper_objective(settings, view.labels, 3, server_round, None, generator)
    train_supervised(model, view, settings, CPU, generator, objective=objective)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_evidential_training_differs_from_cross_entropy_and_is_seeded() -> None:
    plain = TrainingSection(epochs=2, batch_size=16)
    evidential = plain.model_copy(update={"loss": "evidential"})
    assert helper_objective(plain, np.array([0]), 3, 5, None, torch.Generator()) is cross_entropy
    first = _trained(evidential, 5)
    assert torch.equal(first, _trained(evidential, 5))
    assert not torch.allclose(first, _trained(plain, 5))
    assert not torch.equal(first, _trained(evidential, 1))  # the annealed KL term acts


def test_scaffold_accepts_the_evidential_loss() -> None:
    """The evidential loss only replaces the per-step loss of plain SGD steps, so
    SCAFFOLD's option II holds: the edge check lets it through."""
    scaffold = ['federation.aggregation="scaffold"', "training.momentum=0"]
    check_aggregation(load_config(None, [*scaffold, 'training.loss="evidential"']))
