"""ADS: Agreement-Discrepancy-Selection (Fu et al., AAAI 2021), Algorithm 1, equations 1-8.

A private network: a ``ctx.build_model(backbone)`` trunk g with two classifier heads f1,
f2 whose outputs are *sigmoids* (one-vs-all), :class:`TwinHeadNetwork`. Per epoch of
:meth:`AgreementDiscrepancySelection.fit` (Algorithm 1, lines 3-10):

1. (first epoch only) label-set training with equation 1 on every parameter;
2. prediction agreement: the trunk alone minimises equation 5 on unlabelled batches;
3. prediction discrepancy: the heads alone minimise equation 8 plus equation 1 on a
   labelled batch ("the loss of labeled examples and unlabeled examples are mixed
   together and train the model once");
4. label-set training with equation 1.

Selection (Algorithm 1, line 11): the largest mean head entropy E(u) (equation 3) within
a random subset of M candidates.

Readings of the paper fixed here:

- *E(u)* (equation 3) is taken literally: ``-1/2 (sum_c y1_c log y1_c + sum_c y2_c log
  y2_c)`` over the heads' *sigmoid* outputs, which are not normalised over classes and
  enter without the ``(1 - y) log(1 - y)`` terms of a binary entropy. Each term is at most
  1/e, so ``0 <= E(u) <= C/e``.
- *Calibration weights* (equations 4 and 7) are computed from the current predictions of
  the batch ("on the prediction of the current epoch") and held constant: no gradient
  flows through w_a or w_d. With the 1/n inside the weights, equations 5 and 8 are sums
  over the batch, i.e. weighted means of the per-sample losses of equations 2 and 6.
- *The agreement step* uses the unlabelled batch only (Algorithm 1, line 7) and leaves
  the heads unchanged; *the discrepancy step* leaves the trunk unchanged, BatchNorm
  statistics included (the trunk runs in eval mode there: "fixing the feature
  extractor").
- *Equation 1* sums the one-vs-all BCE over classes and both heads; batches average it.
- *Unlabelled data*: ``ctx.private_unlabelled`` (never used to pick samples), at most
  ``unlabelled_batches_per_epoch`` shuffled batches per step and epoch.
- *Across rounds*: the paper re-trains the network each iteration; ``warm_start``
  (default) carries it on through the strategy's state.

The network is built, seeded, trained and persisted with
:mod:`strategies.private_training`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from itertools import cycle

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fedal.models import Classifier
from fedal.views import SampleView
from strategies.base import RoundContext, top_k
from strategies.private_training import (
    BatchCap,
    LearningRate,
    NetworkStrategy,
    PrivateNetwork,
    PrivateTrainingOptions,
    labelled_batches,
    step,
    unlabelled_batches,
)
from strategies.registry import register
from strategies.scoring import entropy, predict_logits

HEADS = 2


class TwinHeadNetwork(nn.Module):
    """Trunk g (``features``) with two independently initialised linear heads f1, f2."""

    def __init__(self, classifier: Classifier, num_classes: int) -> None:
        super().__init__()
        self.features = classifier.features
        self.heads = nn.ModuleList(
            [classifier.head, nn.Linear(classifier.embedding_dim, num_classes)]
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Both heads' logits, shape ``(B, 2, C)`` (sigmoid gives the predictions)."""
        return self.classify(self.features(inputs))

    def classify(self, hidden: torch.Tensor) -> torch.Tensor:
        """Both heads' logits on trunk embeddings, shape ``(B, 2, C)``."""
        return torch.stack([head(hidden) for head in self.heads], dim=1)


# ---------------------------------------------------------------------- equations


def labelled_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Equation 1: one-vs-all BCE summed over classes and both heads, batch mean.

    ``logits`` ``(B, 2, C)``; ``targets`` class indices ``(B,)``.
    """
    one_hot = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(
        logits, one_hot.unsqueeze(1).expand_as(logits), reduction="none"
    )
    return bce.sum(dim=(1, 2)).mean()


def head_discrepancy(predictions: torch.Tensor) -> torch.Tensor:
    """Equation 2: ``(1/C) sum_c |y1_c - y2_c|`` per sample, from ``(B, 2, C)`` sigmoids."""
    return (predictions[:, 0] - predictions[:, 1]).abs().mean(dim=-1)


def mean_entropy(predictions: torch.Tensor) -> torch.Tensor:
    """Equation 3: ``E(u) = -1/2 sum_heads sum_c y_c log y_c`` from ``(B, 2, C)`` sigmoids."""
    return (entropy(predictions[:, 0]) + entropy(predictions[:, 1])) / HEADS


def agreement_weights(entropies: torch.Tensor, tau: float) -> torch.Tensor:
    """Equation 4: ``w_a = (1 - sigmoid(E(u) - tau)) / n``, n the batch size."""
    return (1 - torch.sigmoid(entropies - tau)) / len(entropies)


def discrepancy_weights(entropies: torch.Tensor, tau: float) -> torch.Tensor:
    """Equation 7: ``w_d = sigmoid(E(u) - tau) / n``, n the batch size."""
    return torch.sigmoid(entropies - tau) / len(entropies)


def agreement_loss(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Equation 5: ``sum_u w_a(u) L_a'(u)`` over a batch of ``(B, 2, C)`` logits."""
    predictions = torch.sigmoid(logits)
    weights = agreement_weights(mean_entropy(predictions).detach(), tau)
    return (weights * head_discrepancy(predictions)).sum()


def discrepancy_loss(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Equation 8: ``sum_u w_d(u) L_d'(u)``, ``L_d' = 1 - L_a'`` (equation 6)."""
    predictions = torch.sigmoid(logits)
    weights = discrepancy_weights(mean_entropy(predictions).detach(), tau)
    return (weights * (1 - head_discrepancy(predictions))).sum()


# ---------------------------------------------------------------------- steps


def agreement_step(
    network: TwinHeadNetwork, optimizer: torch.optim.Optimizer, unlabelled: torch.Tensor, tau: float
) -> None:
    """Minimise equation 5 on an unlabelled batch; ``optimizer`` holds the trunk only."""
    network.train()
    step(optimizer, network, agreement_loss(network(unlabelled), tau))


def discrepancy_step(
    network: TwinHeadNetwork,
    optimizer: torch.optim.Optimizer,
    unlabelled: torch.Tensor,
    labelled: tuple[torch.Tensor, torch.Tensor] | None,
    tau: float,
) -> None:
    """Minimise equation 8 (+ equation 1 on ``labelled``); the trunk is frozen (eval mode,
    no gradient) and ``optimizer`` holds the heads only."""
    network.features.eval()
    network.heads.train()
    with torch.no_grad():
        hidden = network.features(unlabelled)
    loss = discrepancy_loss(network.classify(hidden), tau)
    if labelled is not None:
        inputs, targets = labelled
        with torch.no_grad():
            labelled_hidden = network.features(inputs)
        loss = loss + labelled_loss(network.classify(labelled_hidden), targets)
    step(optimizer, network, loss)


# ---------------------------------------------------------------------- strategy


class ADSOptions(PrivateTrainingOptions):
    """``[query.options]`` of ``ads``; paper values (CIFAR-10, ResNet-18) in brackets.

    - ``tau``: tau of equations 4 and 7 [0.1].
    - ``subset_size``: M, candidates in the random subset scored for selection [10000
      of a 50000-image pool, i.e. a fifth of it; 0 = all candidates]. A subset smaller
      than the budget is enlarged to the budget.
    - ``unlabelled_batches_per_epoch``: cap on unlabelled batches per agreement and per
      discrepancy step in an epoch [the whole unlabelled set; 0 = all].
    - ``backbone`` [ResNet-18 or VGG-16 without FC layers]; ``epochs`` [200];
      ``lr`` [0.1, divided by 10 after 160 epochs]; ``momentum`` [0.9];
      ``weight_decay`` [5e-4]; ``batch_size`` [128]; ``warm_start`` [False];
      ``augment`` [crop and flip].

    The defaults keep one ``fit`` + ``select`` cheap on a CPU; experiment configs set
    paper values.
    """

    lr: LearningRate = 0.05
    tau: float = 0.1
    subset_size: int = Field(10000, ge=0)
    unlabelled_batches_per_epoch: BatchCap = 2


@register
class AgreementDiscrepancySelection(NetworkStrategy):
    """Select the largest mean head entropies (equation 3) within a random M-subset.

    The twin-head network (weights and BatchNorm statistics) persists through
    :meth:`state_dict`; the optimizers restart every ``fit``.
    """

    name = "ads"
    Options = ADSOptions
    options: ADSOptions

    def __init__(self, options: Mapping[str, object] | None = None) -> None:
        super().__init__(options)
        self.networks: PrivateNetwork[TwinHeadNetwork] = PrivateNetwork(self._build)

    def _build(self, ctx: RoundContext) -> TwinHeadNetwork:
        return TwinHeadNetwork(ctx.build_model(self.options.backbone), ctx.num_classes)

    # ------------------------------------------------------------------ training

    def fit(self, ctx: RoundContext) -> None:
        """Algorithm 1, lines 3-10, for ``epochs`` epochs."""
        opts = self.options
        network = self.networks.get(ctx, fresh=not opts.warm_start)
        whole, trunk, heads = (
            opts.optimizer(network),
            opts.optimizer(network.features),
            opts.optimizer(network.heads),
        )
        for epoch in range(opts.epochs):
            if epoch == 0:
                self._label_set_training(ctx, network, whole)
            for batch in self._unlabelled(ctx):
                agreement_step(network, trunk, batch, opts.tau)
            labelled = cycle(list(labelled_batches(ctx, opts.batch_size, opts.augment)))
            for batch in self._unlabelled(ctx):
                discrepancy_step(network, heads, batch, next(labelled, None), opts.tau)
            self._label_set_training(ctx, network, whole)
        network.eval()

    def _label_set_training(
        self, ctx: RoundContext, network: TwinHeadNetwork, optimizer: torch.optim.Optimizer
    ) -> None:
        """One epoch of equation 1 over the labelled set, every parameter trained."""
        network.train()
        for inputs, targets in labelled_batches(ctx, self.options.batch_size, self.options.augment):
            step(optimizer, network, labelled_loss(network(inputs), targets))

    def _unlabelled(self, ctx: RoundContext) -> Iterator[torch.Tensor]:
        """This step's (capped) shuffled batches of ``ctx.private_unlabelled``."""
        opts = self.options
        return unlabelled_batches(ctx, opts.batch_size, opts.unlabelled_batches_per_epoch)

    # ------------------------------------------------------------------ selection

    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        """Top-``budget`` E(u) (equation 3) among a random subset of M candidates."""
        if budget <= 0 or len(ctx.candidates) == 0:
            return np.empty(0, dtype=np.int64)
        subset = self.random_subset(ctx, budget)
        scores = self.entropies(ctx, ctx.candidates.subset(subset))
        return subset[top_k(scores, budget)]

    def random_subset(self, ctx: RoundContext, budget: int) -> np.ndarray:
        """Sorted candidate positions of the M-subset (all candidates when M covers them)."""
        pool = len(ctx.candidates)
        size = max(self.options.subset_size, budget) if self.options.subset_size else pool
        if size >= pool:
            return np.arange(pool, dtype=np.int64)
        return np.sort(ctx.rng.choice(pool, size=size, replace=False)).astype(np.int64)

    def entropies(self, ctx: RoundContext, view: SampleView) -> torch.Tensor:
        """E(u) (equation 3) for every row of a candidate view."""
        network = self.networks.get(ctx)
        logits = predict_logits(network, view, ctx.device, ctx.batch_size)
        return mean_entropy(torch.sigmoid(logits))

    # ------------------------------------------------------------------ state
