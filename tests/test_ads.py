"""ADS: equations 1-8 by hand on tiny tensors, the agreement/discrepancy steps, selection."""

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
from strategies.ads import (
    AgreementDiscrepancySelection,
    TwinHeadNetwork,
    agreement_loss,
    agreement_step,
    agreement_weights,
    discrepancy_loss,
    discrepancy_step,
    discrepancy_weights,
    head_discrepancy,
    labelled_loss,
    mean_entropy,
)
from strategies.base import RoundContext, top_k

FAST = {"epochs": 2, "batch_size": 16}

# ---------------------------------------------------------------- equations by hand


def sigmoid(value: float) -> float:
    return 1 / (1 + math.exp(-value))


def test_calibration_weights_match_equations_4_and_7() -> None:
    entropies = [0.0, 0.1, 1.5]
    w_a = agreement_weights(torch.tensor(entropies), tau=0.1)
    w_d = discrepancy_weights(torch.tensor(entropies), tau=0.1)
    assert w_a.tolist() == pytest.approx([(1 - sigmoid(e - 0.1)) / 3 for e in entropies])
    assert w_d.tolist() == pytest.approx([sigmoid(e - 0.1) / 3 for e in entropies])
    assert w_a[1].item() == pytest.approx(0.5 / 3)  # E(u) = tau sits at the midpoint
    assert (w_a + w_d).tolist() == pytest.approx([1 / 3] * 3)


def test_entropy_is_the_mean_of_both_heads_over_unnormalised_sigmoids() -> None:
    head1, head2 = [0.5, 0.2, 0.9], [0.1, 0.1, 0.6]
    predictions = torch.tensor([[head1, head2]])
    want = -0.5 * (sum(y * math.log(y) for y in head1) + sum(y * math.log(y) for y in head2))
    assert mean_entropy(predictions).item() == pytest.approx(want)
    certain = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    assert mean_entropy(certain).item() == 0.0  # 0 log 0 = 0, no (1 - y) log(1 - y) terms


def test_labelled_loss_is_one_vs_all_bce_over_classes_and_heads() -> None:
    logits = [[[2.0, -1.0, 0.0], [0.5, 0.5, -2.0]], [[0.0, 1.0, 3.0], [-1.0, 2.0, 0.0]]]
    targets = [0, 2]
    per_sample = []
    for sample, target in zip(logits, targets, strict=True):
        total = 0.0
        for head in sample:
            for c, value in enumerate(head):
                y, p = float(c == target), sigmoid(value)
                total -= y * math.log(p) + (1 - y) * math.log(1 - p)
        per_sample.append(total)
    got = labelled_loss(torch.tensor(logits), torch.tensor(targets))
    assert got.item() == pytest.approx(sum(per_sample) / 2, rel=1e-6)


def test_discrepancy_and_calibrated_losses_match_equations_2_5_6_8() -> None:
    logits = torch.tensor([[[1.0, -1.0], [0.0, 2.0]], [[0.0, 0.0], [0.0, 0.0]]])
    y = torch.sigmoid(logits).tolist()
    l1 = [(abs(s[0][0] - s[1][0]) + abs(s[0][1] - s[1][1])) / 2 for s in y]
    assert head_discrepancy(torch.sigmoid(logits)).tolist() == pytest.approx(l1)
    entropies = [-0.5 * sum(v * math.log(v) for head in s for v in head) for s in y]
    w_a = [(1 - sigmoid(e - 0.1)) / 2 for e in entropies]
    w_d = [sigmoid(e - 0.1) / 2 for e in entropies]
    assert agreement_loss(logits, 0.1).item() == pytest.approx(
        sum(w * d for w, d in zip(w_a, l1, strict=True))
    )
    assert discrepancy_loss(logits, 0.1).item() == pytest.approx(
        sum(w * (1 - d) for w, d in zip(w_d, l1, strict=True))
    )


def test_no_gradient_flows_through_the_calibration_weights() -> None:
    logits = torch.tensor([[[1.0, -1.0], [0.0, 2.0]]], requires_grad=True)
    agreement_loss(logits, 0.1).backward()
    assert logits.grad is not None
    weight = agreement_weights(mean_entropy(torch.sigmoid(logits.detach())), 0.1)
    plain = torch.tensor([[[1.0, -1.0], [0.0, 2.0]]], requires_grad=True)
    (weight * head_discrepancy(torch.sigmoid(plain))).sum().backward()
    assert torch.allclose(logits.grad, plain.grad)


# ---------------------------------------------------------------- the two adversarial steps


def twin_network(ctx: RoundContext) -> TwinHeadNetwork:
    torch.manual_seed(0)
    return TwinHeadNetwork(ctx.build_model("resnet8"), ctx.num_classes)


def parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {
        name for name, value in module.named_parameters() if not torch.equal(value, before[name])
    }


def weighted_gap(network: TwinHeadNetwork, batch: torch.Tensor, weights: torch.Tensor) -> float:
    """sum_u w(u) * L1 discrepancy(u) with fixed weights, the trunk in train mode."""
    with torch.no_grad():
        network.features.train()
        return (weights * head_discrepancy(torch.sigmoid(network(batch)))).sum().item()


def frozen_weights(network: TwinHeadNetwork, batch: torch.Tensor, agreement: bool) -> torch.Tensor:
    with torch.no_grad():
        network.features.train()
        entropies = mean_entropy(torch.sigmoid(network(batch)))
    return (agreement_weights if agreement else discrepancy_weights)(entropies, 0.1)


def test_heads_start_different() -> None:
    network = twin_network(make_context())
    assert not torch.equal(network.heads[0].weight, network.heads[1].weight)


def test_agreement_step_lowers_the_discrepancy_by_moving_only_the_trunk() -> None:
    ctx = make_context()
    network = twin_network(ctx)
    batch = ctx.private_unlabelled.inputs(slice(0, 32))
    weights = frozen_weights(network, batch, agreement=True)
    gap_before, before = weighted_gap(network, batch, weights), parameters(network)
    optimizer = torch.optim.SGD(network.features.parameters(), lr=0.01)
    agreement_step(network, optimizer, batch, tau=0.1)
    assert weighted_gap(network, batch, weights) < gap_before
    moved = changed(before, network)
    assert moved and all(name.startswith("features.") for name in moved)


@pytest.mark.parametrize("with_labels", [False, True])
def test_discrepancy_step_raises_the_discrepancy_by_moving_only_the_heads(
    with_labels: bool,
) -> None:
    ctx = make_context()
    network = twin_network(ctx)
    batch = ctx.private_unlabelled.inputs(slice(0, 32))
    labelled = (ctx.labelled.inputs(slice(None)), ctx.labelled.targets(slice(None)))
    weights = frozen_weights(network, batch, agreement=False)
    network.features.eval()
    with torch.no_grad():
        hidden = network.features(batch)
    gap_before = (weights * head_discrepancy(torch.sigmoid(network.classify(hidden)))).sum()
    before, buffers = parameters(network), copy.deepcopy(network.features.state_dict())
    optimizer = torch.optim.SGD(network.heads.parameters(), lr=0.1)
    discrepancy_step(network, optimizer, batch, labelled if with_labels else None, tau=0.1)
    with torch.no_grad():
        gap_after = (weights * head_discrepancy(torch.sigmoid(network.classify(hidden)))).sum()
    assert gap_after > gap_before
    moved = changed(before, network)
    assert moved and all(name.startswith("heads.") for name in moved)
    for key, value in network.features.state_dict().items():
        assert torch.equal(value, buffers[key]), key  # BatchNorm statistics too


def test_fit_lowers_the_labelled_loss() -> None:
    ctx = make_context()
    inputs, targets = ctx.labelled.inputs(slice(None)), ctx.labelled.targets(slice(None))
    losses = []
    for epochs in (0, 6):
        strategy = build_strategy("ads", {"epochs": epochs, "batch_size": 20})
        strategy.fit(make_context())
        network = twin_network(ctx)
        network.load_state_dict(strategy.state_dict())
        with torch.no_grad():
            losses.append(labelled_loss(network.eval()(inputs), targets).item())
    assert losses[1] < 0.5 * losses[0]


# ---------------------------------------------------------------- selection


def fitted(options: dict[str, object], ctx: RoundContext) -> AgreementDiscrepancySelection:
    strategy = build_strategy("ads", {**FAST, **options})
    assert isinstance(strategy, AgreementDiscrepancySelection)
    strategy.fit(ctx)
    return strategy


def test_selection_takes_the_top_entropies_within_the_random_subset() -> None:
    ctx = make_context(candidates=40)
    strategy = fitted({"subset_size": 10}, ctx)
    subset = np.sort(copy.deepcopy(ctx.rng).choice(40, size=10, replace=False))
    picks = strategy.select(ctx, 4)
    assert set(picks.tolist()) <= set(subset.tolist())
    entropies = strategy.entropies(ctx, ctx.candidates)
    np.testing.assert_array_equal(picks, subset[top_k(entropies[subset], 4)])


def test_subset_covers_the_budget_and_zero_means_every_candidate() -> None:
    ctx = make_context(candidates=30)
    small = fitted({"subset_size": 3}, ctx)
    assert len(small.random_subset(ctx, 8)) == 8
    assert len(np.unique(small.select(ctx, 8))) == 8
    everything = fitted({"subset_size": 0}, ctx)
    np.testing.assert_array_equal(everything.random_subset(ctx, 5), np.arange(30))
    entropies = everything.entropies(ctx, ctx.candidates)
    np.testing.assert_array_equal(everything.select(ctx, 5), top_k(entropies, 5))


def test_select_without_fit_returns_the_contracted_count() -> None:
    ctx = make_context(candidates=12)
    strategy = build_strategy("ads")
    assert strategy.select(ctx, 0).shape == (0,)
    picks = strategy.select(ctx, 5)
    assert picks.dtype == np.int64 and len(np.unique(picks)) == 5
    assert sorted(strategy.select(ctx, 50).tolist()) == list(range(12))


def test_state_round_trip_restores_identical_selections() -> None:
    trained = fitted({}, make_context())
    state = trained.state_dict()
    assert {key.split(".", 1)[0] for key in state} == {"features", "heads"}
    restored = build_strategy("ads", FAST)
    restored.load_state_dict(state)
    assert restored.state_dict().keys() == state.keys()
    ctx, same = make_context(seed=4), make_context(seed=4)
    np.testing.assert_array_equal(restored.select(ctx, 8), trained.select(same, 8))


def test_deterministic_and_global_rng_untouched() -> None:
    before = torch.get_rng_state()
    picks = [fitted({}, make_context(seed=3)).select(make_context(seed=3), 6) for _ in range(2)]
    np.testing.assert_array_equal(picks[0], picks[1])
    assert torch.equal(torch.get_rng_state(), before)


def test_fit_copes_with_empty_labelled_and_unlabelled_pools() -> None:
    ctx = make_context(labelled=0, candidates=10, protected=0)
    empty = ctx.candidates.subset(np.empty(0, dtype=np.int64))
    strategy = fitted({}, dataclasses.replace(ctx, private_unlabelled=empty))
    assert len(strategy.select(ctx, 3)) == 3
    assert len(fitted({}, ctx).select(ctx, 3)) == 3  # unlabelled steps without labels


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"subset_size": -1},
            "query.options.subset_size: -1 is not allowed; allowed: an integer >= 0",
        ),
        (
            {"unlabelled_batches_per_epoch": -2},
            "query.options.unlabelled_batches_per_epoch: -2 is not allowed; "
            "allowed: an integer >= 0",
        ),
        ({"momentum": 1.0}, "query.options.momentum: 1.0 is not allowed; allowed: 0 <= value < 1"),
        (
            {"backbone": "vgg"},
            "query.options.backbone: 'vgg' is not allowed; "
            "allowed: cnn, mlp, resnet8, resnet14, resnet18",
        ),
        (
            {"lambda1": 1.0},
            "query.options.lambda1=1.0: unknown field; "
            "allowed: augment, backbone, batch_size, epochs, lr, momentum, subset_size, tau, "
            "unlabelled_batches_per_epoch, warm_start, weight_decay",
        ),
    ],
)
def test_invalid_options_are_rejected_in_one_line(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_strategy("ads", options)
    assert str(error.value) == message
