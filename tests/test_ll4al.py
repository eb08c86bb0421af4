"""LL4AL: equation 2 by hand, the module learns the ranking of the scoring model's
losses, selection by predicted loss, random subset, state and the read-only model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from strategy_context import feature_context, make_context
from torch import nn

from fedal.models import Classifier
from fedal.schema import ConfigError
from strategies import build_strategy
from strategies.base import RoundContext
from strategies.ll4al import LearningLoss, LossPredictionModule, margin_ranking_loss


def line_context(seed: int = 0) -> RoundContext:
    """2-D points, head logits ``(x0, -x0)``; 60 labelled points all of class 0 with x0
    uniform in [-3, 3] (the loss falls as x0 grows); 30 candidates on the same line."""
    rng = np.random.default_rng(seed)
    labelled = np.stack([rng.uniform(-3, 3, 60), rng.uniform(-0.1, 0.1, 60)], axis=1)
    candidates = np.stack([np.linspace(-3, 3, 30), np.zeros(30)], axis=1)
    source = np.concatenate([labelled, candidates]).astype(np.float32)
    model = Classifier(nn.Identity(), embedding_dim=2, num_classes=2, dropout=0.0)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        model.head.bias.zero_()
    labels = np.zeros(60, dtype=np.int64)
    return feature_context(model.eval(), source, labels, 60, seed=seed, batch_size=16)


def test_margin_ranking_loss_matches_equation_2_by_hand() -> None:
    predicted = torch.tensor([0.5, 2.0, 1.0, 0.0, 9.0])  # pairs (0.5, 1.0), (2.0, 0.0)
    target = torch.tensor([3.0, 1.0, 2.0, 0.5, 7.0])  # l_p > l_q in both pairs
    # pair 1: max(0, -(0.5 - 1.0) + 1) = 1.5; pair 2: max(0, -(2.0 - 0.0) + 1) = 0
    assert margin_ranking_loss(predicted, target).item() == pytest.approx(0.75)
    assert margin_ranking_loss(predicted, target, margin=0.0).item() == pytest.approx(0.25)
    assert margin_ranking_loss(predicted[:1], target[:1]).item() == 0.0
    tied = torch.tensor([1.0, 1.0])  # l_p = l_q counts as l_p < l_q: max(0, (2 - 0) + 1)
    assert margin_ranking_loss(torch.tensor([2.0, 0.0]), tied).item() == pytest.approx(3.0)


def test_module_predicts_one_loss_per_embedding() -> None:
    assert LossPredictionModule(5, 7)(torch.randn(4, 5)).shape == (4,)


def test_fit_learns_the_ranking_and_selection_takes_the_largest_predicted_losses() -> None:
    ctx = line_context()
    strategy = LearningLoss({"epochs": 100, "batch_size": 20, "lr": 0.01})
    strategy.fit(ctx)
    predicted = strategy.predicted_losses(ctx, np.arange(30))
    # the candidates' x0 grows with their position, so their loss for class 0 falls
    order = torch.argsort(predicted, descending=True)
    ranks = torch.empty(30)
    ranks[order] = torch.arange(30, dtype=torch.float)
    spearman = np.corrcoef(ranks.numpy(), np.arange(30))[0, 1]
    assert spearman > 0.9
    assert set(strategy.select(ctx, 5).tolist()) <= set(range(8))


def test_random_subset_has_the_configured_size() -> None:
    ctx = line_context()
    strategy = LearningLoss({"subset_size": 10})
    subset = strategy.random_subset(ctx, 4)
    assert len(subset) == 10 and np.all(np.diff(subset) > 0)
    assert len(strategy.random_subset(ctx, 12)) == 12  # enlarged to the budget
    assert len(LearningLoss({"subset_size": 0}).random_subset(ctx, 4)) == 30


def test_fit_leaves_the_scoring_model_untouched_and_state_round_trips() -> None:
    ctx = make_context(labelled=12, candidates=24, protected=12, seed=1)
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    strategy = build_strategy("ll4al")
    strategy.fit(ctx)
    for key, value in ctx.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in ctx.model.parameters())
    restored = build_strategy("ll4al")
    restored.load_state_dict(strategy.state_dict())
    np.testing.assert_array_equal(
        strategy.select(make_context(labelled=12, candidates=24, protected=12, seed=2), 5),
        restored.select(make_context(labelled=12, candidates=24, protected=12, seed=2), 5),
    )


def test_bad_options_fail_with_the_field_name() -> None:
    with pytest.raises(ConfigError, match="margin"):
        build_strategy("ll4al", {"margin": -1})
