"""Peer Study Learning: equations 2-6 by hand on tiny tensors, and the strategy's behaviour."""

from __future__ import annotations

import dataclasses
import math
from itertools import permutations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from strategy_context import make_context
from torch import nn

from fedal.models import build_model
from fedal.schema import ConfigError
from fedal.views import InputSpec, SampleView
from strategies import build_strategy
from strategies.base import RoundContext
from strategies.psl_losses import (
    consensus_mask,
    discrepancy,
    in_class_loss,
    margin_ranking_loss,
    sample_pairs,
)
from strategies.scoring import entropy, predict_logits

# ---------------------------------------------------------------- equations by hand


def manual_kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) = sum_c p_c log(p_c / q_c)."""
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def softmax_list(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


@pytest.mark.parametrize("peers", [2, 3])
def test_discrepancy_sums_kl_over_ordered_pairs(peers: int) -> None:
    logits = torch.randn(peers, 5, 4, generator=torch.Generator().manual_seed(peers))
    got = discrepancy(logits)
    for n in range(5):
        probs = [softmax_list(logits[j, n].tolist()) for j in range(peers)]
        want = sum(manual_kl(probs[j], probs[k]) for j, k in permutations(range(peers), 2))
        assert got[n].item() == pytest.approx(want, rel=1e-5)


def test_discrepancy_of_two_peers_is_symmetrised_kl_and_zero_for_one_peer() -> None:
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 0.0]]])
    p, q = softmax_list([2.0, 0.0]), [0.5, 0.5]
    assert discrepancy(logits).item() == pytest.approx(manual_kl(p, q) + manual_kl(q, p))
    assert torch.equal(discrepancy(logits[:1]), torch.zeros(1))


def test_consensus_sets_for_three_peers() -> None:
    # columns: all agree, two agree (0 and 1), two agree (0 and 2), all differ
    predictions = torch.tensor([[1, 0, 2, 0], [1, 0, 0, 1], [1, 2, 2, 2]])
    s_a = consensus_mask(predictions)
    assert s_a.tolist() == [True, True, True, False]
    assert (~s_a).tolist() == [False, False, False, True]  # S_D


def test_consensus_sets_for_two_and_one_peer() -> None:
    assert consensus_mask(torch.tensor([[0, 1], [0, 2]])).tolist() == [True, False]
    assert consensus_mask(torch.tensor([[0, 1, 2]])).tolist() == [False, False, False]


def test_sample_pairs_draws_min_size_distinct_pairs_from_each_set() -> None:
    agreed = torch.tensor([True, False, True, True, False, True])
    rows_a, rows_d = sample_pairs(agreed, torch.Generator().manual_seed(0))
    assert len(rows_a) == len(rows_d) == 2
    assert agreed[rows_a].all() and not agreed[rows_d].any()
    assert sorted(rows_d.tolist()) == [1, 4]
    again = sample_pairs(agreed, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], rows_a) and torch.equal(again[1], rows_d)
    for one_sided in (torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)):
        empty_a, empty_d = sample_pairs(one_sided, torch.Generator().manual_seed(0))
        assert len(empty_a) == len(empty_d) == 0


@pytest.mark.parametrize(
    ("d_disagree", "d_agree", "directional", "paper"),
    [
        (0.3, 0.5, 0.21, 0.0),  # wrong order, far apart: paper variant is satisfied
        (0.5, 0.495, 0.005, 0.005),  # right order, inside the margin
        (0.495, 0.5, 0.015, 0.005),  # wrong order, inside the margin
        (0.9, 0.1, 0.0, 0.0),  # right order beyond the margin
        (0.4, 0.4, 0.01, 0.01),  # tie
    ],
)
def test_margin_ranking_loss_values(
    d_disagree: float, d_agree: float, directional: float, paper: float
) -> None:
    d_d, d_a = torch.tensor([d_disagree]), torch.tensor([d_agree])
    assert margin_ranking_loss(d_d, d_a, 0.01, "directional").item() == pytest.approx(directional)
    assert margin_ranking_loss(d_d, d_a, 0.01, "paper").item() == pytest.approx(paper)


def ranking_gradients(d_disagree: float, d_agree: float, ranking: str) -> tuple[float, float]:
    """d loss / d d_D and d loss / d d_A."""
    d_d = torch.tensor([d_disagree], requires_grad=True)
    d_a = torch.tensor([d_agree], requires_grad=True)
    margin_ranking_loss(d_d, d_a, 0.01, ranking).backward()
    assert d_d.grad is not None and d_a.grad is not None
    return d_d.grad.item(), d_a.grad.item()


def test_directional_ranking_raises_d_disagree_and_lowers_d_agree() -> None:
    # gradient descent moves against the gradient: d_D up, d_A down, in either order
    for d_disagree, d_agree in [(0.495, 0.5), (0.3, 0.5), (0.5, 0.495)]:
        grad_d, grad_a = ranking_gradients(d_disagree, d_agree, "directional")
        assert grad_d < 0 < grad_a


def test_paper_ranking_pushes_apart_in_the_existing_order() -> None:
    grad_d, grad_a = ranking_gradients(0.5, 0.495, "paper")  # d_D > d_A: d_D up, d_A down
    assert grad_d < 0 < grad_a
    grad_d, grad_a = ranking_gradients(0.495, 0.5, "paper")  # d_D < d_A: d_D down, d_A up
    assert grad_a < 0 < grad_d
    assert ranking_gradients(0.3, 0.5, "paper") == (0.0, 0.0)  # beyond the margin


def test_unknown_ranking_is_rejected() -> None:
    with pytest.raises(ValueError, match="ranking"):
        margin_ranking_loss(torch.zeros(1), torch.zeros(1), 0.01, "sideways")


def soft_cross_entropy(teacher: list[float], peer: list[float], tau: float) -> float:
    targets = softmax_list([v / tau for v in teacher])
    predictions = softmax_list([v / tau for v in peer])
    return -sum(t * math.log(p) for t, p in zip(targets, predictions, strict=True))


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_in_class_distillation_term_scales_with_tau_squared(tau: float) -> None:
    teacher, peer = [3.0, 0.5, -1.0], [0.2, 1.5, 0.0]
    got = in_class_loss(
        torch.tensor([peer]), torch.tensor([0]), torch.tensor([teacher]), alpha=1.0, tau=tau
    )
    assert got.item() == pytest.approx(tau**2 * soft_cross_entropy(teacher, peer, tau), rel=1e-5)


def test_in_class_loss_mixes_labels_and_teacher_and_drops_the_teacher_when_absent() -> None:
    generator = torch.Generator().manual_seed(1)
    peer, teacher = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator)
    targets = torch.tensor([0, 1, 2, 1])
    hard = F.cross_entropy(peer, targets)
    soft = in_class_loss(peer, targets, teacher, alpha=1.0, tau=4.0)
    mixed = in_class_loss(peer, targets, teacher, alpha=0.1, tau=4.0)
    assert mixed.item() == pytest.approx((0.9 * hard + 0.1 * soft).item(), rel=1e-6)
    assert in_class_loss(peer, targets, None, alpha=0.1, tau=4.0).item() == pytest.approx(
        hard.item()
    )


# ---------------------------------------------------------------- the strategy

FAST = {"epochs": 2, "batch_size": 16}


def toy_context(seed: int, labelled: int = 20, unlabelled: int = 200) -> RoundContext:
    """Three overlapping 2-D Gaussian blobs; the mlp as teacher and peer model."""
    rng = np.random.default_rng(42)
    angles = 2 * np.pi * np.arange(3) / 3
    centres = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = rng.integers(0, 3, labelled + unlabelled)
    features = (centres[labels] + rng.normal(0, 0.7, (len(labels), 2))).astype(np.float32)
    spec, rows = InputSpec(mean=(), std=()), np.arange(len(labels))

    def build(name: str, dropout: float = 0.0) -> nn.Module:
        return build_model(name, in_channels=2, num_classes=3, dropout=dropout)

    torch.manual_seed(0)
    pool = SampleView(features, rows[labelled:], spec)
    return RoundContext(
        model=build("mlp").eval(),
        labelled=SampleView(features, rows[:labelled], spec, labels[:labelled]),
        candidates=pool,
        private_unlabelled=pool,
        num_classes=3,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed),
        rng=np.random.default_rng(seed),
        round=1,
        batch_size=256,
        build_model=build,
    )


def peer_models(
    strategy_state: dict[str, torch.Tensor], ctx: RoundContext, name: str = "resnet8"
) -> list[nn.Module]:
    """Rebuild the ``name`` peers from a PSL ``state_dict`` (keys ``peer<j>.<name>``)."""
    indices = sorted({int(key.split(".", 1)[0][len("peer") :]) for key in strategy_state})
    peers = []
    for j in indices:
        prefix = f"peer{j}."
        model = ctx.build_model(name)
        model.load_state_dict(
            {k[len(prefix) :]: v for k, v in strategy_state.items() if k.startswith(prefix)}
        )
        peers.append(model.eval())
    return peers


def discrepancy_gap(peers: list[nn.Module], ctx: RoundContext) -> float:
    """Mean discrepancy on S_D minus mean discrepancy on S_A over the unlabelled pool."""
    logits = torch.stack([predict_logits(p, ctx.candidates, ctx.device, 256) for p in peers])
    scores, agreed = discrepancy(logits), consensus_mask(logits.argmax(dim=-1))
    assert agreed.any() and not agreed.all()
    return (scores[~agreed].mean() - scores[agreed].mean()).item()


@pytest.mark.parametrize("seed", [1, 3])
def test_directional_out_of_class_study_ranks_disagreement_above_consensus(seed: int) -> None:
    options = {"peer_model": "mlp", "epochs": 8, "batch_size": 32, "ranking": "directional"}
    options["unlabelled_batches_per_epoch"] = 0
    gaps = {}
    for out_of_class in (False, True):
        strategy = build_strategy("psl", {**options, "out_of_class": out_of_class})
        ctx = toy_context(seed)
        strategy.fit(ctx)
        gaps[out_of_class] = discrepancy_gap(peer_models(strategy.state_dict(), ctx, "mlp"), ctx)
    assert gaps[True] > 0
    assert gaps[True] > gaps[False]


def test_one_peer_scores_by_its_prediction_entropy() -> None:
    ctx = make_context()
    strategy = build_strategy("psl", {"peers": 1, **FAST})
    strategy.fit(ctx)
    (peer,) = peer_models(strategy.state_dict(), ctx)
    want = entropy(torch.softmax(predict_logits(peer, ctx.candidates, ctx.device, 16), dim=1))
    assert torch.allclose(strategy.feedback_scores(ctx), want)


def test_two_peers_score_by_discrepancy_of_the_candidates() -> None:
    ctx = make_context()
    strategy = build_strategy("psl", FAST)
    strategy.fit(ctx)
    peers = peer_models(strategy.state_dict(), ctx)
    logits = torch.stack([predict_logits(p, ctx.candidates, ctx.device, 16) for p in peers])
    assert torch.allclose(strategy.feedback_scores(ctx), discrepancy(logits))
    picks = strategy.select(ctx, 5)
    assert set(picks.tolist()) == set(torch.topk(discrepancy(logits), 5).indices.tolist())


def test_state_dict_round_trip_restores_identical_scores() -> None:
    trained = build_strategy("psl", FAST)
    trained.fit(make_context(seed=0))
    state = trained.state_dict()
    assert {key.split(".", 1)[0] for key in state} == {"peer0", "peer1"}
    restored = build_strategy("psl", FAST)
    restored.load_state_dict(state)
    assert restored.state_dict().keys() == state.keys()  # kept while no peer is built
    ctx = make_context(seed=5)
    assert torch.equal(restored.feedback_scores(ctx), trained.feedback_scores(ctx))


def test_fit_continues_from_loaded_peers() -> None:
    first = build_strategy("psl", FAST)
    first.fit(make_context(seed=0))
    second = build_strategy("psl", FAST)
    second.load_state_dict(first.state_dict())
    second.fit(make_context(seed=1))
    fresh = build_strategy("psl", FAST)
    fresh.fit(make_context(seed=1))
    ctx = make_context(seed=2)
    assert not torch.equal(second.feedback_scores(ctx), fresh.feedback_scores(ctx))


def test_selection_is_deterministic_and_leaves_global_rng_alone() -> None:
    before = torch.get_rng_state()
    picks = []
    for _ in range(2):
        strategy = build_strategy("psl", FAST)
        ctx = make_context(seed=7)
        strategy.fit(ctx)
        picks.append(strategy.select(ctx, 6))
    assert np.array_equal(picks[0], picks[1])
    assert torch.equal(torch.get_rng_state(), before)


def test_select_without_fit_returns_the_contracted_count() -> None:
    ctx = make_context(candidates=12)
    strategy = build_strategy("psl")
    assert strategy.select(ctx, 0).shape == (0,)
    picks = strategy.select(ctx, 5)
    assert len(picks) == len(np.unique(picks)) == 5
    everything = strategy.select(ctx, 50)
    assert sorted(everything.tolist()) == list(range(12))


def test_fit_leaves_the_teacher_untouched() -> None:
    ctx = make_context()
    ctx.model.eval()
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    build_strategy("psl", FAST).fit(ctx)
    assert not ctx.model.training
    for key, value in ctx.model.state_dict().items():
        assert torch.equal(value, before[key])


class Unreachable(nn.Module):
    """A teacher that must not be asked."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the teacher was used")


def test_without_in_class_study_the_teacher_is_not_used() -> None:
    ctx = dataclasses.replace(make_context(), model=Unreachable())
    build_strategy("psl", {"in_class": False, **FAST}).fit(ctx)
    with pytest.raises(AssertionError, match="teacher"):
        build_strategy("psl", FAST).fit(ctx)


@pytest.mark.parametrize(
    "options",
    [
        {"peers": 3, "ranking": "paper"},
        {"peers": 4, "peer_model": "cnn", "unlabelled_batches_per_epoch": 0},
        {"in_class": False, "out_of_class": False},
        {"peers": 1, "epochs": 0},
    ],
)
def test_ablations_fit_and_select(options: dict[str, object]) -> None:
    ctx = make_context()
    strategy = build_strategy("psl", {**FAST, **options})
    strategy.fit(ctx)
    picks = strategy.select(ctx, 7)
    assert len(np.unique(picks)) == 7
    assert len({key.split(".", 1)[0] for key in strategy.state_dict()}) == options.get("peers", 2)


def test_fit_copes_with_empty_labelled_and_unlabelled_pools() -> None:
    ctx = make_context(labelled=0, candidates=10, protected=0)
    empty = ctx.candidates.subset(np.empty(0, dtype=np.int64))
    strategy = build_strategy("psl", FAST)
    strategy.fit(dataclasses.replace(ctx, private_unlabelled=empty))
    assert len(strategy.select(ctx, 3)) == 3


def test_sampling_parameters_count_all_peers() -> None:
    ctx = make_context()
    strategy = build_strategy("psl")
    with pytest.raises(RuntimeError, match="fit or select"):
        strategy.sampling_parameters()
    strategy.select(ctx, 1)
    one = sum(p.numel() for p in ctx.build_model("resnet8").parameters())
    assert strategy.sampling_parameters() == 2 * one


def test_two_resnet8_peers_match_the_paper_size_at_cifar_scale() -> None:
    resnet8 = build_model("resnet8", in_channels=3, num_classes=10, image_size=(32, 32))
    total = 2 * sum(p.numel() for p in resnet8.parameters())
    assert total == pytest.approx(0.16e6, rel=0.05)  # Table 1: 0.16M


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"peers": 0}, "query.options.peers: 0 is not allowed; allowed: 1 <= value <= 4"),
        ({"peers": 5}, "query.options.peers: 5 is not allowed; allowed: 1 <= value <= 4"),
        (
            {"ranking": "sideways"},
            "query.options.ranking: 'sideways' is not allowed; allowed: directional, paper",
        ),
        (
            {"peer_model": "vgg"},
            "query.options.peer_model: 'vgg' is not allowed; "
            "allowed: cnn, mlp, resnet8, resnet14, resnet18",
        ),
        ({"tau": 0}, "query.options.tau: 0 is not allowed; allowed: a number > 0"),
        ({"alpha": 1.5}, "query.options.alpha: 1.5 is not allowed; allowed: 0 <= value <= 1"),
        (
            {"study_steps": "both"},
            "query.options.study_steps: 'both' is not allowed; allowed: joint, alternating",
        ),
        (
            {"batches": 3},
            "query.options.batches=3: unknown field; "
            "allowed: alpha, augment, batch_size, epochs, in_class, lr, margin, momentum, "
            "out_of_class, peer_model, peers, ranking, schedule, study_steps, tau, "
            "unlabelled_batches_per_epoch, unlabelled_batchnorm, weight_decay",
        ),
    ],
)
def test_invalid_options_are_rejected_in_one_line(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_strategy("psl", options)
    assert str(error.value) == message


def test_options_from_a_flat_run_config_are_coerced() -> None:
    options = build_strategy("psl", {"peers": "3", "in_class": "false", "lr": 1}).options
    assert (options.peers, options.in_class, options.lr) == (3, False, 1.0)


def test_state_for_another_peer_count_is_rejected() -> None:
    strategy = build_strategy("psl", FAST)
    strategy.select(make_context(), 1)
    with pytest.raises(ValueError, match=r"networks \['peer0', 'peer1'\], expected"):
        build_strategy("psl", {"peers": 3}).load_state_dict(strategy.state_dict())
