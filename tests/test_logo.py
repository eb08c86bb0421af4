"""LoGo: the macro step's gradient embedding by hand, the micro step's cluster-wise pick
and its empty-cluster filling, and both steps together on three 2-D blobs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from strategy_context import feature_context, make_context
from torch import nn

from fedal.models import Classifier
from strategies import build_strategy
from strategies.base import RoundContext
from strategies.logo import LoGo, cluster_round_robin, hallucinated_gradients

BLOBS = {
    (0.0, 0.0): [(0.3, 0.2), (0.1, -0.3), (0.5, 0.1), (-0.4, 0.3)],
    (10.0, 0.0): [(10.2, 0.1), (9.6, -0.2), (10.4, 0.3), (9.9, 0.4)],
    (0.0, 10.0): [(0.2, 10.1), (-0.05, 9.8), (0.3, 10.3), (-0.25, 9.7)],
}
"""Candidates in three far-apart groups; in each, the second has the smallest |x0|."""


def linear_model(weight: list[list[float]]) -> Classifier:
    """Identity embedding of 2-D points and a bias-free linear head."""
    model = Classifier(nn.Identity(), embedding_dim=2, num_classes=len(weight), dropout=0.0)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor(weight))
        model.head.bias.zero_()
    return model.eval()


def blob_context(seed: int) -> RoundContext:
    """Candidates: :data:`BLOBS`. The local-only model (``build_model``) predicts uniformly,
    so its gradient embeddings are the points scaled by ``-(1 - 1/2)``. The global model's
    logits are ``(0.01 x0, 0)``: in each blob the point of smallest |x0| is the most
    uncertain one."""
    points = [point for blob in BLOBS.values() for point in blob]
    labelled = [(1.0, 1.0), (9.0, 1.0)]
    source = np.array(labelled + points, dtype=np.float32)
    return feature_context(
        linear_model([[1.0, 0.0], [0.0, 1.0]]),
        source,
        np.array([0, 1]),
        len(labelled),
        seed=seed,
        batch_size=4,
        build_model=lambda *args, **kwargs: linear_model([[0.0, 0.0], [0.0, 0.0]]),
        global_model=linear_model([[0.01, 0.0], [0.0, 0.0]]),
    )


# ---------------------------------------------------------------- macro step


def test_gradient_embedding_is_the_predicted_row_of_the_last_layer_gradient() -> None:
    hidden = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    logits = torch.tensor([[0.0, np.log(3.0)], [0.0, 0.0]])  # p = (1/4, 3/4) and (1/2, 1/2)
    expected = torch.tensor([[-0.25, -0.5], [-1.5, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(hallucinated_gradients(hidden, logits), expected)
    # autograd: dCE(x, argmax)/dW row argmax
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.0, 0.0], [np.log(3.0), 0.0]]))
    x = torch.tensor([[1.0, 0.0]])
    nn.functional.cross_entropy(head(x), torch.tensor([1])).backward()
    assert head.weight.grad is not None
    torch.testing.assert_close(
        hallucinated_gradients(x, head(x).detach())[0].float(), head.weight.grad[1]
    )


# ---------------------------------------------------------------- micro step


def test_each_cluster_gives_its_most_uncertain_candidate() -> None:
    clusters = np.array([0, 0, 1, 1, 1])
    uncertainty = np.array([0.1, 0.5, 0.3, 0.3, 0.9])
    assert cluster_round_robin(clusters, uncertainty, 2).tolist() == [1, 4]


def test_empty_clusters_are_filled_round_by_round_and_ties_go_to_the_lower_position() -> None:
    clusters = np.array([0, 0, 2, 2, 2])  # cluster 1 is empty
    uncertainty = np.array([0.1, 0.5, 0.3, 0.3, 0.9])
    assert cluster_round_robin(clusters, uncertainty, 3).tolist() == [1, 4, 0]
    assert cluster_round_robin(clusters, uncertainty, 4).tolist() == [1, 4, 0, 2]
    assert cluster_round_robin(clusters, uncertainty, 5).tolist() == [1, 4, 0, 2, 3]


# ---------------------------------------------------------------- both steps


@pytest.mark.parametrize("seed", range(4))
def test_one_pick_per_blob_the_one_the_global_model_is_least_sure_about(seed: int) -> None:
    ctx = blob_context(seed)
    strategy = build_strategy("logo", {"epochs": 0})
    strategy.fit(ctx)
    picks = strategy.select(ctx, 3)
    assert sorted(picks.tolist()) == [1, 5, 9]  # the second of each blob


def test_without_a_global_model_field_the_received_model_is_ctx_model() -> None:
    """Under ``query.scoring_model = "global"`` the global model is ``ctx.model``."""
    ctx = blob_context(0)
    as_global = dataclasses.replace(ctx, model=ctx.global_model, global_model=None)
    strategy = build_strategy("logo", {"epochs": 0})
    strategy.fit(as_global)
    assert sorted(strategy.select(as_global, 3).tolist()) == [1, 5, 9]
    helper_only = dataclasses.replace(ctx, global_model=None)  # ctx.model ranks by x1
    strategy.fit(helper_only)
    assert sorted(strategy.select(helper_only, 3).tolist()) != [1, 5, 9]


def test_fit_trains_a_fresh_local_only_model_and_leaves_both_models_alone() -> None:
    ctx = make_context(seed=2)
    assert ctx.global_model is not None
    before = [
        {k: v.clone() for k, v in model.state_dict().items()}
        for model in (ctx.model, ctx.global_model)
    ]
    strategy = LoGo({"backbone": "cnn", "epochs": 2})
    strategy.fit(ctx)
    network = strategy.local_only.get(ctx)
    assert network is not ctx.model and network is not ctx.global_model
    for model, state in zip((ctx.model, ctx.global_model), before, strict=True):
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), key
    first = {k: v.clone() for k, v in network.state_dict().items()}
    strategy.fit(make_context(seed=3))  # a new round starts from new initial weights
    second = strategy.local_only.get(ctx).state_dict()
    assert any(not torch.equal(first[key], second[key]) for key in first)
    assert strategy.state_dict() == {}  # nothing carries over to the next round


def test_an_empty_labelled_set_is_refused() -> None:
    with pytest.raises(ValueError, match="local-only model needs labelled"):
        build_strategy("logo").fit(make_context(labelled=0))
