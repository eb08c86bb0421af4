"""Baseline acquisition scores against hand computations on tiny inputs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from strategy_context import make_context
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from fedal.schema import ConfigError
from strategies import build_strategy
from strategies.badge import gradient_space
from strategies.bald import bald_scores
from strategies.committee import (
    consensus_entropy_scores,
    kl_to_consensus_scores,
    vote_entropy_scores,
)
from strategies.coreset import greedy_k_center
from strategies.distances import (
    EuclideanSpace,
    kmeans_plus_plus,
    nearest_centres,
    sq_distances_to,
)
from strategies.kmeans import lloyd, nearest_distinct
from strategies.least_confidence import least_confidence_scores
from strategies.margin import margin_scores
from strategies.mc_dropout import mc_dropout_probs
from strategies.scoring import predict_embeddings, predict_probs

PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
# Two members (rows of the first axis) on three inputs.
MEMBERS = torch.tensor(
    [
        [[1.0, 0.0], [0.5, 0.5], [0.8, 0.2]],
        [[0.0, 1.0], [0.5, 0.5], [0.4, 0.6]],
    ]
)


def close(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------ uncertainty


def test_least_confidence_is_one_minus_the_top_probability() -> None:
    close(least_confidence_scores(PROBS), [0.3, 0.6])


def test_margin_is_the_gap_between_the_top_two_probabilities() -> None:
    close(margin_scores(PROBS), [0.5, 0.05])


def test_margin_selects_the_smallest_margins() -> None:
    ctx = make_context(seed=0)
    margins = margin_scores(predict_probs(ctx.model, ctx.candidates, ctx.device, ctx.batch_size))
    picks = build_strategy("margin").select(ctx, 4)
    np.testing.assert_array_equal(picks, np.argsort(margins.numpy(), kind="stable")[:4])


def test_bald_is_entropy_of_the_mean_minus_mean_entropy() -> None:
    # Confident but opposite members: H[mean] = ln 2, mean H = 0.
    # Identical uniform members: ln 2 - ln 2 = 0.
    h_mean = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4))
    h_members = (
        -(0.8 * math.log(0.8) + 0.2 * math.log(0.2)) - (0.4 * math.log(0.4) + 0.6 * math.log(0.6))
    ) / 2
    close(bald_scores(MEMBERS), [math.log(2), 0.0, h_mean - h_members])


def test_vote_entropy_uses_the_members_argmax_votes() -> None:
    three = torch.tensor([[[0.9, 0.1]], [[0.6, 0.4]], [[0.3, 0.7]]])
    close(vote_entropy_scores(three), [-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))])
    close(vote_entropy_scores(MEMBERS[:, :1]), [math.log(2)])


def test_consensus_entropy_is_the_entropy_of_the_mean_prediction() -> None:
    h_mean = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4))
    close(consensus_entropy_scores(MEMBERS), [math.log(2), math.log(2), h_mean])


def test_kl_to_consensus_is_the_mean_member_divergence() -> None:
    kl = 0.5 * (
        0.8 * math.log(0.8 / 0.6)
        + 0.2 * math.log(0.2 / 0.4)
        + 0.4 * math.log(0.4 / 0.6)
        + 0.6 * math.log(0.6 / 0.4)
    )
    close(kl_to_consensus_scores(MEMBERS), [math.log(2), 0.0, kl])
    # With the committee's own mean as consensus, the mean KL is BALD's information gain.
    torch.testing.assert_close(kl_to_consensus_scores(MEMBERS), bald_scores(MEMBERS))


# ------------------------------------------------------------------------ MC dropout


def test_mc_dropout_samples_dropout_with_batchnorm_in_eval_mode() -> None:
    ctx = make_context(dropout=0.5)
    modes: dict[str, list[bool]] = {"bn": [], "dropout": []}
    # Hooks are deep-copied with the model, so they also report on the strategy's copy.
    for module in ctx.model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_hook(lambda m, *_: modes["bn"].append(m.training))
        if isinstance(module, nn.Dropout):
            module.register_forward_hook(lambda m, *_: modes["dropout"].append(m.training))
    before = {name: value.clone() for name, value in ctx.model.state_dict().items()}
    rng_before = torch.get_rng_state()

    probs = mc_dropout_probs(ctx, samples=4)

    assert probs.shape == (4, len(ctx.candidates), ctx.num_classes)
    assert not torch.allclose(probs[0], probs[1])
    assert modes["bn"] and not any(modes["bn"])
    assert modes["dropout"] and all(modes["dropout"])
    assert not ctx.model.training
    for name, value in ctx.model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_mc_dropout_depends_only_on_the_round_generator() -> None:
    first = mc_dropout_probs(make_context(seed=1), samples=3)
    second = mc_dropout_probs(make_context(seed=1), samples=3)
    other = mc_dropout_probs(make_context(seed=2), samples=3)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("name", ["bald", "vote_entropy", "consensus_entropy", "kl_to_consensus"])
def test_mc_dropout_strategies_reject_a_model_without_dropout(name: str) -> None:
    with pytest.raises(ValueError, match=r"model\.dropout > 0"):
        build_strategy(name).select(make_context(dropout=0.0), 3)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        (
            "bald",
            {"samples": 0},
            "query.options.samples: 0 is not allowed; allowed: an integer >= 1",
        ),
        (
            "vote_entropy",
            {"members": 0},
            "query.options.members: 0 is not allowed; allowed: an integer >= 1",
        ),
        (
            "kmeans",
            {"chunk_size": 0},
            "query.options.chunk_size: 0 is not allowed; allowed: an integer >= 1",
        ),
        ("entropy", {"samples": 3}, "query.options.samples=3: unknown field; allowed: (none)"),
    ],
)
def test_invalid_options_are_rejected_in_one_line(
    name: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        build_strategy(name, options)
    assert str(error.value) == message


# ------------------------------------------------------------------------ distances


def test_chunked_nearest_centres_equal_the_explicit_computation() -> None:
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(50, 6, generator=generator, dtype=torch.float64)
    centres = torch.randn(13, 6, generator=generator, dtype=torch.float64)
    explicit = torch.cdist(points, centres) ** 2

    min_sq, arg = nearest_centres(EuclideanSpace(points), EuclideanSpace(centres), chunk_size=4)

    torch.testing.assert_close(min_sq, explicit.min(dim=1).values)
    torch.testing.assert_close(arg, explicit.argmin(dim=1))
    to_point = sq_distances_to(EuclideanSpace(points), 7, chunk_size=2)  # blocks of 4 rows
    torch.testing.assert_close(to_point, torch.cdist(points, points[7:8])[:, 0] ** 2)


def test_identical_points_are_at_distance_exactly_zero() -> None:
    points = torch.full((5, 3), 0.1, dtype=torch.float64)
    min_sq, _ = nearest_centres(EuclideanSpace(points), EuclideanSpace(points[:1]))
    assert torch.equal(min_sq, torch.zeros(5, dtype=torch.float64))


def test_badge_factorised_distances_equal_explicit_gradient_embeddings() -> None:
    generator = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(7, 4, generator=generator, dtype=torch.float64), dim=1)
    hidden = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    residual = probs - nn.functional.one_hot(probs.argmax(dim=1), 4).double()
    explicit = (residual[:, :, None] * hidden[:, None, :]).reshape(7, 4 * 5)  # N x (C d)
    space = gradient_space(probs, hidden)
    centres = torch.tensor([0, 3, 5])

    min_sq, arg = nearest_centres(space, space.take(centres), chunk_size=2)

    expected = torch.cdist(explicit, explicit[centres]) ** 2
    torch.testing.assert_close(space.sq_norms, (explicit**2).sum(dim=1))
    torch.testing.assert_close(min_sq, expected.min(dim=1).values)
    torch.testing.assert_close(arg, expected.argmin(dim=1))


# ------------------------------------------------------------------------ diversity


def line(*xs: float) -> EuclideanSpace:
    """Points on the real line."""
    return EuclideanSpace(torch.tensor(xs, dtype=torch.float64).unsqueeze(1))


def test_greedy_k_center_adds_the_farthest_candidate_each_time() -> None:
    candidates = line(1.0, 2.0, 10.0, 6.0)
    min_sq = nearest_centres(candidates, line(0.0))[0]  # labelled centre at 0
    # 10 is farthest from {0}; then 6 (4 from 10) comes before 2 (2 from 0).
    np.testing.assert_array_equal(greedy_k_center(candidates, min_sq, 3, chunk_size=2), [2, 3, 1])


def test_coreset_without_labels_starts_farthest_from_the_mean_embedding() -> None:
    ctx = make_context(labelled=0)
    hidden, _ = predict_embeddings(ctx.model, ctx.candidates, ctx.device, ctx.batch_size)
    farthest = int(((hidden - hidden.mean(dim=0)) ** 2).sum(dim=1).argmax())
    assert build_strategy("coreset").select(ctx, 3)[0] == farthest


def test_badge_starts_from_the_largest_gradient_norm() -> None:
    ctx = make_context()
    hidden, logits = predict_embeddings(ctx.model, ctx.candidates, ctx.device, ctx.batch_size)
    norms = gradient_space(torch.softmax(logits.double(), dim=1), hidden.double()).sq_norms
    assert build_strategy("badge").select(ctx, 3)[0] == int(norms.argmax())


def test_kmeans_plus_plus_never_repeats_and_fills_duplicates_at_random() -> None:
    space = line(*([4.0] * 6))
    picks = kmeans_plus_plus(space, 4, first=2, rng=np.random.default_rng(0))
    assert picks[0] == 2
    assert len(set(picks.tolist())) == 4


def test_kmeans_plus_plus_draws_proportionally_to_d_squared() -> None:
    space = line(0.0, 0.0, 1.0, 3.0)
    draws = [
        kmeans_plus_plus(space, 2, first=0, rng=np.random.default_rng(seed))[1]
        for seed in range(400)
    ]
    counts = np.bincount(draws, minlength=4)
    assert counts[1] == 0  # D^2 = 0: a duplicate of the first centre
    assert counts[3] > 5 * counts[2]  # D^2 = 9 against 1


def test_lloyd_and_nearest_distinct_pick_one_point_per_cluster() -> None:
    space = line(0.0, 0.1, 0.2, 10.0, 10.1, 10.2)
    centroids = lloyd(space, space.points[[0, 1]], iterations=10, chunk_size=4)
    torch.testing.assert_close(centroids.squeeze(1), torch.tensor([0.1, 10.1], dtype=torch.float64))
    np.testing.assert_array_equal(nearest_distinct(space, centroids, chunk_size=4), [1, 4])


def test_nearest_distinct_never_repeats_a_point() -> None:
    space = line(0.0, 5.0)
    centroids = torch.zeros(2, 1, dtype=torch.float64)
    np.testing.assert_array_equal(nearest_distinct(space, centroids, chunk_size=4), [0, 1])


class ScalarReads(TorchDispatchMode):
    """Counts tensor values read into Python (``int(t)``, ``t.item()``): on a GPU each
    one waits for the device to finish everything queued before it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["coreset", "badge", "kmeans"])
def test_diversity_selection_reads_no_value_back_per_pick(name: str) -> None:
    """Greedy k-center, k-means++ and the nearest distinct candidates keep each pick on
    the device: selecting 40 reads as many values back as selecting 4. (This counts
    scalar reads only; a whole-tensor copy to the host, as k-means++ once made per
    centre, is invisible on the CPU, so for BADGE it guards only against scalar reads.)"""
    reads = {}
    for budget in (4, 40):
        ctx = make_context(labelled=20, candidates=120)
        with ScalarReads() as counter:
            picks = build_strategy(name).select(ctx, budget)
        assert len(np.unique(picks)) == budget
        reads[budget] = counter.count
    assert reads[40] == reads[4]
