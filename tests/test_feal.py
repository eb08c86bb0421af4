"""FEAL: evidential uncertainties and their calibration by hand, the diversity relaxation
on hand-made features, and the selection on a real context."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from strategy_context import make_context

from strategies import build_strategy
from strategies.feal import (
    aleatoric_uncertainty,
    calibrated_uncertainty,
    dirichlet_parameters,
    diversity_relaxation,
    epistemic_uncertainty,
    min_max,
)
from strategies.scoring import predict_embeddings, predict_logits


def test_dirichlet_parameters_are_relu_evidence_plus_one() -> None:
    alpha = dirichlet_parameters(torch.tensor([[-1.0, 2.0, 0.5]]))
    torch.testing.assert_close(alpha, torch.tensor([[1.0, 3.0, 1.5]]))


def test_aleatoric_uncertainty_is_the_expected_entropy() -> None:
    # alpha = (1, 1): sum_k 1/2 (psi(3) - psi(2)) = psi(3) - psi(2) = 1/2
    alpha = torch.tensor([[1.0, 1.0], [3.0, 1.0]], dtype=torch.float64)
    # alpha = (3, 1), S = 4: 3/4 (psi(5) - psi(4)) + 1/4 (psi(5) - psi(2))
    expected_second = 0.75 * (1 / 4) + 0.25 * (1 / 2 + 1 / 3 + 1 / 4)
    torch.testing.assert_close(
        aleatoric_uncertainty(alpha), torch.tensor([0.5, expected_second], dtype=torch.float64)
    )


def test_epistemic_uncertainty_is_the_dirichlet_entropy() -> None:
    alpha = torch.tensor([[1.0, 1.0], [2.0, 2.0], [5.0, 1.0]], dtype=torch.float64)
    # log B(alpha) + (S - K) psi(S) - sum (alpha_k - 1) psi(alpha_k)
    expected = [0.0, -math.log(6.0) + 2 * (1 / 2 + 1 / 3), -math.log(5.0) + 4 / 5]
    torch.testing.assert_close(
        epistemic_uncertainty(alpha), torch.tensor(expected, dtype=torch.float64)
    )


def test_calibration_weighs_both_aleatoric_terms_by_normalised_global_epistemic() -> None:
    global_logits = torch.tensor([[0.0, 0.0], [4.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    local_logits = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    epistemic = epistemic_uncertainty(dirichlet_parameters(global_logits))
    weight = (epistemic - epistemic.min()) / (epistemic.max() - epistemic.min())
    assert weight[:2].tolist() == [1.0, 0.0]  # Dir(1, 1) is the most uncertain
    aleatoric = aleatoric_uncertainty(dirichlet_parameters(global_logits)) + (
        aleatoric_uncertainty(dirichlet_parameters(local_logits))
    )
    scores = calibrated_uncertainty(global_logits, local_logits)
    torch.testing.assert_close(scores, weight * aleatoric)
    assert scores[0].item() == pytest.approx(1.0)  # 1/2 + 1/2
    assert scores[1].item() == 0.0  # confident global model: calibrated away


def test_min_max_of_constant_values_is_all_ones() -> None:
    assert min_max(torch.tensor([2.0, 2.0])).tolist() == [1.0, 1.0]


FEATURES = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
"""Two pairs of near-duplicates: 0 and 1, 2 and 3."""


def test_relaxation_skips_a_candidate_whose_close_neighbour_is_chosen() -> None:
    ranking = np.array([0, 1, 2, 3])
    assert diversity_relaxation(ranking, FEATURES, 2, 1, 0.9).tolist() == [0, 2]
    # the walk ends with 2 chosen: the skipped follow in ranking order
    assert diversity_relaxation(ranking, FEATURES, 3, 1, 0.9).tolist() == [0, 2, 1]
    # fewer than n neighbours above the threshold: never skipped
    assert diversity_relaxation(ranking, FEATURES, 2, 2, 0.9).tolist() == [0, 1]
    assert diversity_relaxation(ranking, FEATURES, 2, 1, 0.999).tolist() == [0, 1]
    assert diversity_relaxation(np.array([3, 2, 1, 0]), FEATURES, 2, 1, 0.9).tolist() == [3, 1]


def test_relaxation_works_block_by_block() -> None:
    ranking = np.array([0, 1, 2, 3])
    assert diversity_relaxation(ranking, FEATURES, 2, 1, 0.9, chunk_size=1).tolist() == [0, 2]


def test_select_ranks_by_calibrated_uncertainty_of_global_and_local() -> None:
    ctx = make_context(seed=1)
    assert ctx.global_model is not None
    received = predict_logits(ctx.global_model, ctx.candidates, ctx.device, ctx.batch_size)
    features, local = predict_embeddings(ctx.model, ctx.candidates, ctx.device, ctx.batch_size)
    scores = calibrated_uncertainty(received.double(), local.double())
    ranking = np.argsort(-scores.numpy(), kind="stable")
    no_relaxation = build_strategy("feal", {"similarity": 1.0}).select(ctx, 6)
    np.testing.assert_array_equal(no_relaxation, ranking[:6])
    relaxed = build_strategy("feal", {"similarity": 0.0, "neighbours": 1}).select(ctx, 6)
    np.testing.assert_array_equal(relaxed, diversity_relaxation(ranking, features, 6, 1, 0.0))
    assert set(relaxed.tolist()) != set(no_relaxation.tolist())  # the relaxation acted


def test_one_model_only_is_a_clear_error() -> None:
    ctx = dataclasses.replace(make_context(), global_model=None)
    with pytest.raises(ValueError, match=r"query\.scoring_model = 'both'"):
        build_strategy("feal").select(ctx, 3)
