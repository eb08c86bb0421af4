"""ALFA-Mix: equation 5 by hand, the candidate set on a 2-D toy, k-means and filling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from strategy_context import feature_context
from torch import nn

from fedal.models import Classifier
from strategies import build_strategy
from strategies.alfa_mix import (
    ALFAMix,
    class_anchors,
    loss_gradients,
    mix,
    optimal_alpha,
    prediction_changes,
)
from strategies.base import RoundContext

NEAR = [(0.05, 0.0), (-0.05, 0.5), (0.1, -0.5), (-0.1, 1.0)]
"""Candidates next to the decision boundary x0 = 0 of :func:`boundary_model`."""


def boundary_model() -> Classifier:
    """Identity embedding of 2-D points, head logits ``(x0, -x0)``: class 0 iff x0 > 0."""
    model = Classifier(nn.Identity(), embedding_dim=2, num_classes=2, dropout=0.0)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        model.head.bias.zero_()
    return model.eval()


def toy_context(labelled: bool = True, seed: int = 0) -> tuple[RoundContext, int]:
    """Labelled points of class 0 at x0 ~ 2 and class 1 at x0 ~ -2; candidates: the
    :data:`NEAR` points first, then 20 far from the boundary (|x0| in [2, 4])."""
    rng = np.random.default_rng(1)
    lab = np.array([[2.0, 0.3], [2.2, -0.3], [-2.0, 0.2], [-1.8, -0.2]], dtype=np.float32)
    lab_y = np.array([0, 0, 1, 1])
    far_x = rng.uniform(2, 4, size=20) * rng.choice([-1, 1], size=20)
    far = np.stack([far_x, rng.uniform(-1, 1, size=20)], axis=1)
    source = np.concatenate([lab, np.array(NEAR), far]).astype(np.float32)
    ctx = feature_context(
        boundary_model(),
        source,
        lab_y if labelled else lab_y[:0],
        4,
        seed=seed,
        batch_size=8,
        build_model=lambda *args, **kwargs: boundary_model(),
    )
    return ctx, len(NEAR)


# ---------------------------------------------------------------- equations by hand


def test_optimal_alpha_matches_equation_5_by_hand_and_is_clipped() -> None:
    z_u = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    anchor = torch.tensor([2.0, 1.0])
    grads = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    alpha = optimal_alpha(z_u, anchor, grads, epsilon=1.0)
    # epsilon ||z* - z_u|| / ||g|| = sqrt(5) / sqrt(2); g / (z* - z_u) = (0.5, +-1)
    scale = math.sqrt(5) / math.sqrt(2)
    expected = torch.tensor([[0.5 * scale, 1.0], [0.5 * scale, 0.0]])  # clipped to [0, 1]
    torch.testing.assert_close(alpha, expected)
    small = optimal_alpha(z_u, anchor, grads, epsilon=0.2)
    assert small.max() <= 0.2 and small.min() >= 0.0
    torch.testing.assert_close(small[0], torch.tensor([0.1 * scale, 0.2]))  # 0.2 scale > cap


def test_alpha_is_zero_where_mixing_cannot_move_or_the_gradient_vanishes() -> None:
    z_u = torch.tensor([[1.0, 0.0]])
    anchor = torch.tensor([1.0, 3.0])  # same first coordinate
    alpha = optimal_alpha(z_u, anchor, torch.tensor([[1.0, 1.0]]), epsilon=0.5)
    assert alpha[0, 0] == 0.0 and alpha[0, 1] > 0
    assert optimal_alpha(z_u, anchor, torch.zeros(1, 2), epsilon=0.5).abs().sum() == 0


def test_mix_interpolates_per_dimension() -> None:
    mixed = mix(torch.tensor([[0.0, 4.0]]), torch.tensor([2.0, 0.0]), torch.tensor([[0.5, 0.25]]))
    torch.testing.assert_close(mixed, torch.tensor([[1.0, 3.0]]))


def test_loss_gradients_match_the_softmax_closed_form() -> None:
    head = nn.Linear(3, 4)
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    grads, pseudo = loss_gradients(head, z)
    probs = torch.softmax(head(z), dim=1).detach()
    expected = (probs - torch.nn.functional.one_hot(pseudo, 4)) @ head.weight.detach()
    torch.testing.assert_close(grads, expected)
    assert head.weight.grad is None  # the scoring model is read-only


def test_anchors_are_class_means() -> None:
    z = torch.tensor([[0.0, 0.0], [2.0, 2.0], [5.0, 1.0]])
    anchors, classes = class_anchors(z, torch.tensor([1, 1, 3]), num_classes=4)
    assert classes.tolist() == [1, 3]
    torch.testing.assert_close(anchors, torch.tensor([[1.0, 1.0], [5.0, 1.0]]))


# ---------------------------------------------------------------- selection


def test_only_boundary_candidates_change_prediction() -> None:
    ctx, near = toy_context()
    embeddings = torch.as_tensor(ctx.candidates.inputs(slice(None)))
    anchors = torch.tensor([[2.1, 0.0], [-1.9, 0.0]])
    changed = prediction_changes(ctx.model.head, embeddings, anchors, epsilon=0.2)
    assert changed[:near].all()
    assert not changed[near:].any()


def test_boundary_candidates_are_picked() -> None:
    ctx, near = toy_context()
    picks = build_strategy("alfa_mix").select(ctx, near)
    assert sorted(picks.tolist()) == list(range(near))


def test_more_candidates_than_budget_are_clustered() -> None:
    ctx, near = toy_context()
    picks = build_strategy("alfa_mix").select(ctx, 2)
    assert len(set(picks.tolist())) == 2
    assert set(picks.tolist()) <= set(range(near))


@pytest.mark.parametrize("fill", ["random", "entropy"])
def test_a_larger_budget_is_filled(fill: str) -> None:
    ctx, near = toy_context()
    options = {"fill": fill, "grow_epsilon": False}
    picks = build_strategy("alfa_mix", options).select(ctx, near + 3)
    assert len(set(picks.tolist())) == near + 3
    assert sorted(picks[:near].tolist()) == list(range(near))
    if fill == "entropy":  # the next picks are the far candidates closest to the boundary
        x0 = np.abs(ctx.candidates.inputs(slice(None)).numpy()[:, 0])
        closest = near + np.argsort(x0[near:], kind="stable")[:3]
        assert sorted(picks[near:].tolist()) == sorted(closest.tolist())


def test_a_grown_bound_reaches_far_candidates_for_a_large_budget() -> None:
    ctx, near = toy_context()
    hidden = torch.as_tensor(ctx.candidates.inputs(slice(None)))
    assert ALFAMix().candidate_set(ctx, hidden, near + 3).sum() >= near + 3


def test_without_labels_the_budget_is_filled_at_random() -> None:
    ctx, _ = toy_context(labelled=False)
    picks = build_strategy("alfa_mix").select(ctx, 5)
    assert len(set(picks.tolist())) == 5


def test_larger_epsilon_finds_at_least_as_many_candidates() -> None:
    ctx, _ = toy_context()
    hidden = torch.as_tensor(ctx.candidates.inputs(slice(None)))
    small = ALFAMix({"epsilon": 0.05, "grow_epsilon": False}).candidate_set(ctx, hidden, 4)
    large = ALFAMix({"epsilon": 1.0, "grow_epsilon": False}).candidate_set(ctx, hidden, 4)
    assert small.sum() <= large.sum()
    assert not (small & ~large).any()


def test_the_bound_grows_until_the_budget_is_reached() -> None:
    ctx, near = toy_context()
    hidden = torch.as_tensor(ctx.candidates.inputs(slice(None)))
    fixed = ALFAMix({"epsilon": 0.01, "grow_epsilon": False}).candidate_set(ctx, hidden, near)
    assert not fixed.any()  # 1% of the way to the other class's anchor flips nothing
    grown = ALFAMix({"epsilon": 0.01}).candidate_set(ctx, hidden, near)
    assert grown.nonzero().flatten().tolist() == list(range(near))  # stops before far ones
    picks = ALFAMix({"epsilon": 0.01}).select(ctx, near)
    assert sorted(picks.tolist()) == list(range(near))


def test_epsilons_tried() -> None:
    assert ALFAMix({"epsilon": 0.3}).epsilons() == pytest.approx([0.3, 0.6, 0.9, 1.0])
    assert ALFAMix({"epsilon": 0.25}).epsilons() == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert ALFAMix({"epsilon": 0.3, "grow_epsilon": False}).epsilons() == [0.3]
