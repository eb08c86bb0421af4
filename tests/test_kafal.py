"""KAFAL's KSAS: the knowledge-specialised prediction and the symmetric KL by hand, and
the selection it drives on a real context."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from strategy_context import make_context

from strategies import build_strategy
from strategies.base import top_k
from strategies.kafal import class_counts, ksas_discrepancy, specialised_log_probs
from strategies.scoring import predict_logits


def test_specialised_prediction_is_softmax_of_logits_plus_log_counts() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(3.0), 0.0, 5.0]])
    counts = torch.tensor([1.0, 3.0, 0.0])  # class 2 has no label on this client
    probs = specialised_log_probs(logits, counts).exp()
    # n_c exp(z_c) / sum_j n_j exp(z_j) over classes 0 and 1
    torch.testing.assert_close(probs, torch.tensor([[0.25, 0.75], [0.5, 0.5]]).double())


def test_discrepancy_is_the_symmetric_kl_of_the_specialised_predictions() -> None:
    local = torch.tensor([[0.0, 0.0]])
    received = torch.tensor([[math.log(3.0), 0.0]])
    p, q = np.array([0.5, 0.5]), np.array([0.75, 0.25])  # equal counts: plain softmax
    kl = lambda a, b: float((a * np.log(a / b)).sum())  # noqa: E731
    expected = 0.5 * (kl(p, q) + kl(q, p))
    assert ksas_discrepancy(local, received, torch.tensor([2.0, 2.0])).item() == pytest.approx(
        expected
    )
    # counts (3, 1): p = (3/4, 1/4), q = (9/10, 1/10)
    p, q = np.array([0.75, 0.25]), np.array([0.9, 0.1])
    expected = 0.5 * (kl(p, q) + kl(q, p))
    assert ksas_discrepancy(local, received, torch.tensor([3.0, 1.0])).item() == pytest.approx(
        expected
    )


def test_disagreement_on_a_class_the_client_has_no_label_of_counts_nothing() -> None:
    local = torch.tensor([[0.0, 0.0, 4.0], [0.0, 4.0, 0.0]])
    received = torch.zeros(2, 3)
    discrepancy = ksas_discrepancy(local, received, torch.tensor([5.0, 5.0, 0.0]))
    assert discrepancy[0].item() == pytest.approx(0.0, abs=1e-12)
    assert discrepancy[1].item() > 0.1


def test_class_counts_come_from_the_labelled_set() -> None:
    counts = class_counts(np.array([2, 0, 2, 2]), num_classes=4)
    assert counts.tolist() == [1.0, 0.0, 3.0, 0.0]


def test_select_queries_the_largest_discrepancies_between_helper_and_global() -> None:
    ctx = make_context(seed=1)
    assert ctx.global_model is not None
    local = predict_logits(ctx.model, ctx.candidates, ctx.device, ctx.batch_size)
    received = predict_logits(ctx.global_model, ctx.candidates, ctx.device, ctx.batch_size)
    scores = ksas_discrepancy(local, received, class_counts(ctx.labelled.labels, 4))
    picks = build_strategy("kafal").select(ctx, 6)
    np.testing.assert_array_equal(picks, top_k(scores, 6))
    assert scores[picks].min() > scores.median()


def test_identical_models_agree_everywhere_and_the_first_positions_are_taken() -> None:
    ctx = make_context(seed=1)
    same = dataclasses.replace(ctx, global_model=ctx.model)
    np.testing.assert_array_equal(build_strategy("kafal").select(same, 4), [0, 1, 2, 3])


def test_one_model_only_is_a_clear_error() -> None:
    ctx = dataclasses.replace(make_context(), global_model=None)
    with pytest.raises(ValueError, match=r"query\.scoring_model = 'both'"):
        build_strategy("kafal").select(ctx, 3)
