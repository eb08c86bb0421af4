"""PAL: equations 1, 3 and 4 by hand on tiny tensors, and the strategy's sub-query loop."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from strategy_context import make_context

from fedal.schema import ConfigError
from strategies import build_strategy
from strategies.base import RoundContext, top_k
from strategies.pal import PretextActiveLearning, subquery_sizes
from strategies.pal_heads import (
    PretextScorer,
    classification_score,
    finetune_rotation_head,
    hybrid_score,
    multitask_loss,
    rotate_all,
    rotation_score,
    rotation_targets,
    variant_weights,
)
from strategies.scoring import predict_logits

FAST = {"epochs": 2, "batch_size": 16}

# ---------------------------------------------------------------- equations by hand


def softmax_list(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


@pytest.mark.parametrize("logits", [[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [5.0, 5.0, -3.0]])
def test_classification_score_is_minus_kl_from_uniform(logits: list[float]) -> None:
    probs = softmax_list(logits)
    kl_uniform_to_p = sum(1 / 3 * math.log((1 / 3) / p) for p in probs)
    got = classification_score(torch.tensor([logits]))
    assert got.item() == pytest.approx(-kl_uniform_to_p, abs=1e-6)


def test_classification_score_is_zero_when_uniform_and_falls_with_confidence() -> None:
    scores = classification_score(torch.tensor([[0.0, 0.0], [1.0, 0.0], [8.0, 0.0]]))
    assert scores[0].item() == pytest.approx(0.0)
    assert scores[0] > scores[1] > scores[2]


def test_rotation_score_sums_the_probabilities_of_the_applied_rotations() -> None:
    # one sample; row i = logits the head gives to the image rotated by 90i degrees
    rows = [[2.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 4.0]]
    correct = [softmax_list(row)[i] for i, row in enumerate(rows)]
    assert rotation_score(torch.tensor([rows])).item() == pytest.approx(-sum(correct))


def test_rotation_score_ranges_from_minus_four_to_zero() -> None:
    certain = torch.eye(4).mul(50.0).unsqueeze(0)  # every rotation recognised
    wrong = torch.eye(4).roll(1, dims=1).mul(50.0).unsqueeze(0)  # every rotation mistaken
    uniform = torch.zeros(1, 4, 4)
    scores = rotation_score(torch.cat([certain, wrong, uniform]))
    assert scores.tolist() == pytest.approx([-4.0, 0.0, -1.0], abs=1e-6)


def test_rotations_are_stacked_by_quarter_turns_with_matching_targets() -> None:
    image = torch.arange(4.0).view(1, 1, 2, 2)  # [[0, 1], [2, 3]]
    stacked = rotate_all(torch.cat([image, image + 10]))
    assert stacked.shape == (8, 1, 2, 2)
    assert stacked[2, 0].tolist() == [[1.0, 3.0], [0.0, 2.0]]  # 90 degrees counter-clockwise
    assert torch.equal(stacked[4], torch.rot90(image[0], 2, dims=(1, 2)))
    assert rotation_targets(2).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="square"):
        rotate_all(torch.zeros(1, 1, 2, 3))


def test_hybrid_score_is_equation_3_then_equation_4() -> None:
    s_s, s_c, s_d = torch.tensor([-1.0, -3.0]), torch.tensor([-0.5, -2.0]), torch.tensor([-2.0, 0])
    assert hybrid_score(s_s, s_c, 0.5).tolist() == [-1.25, -4.0]
    assert hybrid_score(s_s, s_c, 0.5, s_d, 2.0).tolist() == [-5.25, -4.0]


@pytest.mark.parametrize(
    ("variant", "weights"),
    [("self_supervision", (0.0, 0.0)), ("plus_classification", (0.7, 0.0)), ("full", (0.7, 2.0))],
)
def test_ablation_variants_set_the_score_weights(
    variant: str, weights: tuple[float, float]
) -> None:
    assert variant_weights(variant, 0.7, 2.0) == weights


def test_subquery_sizes_split_the_budget_evenly() -> None:
    assert subquery_sizes(10, 3) == [4, 3, 3]
    assert subquery_sizes(2, 5) == [1, 1]
    assert subquery_sizes(0, 3) == []


def test_finetuning_a_head_copy_teaches_it_the_chosen_rotations() -> None:
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(6, 4, 8, generator=generator)
    torch.manual_seed(0)  # the head's initial weights, whatever ran before this test
    head = torch.nn.Linear(8, 4)
    original = copy.deepcopy(head.state_dict())
    tuned = copy.deepcopy(head)
    finetune_rotation_head(tuned, torch.optim.SGD(tuned.parameters(), lr=0.5), embeddings, 100)
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in original.items())
    with torch.no_grad():
        before, after = rotation_score(head(embeddings)), rotation_score(tuned(embeddings))
    # S_D: the chosen samples now look familiar (fine-tuning lowers their mean CE, so
    # the mean score drops; a single sample may still rise a little)
    assert after.mean() < before.mean() - 0.25
    assert (after < before).sum() >= 5


# ---------------------------------------------------------------- the strategy


def scorer_of(strategy: PretextActiveLearning, ctx: RoundContext) -> PretextScorer:
    """The strategy's scoring network rebuilt from its state."""
    network = PretextScorer(ctx.build_model("resnet8"))
    network.load_state_dict(strategy.state_dict())
    return network.eval()


def candidate_scores(
    strategy: PretextActiveLearning, ctx: RoundContext
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidate rotation embeddings, S_S and S_C from the rebuilt scoring network."""
    network = scorer_of(strategy, ctx)
    embeddings = predict_logits(network, ctx.candidates, ctx.device, 16)
    with torch.no_grad():
        s_s = rotation_score(network.rotation_head(embeddings))
        s_c = classification_score(network.classifier.head(embeddings[:, 0]))
    return embeddings, s_s, s_c


def fitted(options: dict[str, object], seed: int = 0) -> tuple[PretextActiveLearning, RoundContext]:
    ctx = make_context(seed=seed)
    strategy = build_strategy("pal", {**FAST, **options})
    assert isinstance(strategy, PretextActiveLearning)
    strategy.fit(ctx)
    return strategy, ctx


def test_training_teaches_the_rotations_of_the_labelled_images() -> None:
    ctx = make_context()
    strategy = build_strategy("pal", {"epochs": 0})
    strategy.fit(ctx)
    network = scorer_of(strategy, ctx)
    inputs, targets = ctx.labelled.inputs(slice(None)), ctx.labelled.targets(slice(None))
    with torch.no_grad():
        before = multitask_loss(network.train(), inputs, targets).item()
    strategy = build_strategy("pal", {"epochs": 15, "batch_size": 20})
    strategy.fit(make_context())
    with torch.no_grad():
        after = multitask_loss(scorer_of(strategy, ctx).train(), inputs, targets).item()
    assert after < 0.5 * before


@pytest.mark.parametrize("variant", ["self_supervision", "plus_classification"])
def test_ablations_without_diversity_take_one_query_by_their_score(variant: str) -> None:
    strategy, ctx = fitted({"variant": variant, "lambda1": 0.5})
    _, s_s, s_c = candidate_scores(strategy, ctx)
    want = s_s if variant == "self_supervision" else s_s + 0.5 * s_c
    chunks = strategy.select_subqueries(ctx, 7)
    assert len(chunks) == 1
    np.testing.assert_array_equal(chunks[0], top_k(want, 7))


def test_full_pal_fine_tunes_a_head_copy_between_sub_queries() -> None:
    options = {"subqueries": 2, "lambda1": 0.5, "lambda2": 2.0, "finetune_steps": 5}
    strategy, ctx = fitted(options)
    embeddings, s_s, s_c = candidate_scores(strategy, ctx)
    first, second = strategy.select_subqueries(ctx, 9)
    np.testing.assert_array_equal(first, top_k(s_s + 0.5 * s_c, 5))
    head = copy.deepcopy(scorer_of(strategy, ctx).rotation_head)
    optimizer = strategy.options.optimizer(head)
    finetune_rotation_head(head, optimizer, embeddings[np.sort(first)], 5)
    with torch.no_grad():
        s_d = rotation_score(head(embeddings))
    equation_4 = (s_s + 0.5 * s_c + 2.0 * s_d).index_fill(0, torch.from_numpy(first), -torch.inf)
    np.testing.assert_array_equal(second, top_k(equation_4, 4))


def test_sub_queries_partition_the_selection() -> None:
    strategy, ctx = fitted({"subqueries": 3})
    chunks = strategy.select_subqueries(ctx, 10)
    assert [len(chunk) for chunk in chunks] == [4, 3, 3]
    union = np.concatenate(chunks)
    assert len(np.unique(union)) == 10
    np.testing.assert_array_equal(strategy.select(ctx, 10), union)


def test_select_leaves_the_scoring_network_unchanged() -> None:
    strategy, ctx = fitted({"finetune_steps": 10})
    before = strategy.state_dict()
    strategy.select(ctx, 12)
    after = strategy.state_dict()
    assert all(torch.equal(value, after[key]) for key, value in before.items())


def test_select_without_fit_returns_the_contracted_count() -> None:
    ctx = make_context(candidates=12)
    strategy = build_strategy("pal")
    assert strategy.select(ctx, 0).shape == (0,)
    picks = strategy.select(ctx, 5)
    assert picks.dtype == np.int64 and len(np.unique(picks)) == 5
    assert sorted(strategy.select(ctx, 50).tolist()) == list(range(12))


def test_state_round_trip_restores_identical_selections() -> None:
    trained, _ = fitted({})
    state = trained.state_dict()
    assert any(key.startswith("rotation_head.") for key in state)
    restored = build_strategy("pal", FAST)
    restored.load_state_dict(state)
    assert restored.state_dict().keys() == state.keys()  # kept while nothing is built
    ctx, same = make_context(seed=4), make_context(seed=4)
    np.testing.assert_array_equal(restored.select(ctx, 8), trained.select(same, 8))


def test_warm_start_continues_and_cold_start_reinitialises() -> None:
    trained, _ = fitted({})
    picks = {}
    for warm in (True, False):
        strategy = build_strategy("pal", {**FAST, "warm_start": warm})
        strategy.load_state_dict(trained.state_dict())
        ctx = make_context(seed=1)
        strategy.fit(ctx)
        picks[warm] = strategy.select(ctx, 8)
    fresh = build_strategy("pal", {**FAST, "warm_start": False})
    ctx = make_context(seed=1)
    fresh.fit(ctx)
    np.testing.assert_array_equal(picks[False], fresh.select(ctx, 8))
    assert not np.array_equal(picks[True], picks[False])


def test_deterministic_and_global_rng_untouched() -> None:
    before = torch.get_rng_state()
    picks = [fitted({}, seed=3)[0].select(make_context(seed=3), 6) for _ in range(2)]
    np.testing.assert_array_equal(picks[0], picks[1])
    assert torch.equal(torch.get_rng_state(), before)


def test_fit_copes_with_an_empty_labelled_set() -> None:
    ctx = make_context(labelled=0)
    strategy = build_strategy("pal", FAST)
    strategy.fit(ctx)
    assert len(strategy.select(ctx, 4)) == 4


def test_non_image_inputs_are_rejected_clearly() -> None:
    ctx = make_context()
    features = ctx.candidates.source.reshape(-1, 64).astype(np.float32)
    flat = dataclasses.replace(ctx.candidates, source=features)
    strategy = build_strategy("pal", {"backbone": "mlp"})
    with pytest.raises(ValueError, match="square images"):
        strategy.select(dataclasses.replace(ctx, candidates=flat), 3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"variant": "diversity_only"},
            "query.options.variant: 'diversity_only' is not allowed; "
            "allowed: self_supervision, plus_classification, full",
        ),
        (
            {"subqueries": 0},
            "query.options.subqueries: 0 is not allowed; allowed: an integer >= 1",
        ),
        ({"lambda1": -1.0}, "query.options.lambda1: -1.0 is not allowed; allowed: a number >= 0"),
        (
            {"finetune_steps": -1},
            "query.options.finetune_steps: -1 is not allowed; allowed: an integer >= 0",
        ),
        (
            {"backbone": "vgg"},
            "query.options.backbone: 'vgg' is not allowed; "
            "allowed: cnn, mlp, resnet8, resnet14, resnet18",
        ),
        ({"lr": 0.0}, "query.options.lr: 0.0 is not allowed; allowed: a number > 0"),
        (
            {"rounds": 3},
            "query.options.rounds=3: unknown field; "
            "allowed: augment, backbone, batch_size, epochs, finetune_steps, lambda1, lambda2, "
            "lr, momentum, subqueries, variant, warm_start, weight_decay",
        ),
    ],
)
def test_invalid_options_are_rejected_in_one_line(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_strategy("pal", options)
    assert str(error.value) == message
