"""VAAL: Variational Adversarial Active Learning (Sinha et al., ICCV 2019), section 3.

A private :class:`strategies.vaal_networks.AdversarialVAE`: a VAE (a small conv
encoder/decoder for images, an MLP for feature vectors) that learns one latent space for
labelled and unlabelled data, and a discriminator D on the latent mean that tells them
apart. Per training iteration of :meth:`VAAL.fit` (Algorithm 1), on a labelled batch
x_L and an unlabelled batch x_U:

1. the VAE minimises ``L_VAE = lambda1 L_trd + lambda2 L_adv`` (equation 3), with the
   transductive loss ``L_trd`` (equation 1: reconstruction and beta-weighted KL on both
   batches, :func:`strategies.vaal_networks.vae_loss`) and the adversarial loss
   ``L_adv = -E[log D(q(z_L|x_L))] - E[log D(q(z_U|x_U))]`` (equation 2: the VAE tries
   to make D call every sample labelled);
2. D minimises ``L_D = -E[log D(q(z_L|x_L))] - E[log(1 - D(q(z_U|x_U)))]`` (equation 4:
   labelled = 1, unlabelled = 0).

Selection (section 3, "sampling strategy"): the candidates with the *lowest* D
probability of being labelled, i.e. the ones least like the labelled set in the latent
space.

Readings of the paper fixed here:

- *Latent fed to D*: the mean mu of q(z|x), in training and selection.
- *Order of updates*: one VAE step then one D step per iteration (Algorithm 1); D is
  trained on the means of the updated encoder (no gradient into the VAE).
- *Equation 2 as written*: the VAE's adversarial term asks D to call *both* batches
  labelled, so the VAE works against D's equation 4 on the unlabelled batch.
- *Reconstruction term*: mean squared error on the normalised inputs; the KL term is
  divided by the input size so that beta keeps its meaning across image sizes.
- *Unlabelled data*: ``ctx.private_unlabelled`` (protected data only when the run lets
  private networks use it; never used to pick samples), at most
  ``unlabelled_batches_per_epoch`` shuffled batches per epoch, each paired with the next
  labelled batch (the labelled batches cycle). With no labelled data D only sees
  unlabelled batches and the VAE only its transductive and adversarial terms on them.
- *Task model*: the paper trains the task learner alongside; in fedal that is the
  helper, trained by the client runtime, and VAAL only trains its own networks.
- *Across rounds*: ``warm_start`` (default) carries the VAE and D on through the
  strategy's state; ``warm_start = False`` rebuilds them at every ``fit``.

The networks are built, seeded, trained and persisted with
:mod:`strategies.private_training`; all randomness of training (initial weights, the
reparameterisation noise) comes from ``ctx.rng`` via :func:`seeded_torch` and the batch
order from ``ctx.generator``.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import cycle

import numpy as np
import torch
from pydantic import Field

from fedal.schema import Schema
from fedal.views import SampleView
from strategies.base import RoundContext, top_k
from strategies.private_training import (
    BatchCap,
    BatchSize,
    Epochs,
    LearningRate,
    NetworkStrategy,
    PrivateNetwork,
    labelled_batches,
    seeded_torch,
    step,
    unlabelled_batches,
)
from strategies.registry import register
from strategies.scoring import predict_logits
from strategies.vaal_networks import AdversarialVAE, labelled_bce, vae_loss


class VAALOptions(Schema):
    """``[query.options]`` of ``vaal``; paper values (section 4, as recalled; the text
    could not be re-checked when this was written) in brackets.

    - ``epochs``: passes per ``fit`` [100 epochs]; ``unlabelled_batches_per_epoch``: cap
      on the unlabelled batches (= training iterations) of an epoch [all; 0 = all].
    - ``lr``: Adam learning rate of the VAE and of D [5e-4].
    - ``batch_size``: labelled and unlabelled batch size [128].
    - ``latent_size``: dimension of z [32 on CIFAR-10/100, 64 elsewhere].
    - ``width``: channels of the first conv layer (images) or hidden units (vectors)
      of the VAE [a much deeper conv VAE]; ``discriminator_width``: hidden
      units of D's two hidden layers [512].
    - ``beta``: KL weight in equation 1 [1]; ``transductive_weight``,
      ``adversary_weight``: lambda1, lambda2 of equation 3 [1, 1].
    - ``warm_start``: keep the networks across rounds [the paper trains them on].

    The defaults (2 epochs of at most 8 batches, a 32/64-channel VAE) keep one ``fit`` +
    ``select`` cheap on a CPU; experiment configs set paper values.
    """

    epochs: Epochs = 2
    unlabelled_batches_per_epoch: BatchCap = 8
    lr: LearningRate = 5e-4
    batch_size: BatchSize = 64
    latent_size: int = Field(32, ge=1)
    width: int = Field(32, ge=1)
    discriminator_width: int = Field(64, ge=1)
    beta: float = Field(1.0, ge=0)
    transductive_weight: float = Field(1.0, ge=0)
    adversary_weight: float = Field(1.0, ge=0)
    warm_start: bool = True


def input_shape(ctx: RoundContext) -> tuple[int, ...]:
    """The shape of one model input, from the first non-empty view of ``ctx``."""
    for view in (ctx.labelled, ctx.private_unlabelled, ctx.candidates):
        if len(view):
            return tuple(view.inputs(np.arange(1))[0].shape)
    raise ValueError("vaal: no data to infer the input shape from")


@register
class VAAL(NetworkStrategy):
    """Select the candidates D finds least likely to be labelled."""

    name = "vaal"
    Options = VAALOptions
    options: VAALOptions

    def __init__(self, options: Mapping[str, object] | None = None) -> None:
        super().__init__(options)
        self.networks: PrivateNetwork[AdversarialVAE] = PrivateNetwork(self._build)

    def _build(self, ctx: RoundContext) -> AdversarialVAE:
        opts = self.options
        return AdversarialVAE(
            input_shape(ctx), opts.latent_size, opts.width, opts.discriminator_width
        )

    # ------------------------------------------------------------------ training

    def fit(self, ctx: RoundContext) -> None:
        """Algorithm 1: ``epochs`` passes of VAE and D steps (equations 1-4)."""
        opts = self.options
        if len(ctx.labelled) == 0 and len(ctx.private_unlabelled) == 0:
            return
        network = self.networks.get(ctx, fresh=not opts.warm_start)
        vae_optimizer = torch.optim.Adam(network.vae.parameters(), lr=opts.lr)
        d_optimizer = torch.optim.Adam(network.discriminator.parameters(), lr=opts.lr)
        network.train()
        with seeded_torch(ctx):
            for _ in range(opts.epochs):
                labelled = cycle(list(labelled_batches(ctx, opts.batch_size, augment=False)))
                unlabelled = unlabelled_batches(
                    ctx, opts.batch_size, opts.unlabelled_batches_per_epoch
                )
                for batch in unlabelled:
                    pair = next(labelled, None)
                    self.train_step(network, vae_optimizer, d_optimizer, pair, batch)
        network.eval()

    def train_step(
        self,
        network: AdversarialVAE,
        vae_optimizer: torch.optim.Optimizer,
        d_optimizer: torch.optim.Optimizer,
        labelled: tuple[torch.Tensor, torch.Tensor] | None,
        unlabelled: torch.Tensor,
    ) -> None:
        """One VAE step (equation 3) and one D step (equation 4)."""
        opts = self.options
        trd, mu_u = vae_loss(network, unlabelled, opts.beta)
        adv = labelled_bce(network.discriminator(mu_u), labelled=True)
        mu_l = None
        if labelled is not None and len(labelled[0]) > 0:
            trd_l, mu_l = vae_loss(network, labelled[0], opts.beta)
            trd = trd + trd_l
            adv = adv + labelled_bce(network.discriminator(mu_l), labelled=True)
        step(vae_optimizer, network, opts.transductive_weight * trd + opts.adversary_weight * adv)
        with torch.no_grad():  # the updated encoder's means
            mu_u = network.vae.encode(unlabelled)[0]
            if mu_l is not None and labelled is not None:
                mu_l = network.vae.encode(labelled[0])[0]
        d_loss = labelled_bce(network.discriminator(mu_u), labelled=False)
        if mu_l is not None:
            d_loss = d_loss + labelled_bce(network.discriminator(mu_l), labelled=True)
        step(d_optimizer, network, d_loss)

    # ------------------------------------------------------------------ selection

    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        """The ``budget`` candidates of lowest D probability of being labelled."""
        if budget <= 0 or len(ctx.candidates) == 0:
            return np.empty(0, dtype=np.int64)
        return top_k(-self.labelled_logits(ctx, ctx.candidates), budget)

    def labelled_logits(self, ctx: RoundContext, view: SampleView) -> torch.Tensor:
        """D's logit that each row of ``view`` is labelled (sigmoid: the probability), on
        the CPU; ranking by logits avoids ties where the sigmoid saturates."""
        network = self.networks.get(ctx)
        return predict_logits(network, view, ctx.device, ctx.batch_size).reshape(-1)

    # ------------------------------------------------------------------ state
