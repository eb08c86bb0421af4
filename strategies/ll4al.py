"""LL4AL: Learning Loss for Active Learning (Yoo & Kweon, CVPR 2019), section 3.

A loss prediction module predicts, from the target model's features, the loss the target
model would incur on an input; the candidates of largest predicted loss are queried.

- *Module* (section 3.2, Figure 2): per feature level global pooling, a fully connected
  layer and ReLU; the levels concatenated and mapped to one scalar by a last fully
  connected layer. Here there is a single level: the penultimate embedding
  ``ctx.model.embed(x)`` (already pooled), so the module is ``FC(width) - ReLU - FC(1)``
  (:class:`LossPredictionModule`).
- *Loss* (section 3.3, equation 2): mini-batches of size B are split into B/2 pairs
  ``(p, q)`` (first half against second half) and the module minimises
  ``mean_pairs max(0, -1(l_p, l_q) (l^_p - l^_q) + xi)`` with margin ``xi = 1`` and
  ``1(l_p, l_q) = +1`` if ``l_p > l_q``, else -1
  (:func:`margin_ranking_loss`); ``l`` is the target model's cross entropy on the sample.
- *Selection* (section 4): the top-``budget`` predicted losses among a random subset of
  ``subset_size`` candidates [10000 in the paper; 0 = all].

Deviations, chosen here and also listed in experiments/README.md:

- The paper trains the module *jointly* with the target model (equation 3, ``L_target
  + lambda L_loss``, the module's gradient stopped into the target after epoch 120).
  fedal keeps the helper's training untouched: the module is strategy-local, trained in
  :meth:`LearningLoss.fit` on the scoring model's (``ctx.model``, read-only, eval mode)
  embeddings and per-sample losses on the labelled data, and it is never uploaded.
  ``lambda`` has no role: nothing else is trained.
- :class:`fedal.models.Classifier` exposes only the final embedding, not the outputs of
  intermediate blocks, so the multi-level features of Figure 2 are reduced to that one
  level.
- Embeddings and target losses are computed once per ``fit`` (the scoring model does not
  change during it) and the module is trained ``epochs`` passes over them.
- ``warm_start`` (default) keeps the module across rounds through the strategy's state.

The module is built, seeded, trained and persisted with
:mod:`strategies.private_training`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fedal.schema import Schema
from fedal.training import epoch_batches
from strategies.base import RoundContext, top_k
from strategies.private_training import (
    BatchSize,
    Epochs,
    LearningRate,
    NetworkStrategy,
    PrivateNetwork,
    step,
)
from strategies.registry import register
from strategies.scoring import predict_embeddings


class LossPredictionModule(nn.Module):
    """Figure 2 with one feature level: ``FC(embedding_dim -> width) - ReLU - FC(1)``."""

    def __init__(self, embedding_dim: int, width: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(embedding_dim, width)
        self.out = nn.Linear(width, 1)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Predicted losses, shape ``(B,)``."""
        return self.out(F.relu(self.hidden(embeddings))).squeeze(1)


def margin_ranking_loss(
    predicted: torch.Tensor, target: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """Equation 2 over a batch split in halves: pairs ``(i, i + B/2)``; an odd last
    sample is left out. ``1(l_i, l_j)`` is +1 when ``l_i > l_j`` and -1 otherwise."""
    half = len(predicted) // 2
    if half == 0:
        return predicted.sum() * 0.0
    first, second = predicted[:half], predicted[half : 2 * half]
    larger = target[:half] > target[half : 2 * half]
    sign = torch.where(larger, 1.0, -1.0).to(predicted.dtype)
    return torch.clamp(-sign * (first - second) + margin, min=0).mean()


class LL4ALOptions(Schema):
    """``[query.options]`` of ``ll4al``; paper values (section 4.1, CIFAR-10) in brackets.

    - ``epochs``: passes over the labelled embeddings per ``fit`` [200, jointly with the
      target model]; ``lr``, ``momentum``, ``weight_decay``: SGD [0.1, 0.9, 5e-4];
      ``batch_size``: B, split in B/2 pairs [128].
    - ``margin``: xi of equation 2 [1].
    - ``width``: units of the module's hidden layer [128 per feature level].
    - ``subset_size``: random candidates scored per query [10000; 0 = all].
    - ``warm_start``: keep the module across rounds [the paper trains from scratch].

    The default of 20 epochs keeps ``fit`` cheap on a CPU (the module is two small linear
    layers on fixed embeddings).
    """

    epochs: Epochs = 20
    lr: LearningRate = 0.1
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: BatchSize = 128
    margin: float = Field(1.0, ge=0)
    width: int = Field(128, ge=1)
    subset_size: int = Field(10000, ge=0)
    warm_start: bool = True


@register
class LearningLoss(NetworkStrategy):
    """Select the largest predicted losses (within a random subset of candidates)."""

    name = "ll4al"
    Options = LL4ALOptions
    options: LL4ALOptions

    def __init__(self, options: Mapping[str, object] | None = None) -> None:
        super().__init__(options)
        self.networks: PrivateNetwork[LossPredictionModule] = PrivateNetwork(self._build)

    def _build(self, ctx: RoundContext) -> LossPredictionModule:
        return LossPredictionModule(ctx.model.embedding_dim, self.options.width)

    # ------------------------------------------------------------------ training

    def fit(self, ctx: RoundContext) -> None:
        """Equation 2 on the scoring model's labelled embeddings and per-sample losses."""
        opts = self.options
        module = self.networks.get(ctx, fresh=not opts.warm_start)
        if len(ctx.labelled) < 2 or opts.epochs == 0:
            return
        hidden, logits = predict_embeddings(ctx.model, ctx.labelled, ctx.device, ctx.batch_size)
        targets = torch.as_tensor(ctx.labelled.labels, dtype=torch.long)
        losses = F.cross_entropy(logits, targets, reduction="none").to(ctx.device)
        hidden = hidden.to(ctx.device)
        optimizer = torch.optim.SGD(
            module.parameters(), lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay
        )
        module.train()
        for _ in range(opts.epochs):
            for rows in epoch_batches(len(hidden), opts.batch_size, ctx.generator):
                index = torch.from_numpy(rows).to(ctx.device)
                loss = margin_ranking_loss(module(hidden[index]), losses[index], opts.margin)
                step(optimizer, module, loss)
        module.eval()

    # ------------------------------------------------------------------ selection

    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        """Top-``budget`` predicted losses among the random subset."""
        if budget <= 0 or len(ctx.candidates) == 0:
            return np.empty(0, dtype=np.int64)
        subset = self.random_subset(ctx, budget)
        return subset[top_k(self.predicted_losses(ctx, subset), budget)]

    def random_subset(self, ctx: RoundContext, budget: int) -> np.ndarray:
        """Sorted candidate positions of the subset (all when it covers the pool)."""
        pool = len(ctx.candidates)
        size = max(self.options.subset_size, budget) if self.options.subset_size else pool
        if size >= pool:
            return np.arange(pool, dtype=np.int64)
        return np.sort(ctx.rng.choice(pool, size=size, replace=False)).astype(np.int64)

    @torch.no_grad()
    def predicted_losses(self, ctx: RoundContext, subset: np.ndarray) -> torch.Tensor:
        """The module's predicted loss for the candidates at ``subset``, on the CPU."""
        module = self.networks.get(ctx)
        view = ctx.candidates.subset(subset)
        hidden, _ = predict_embeddings(ctx.model, view, ctx.device, ctx.batch_size)
        module.eval()
        return module(hidden.to(ctx.device)).cpu()

    # ------------------------------------------------------------------ state
