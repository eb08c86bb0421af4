"""VAAL: the losses by hand, the networks' shapes, training separates labelled from
unlabelled, selection picks what looks least labelled, state and options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from strategy_context import feature_context, make_context
from torch import nn

from fedal.models import Classifier
from fedal.schema import ConfigError
from strategies import build_strategy
from strategies.base import RoundContext
from strategies.vaal import VAAL
from strategies.vaal_networks import AdversarialVAE, labelled_bce, vae_loss

FAST = {"epochs": 30, "batch_size": 32, "unlabelled_batches_per_epoch": 0, "lr": 2e-3}


def blob_context(seed: int = 0) -> RoundContext:
    """2-D toy: 40 labelled points around (2, 2); 80 unlabelled candidates, the first 20
    around (2, 2) too, the other 60 around (-2, -2)."""
    rng = np.random.default_rng(seed)
    labelled = rng.normal((2, 2), 0.5, size=(40, 2))
    like_labelled = rng.normal((2, 2), 0.5, size=(20, 2))
    unlike = rng.normal((-2, -2), 0.5, size=(60, 2))
    source = np.concatenate([labelled, like_labelled, unlike]).astype(np.float32)
    model = Classifier(nn.Identity(), embedding_dim=2, num_classes=2, dropout=0.0)
    return feature_context(model, source, np.zeros(40, dtype=np.int64), 40, seed=seed)


def auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(score of a random positive > score of a random negative), ties count half."""
    diff = positive[:, None] - negative[None, :]
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


# ---------------------------------------------------------------- losses and networks


def test_discriminator_bce_is_equation_2_and_4() -> None:
    logits = torch.tensor([[0.0], [math.log(3.0)]])  # D = 1/2 and 3/4
    assert labelled_bce(logits, labelled=True).item() == pytest.approx(
        -(math.log(0.5) + math.log(0.75)) / 2
    )
    assert labelled_bce(logits, labelled=False).item() == pytest.approx(
        -(math.log(0.5) + math.log(0.25)) / 2
    )


def test_vae_loss_is_reconstruction_plus_scaled_kl() -> None:
    torch.manual_seed(0)
    network = AdversarialVAE((2,), latent=3, width=8, discriminator_width=4)
    inputs = torch.randn(5, 2)
    with torch.no_grad():  # make q(z|x) = N(mu, I) with mu = (1, 1, 1): KL = 3/2 per sample
        network.vae.mean.weight.zero_()
        network.vae.mean.bias.fill_(1.0)
        network.vae.log_var.weight.zero_()
        network.vae.log_var.bias.zero_()
    torch.manual_seed(1)
    loss, mean = vae_loss(network, inputs, beta=2.0)
    torch.manual_seed(1)
    reconstruction = network.vae.decode(mean + torch.randn_like(mean))
    mse = ((reconstruction - inputs) ** 2).mean()
    assert loss.item() == pytest.approx(mse.item() + 2.0 * 1.5 / 2, rel=1e-5)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 10, 10), (2,)])
def test_vae_reconstructs_the_input_shape_and_d_gives_one_logit(shape: tuple[int, ...]) -> None:
    network = AdversarialVAE(shape, latent=4, width=8, discriminator_width=8)
    inputs = torch.randn(3, *shape)
    mean, log_var = network.vae.encode(inputs)
    assert mean.shape == log_var.shape == (3, 4)
    assert network.vae.decode(mean).shape == inputs.shape
    assert network(inputs).shape == (3, 1)


def test_other_input_ranks_are_rejected() -> None:
    with pytest.raises(ValueError, match="vaal"):
        AdversarialVAE((2, 3), latent=4, width=8, discriminator_width=8)


# ---------------------------------------------------------------- training and selection


def test_fit_separates_labelled_from_unlabelled_better_than_chance() -> None:
    ctx = blob_context()
    strategy = VAAL(FAST)
    strategy.fit(ctx)
    on_labelled = strategy.labelled_logits(ctx, ctx.labelled)
    on_unlike = strategy.labelled_logits(ctx, ctx.candidates.subset(np.arange(20, 80)))
    assert auc(on_labelled, on_unlike) > 0.9


def test_selection_takes_the_candidates_least_like_the_labelled_set() -> None:
    ctx = blob_context()
    strategy = VAAL(FAST)
    strategy.fit(ctx)
    picks = strategy.select(ctx, 20)
    assert (picks >= 20).mean() >= 0.9  # the 60 candidates far from the labelled blob


def test_fit_leaves_the_scoring_model_untouched() -> None:
    ctx = make_context(labelled=12, candidates=24, protected=12)
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    VAAL({"epochs": 1}).fit(ctx)
    for key, value in ctx.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_state_holds_both_networks_and_restores_the_selection() -> None:
    ctx = make_context(labelled=12, candidates=24, protected=12, seed=2)
    strategy = build_strategy("vaal", {"epochs": 1})
    strategy.fit(ctx)
    state = strategy.state_dict()
    assert any(k.startswith("vae.") for k in state)
    assert any(k.startswith("discriminator.") for k in state)
    restored = build_strategy("vaal", {"epochs": 1})
    restored.load_state_dict(state)
    np.testing.assert_array_equal(
        strategy.select(make_context(labelled=12, candidates=24, protected=12, seed=3), 5),
        restored.select(make_context(labelled=12, candidates=24, protected=12, seed=3), 5),
    )
    assert restored.sampling_parameters() == strategy.sampling_parameters() > 0


def test_cold_start_rebuilds_the_networks() -> None:
    ctx = make_context(labelled=12, candidates=24, protected=12, seed=2)
    warm, cold = VAAL({"epochs": 1}), VAAL({"epochs": 0, "warm_start": False})
    warm.fit(ctx)
    cold.load_state_dict(warm.state_dict())
    cold.fit(make_context(labelled=12, candidates=24, protected=12, seed=4))
    changed = [not torch.equal(v, cold.state_dict()[k]) for k, v in warm.state_dict().items()]
    assert any(changed)


def test_bad_options_fail_with_the_field_name() -> None:
    with pytest.raises(ConfigError, match="latent_size"):
        build_strategy("vaal", {"latent_size": 0})
    with pytest.raises(ConfigError, match="nope"):
        build_strategy("vaal", {"nope": 1})
