"""BADGE: Batch Active learning by Diverse Gradient Embeddings (Ash et al., ICLR 2020).

Survey: uncertainty is the magnitude of the gradient of the loss on ``(x, y_hat)``
(``y_hat`` the predicted class) with respect to the last layer; diversity comes from
k-means++ seeding over these gradient embeddings. For a linear head on the penultimate
embedding ``h`` (dimension ``d``) with softmax output ``p`` over ``C`` classes, the
cross-entropy gradient with respect to the head weights is the outer product

    g_x = (p - e_{y_hat}) h^T  =  u h^T,   u = p - onehot(argmax p).

The ``N x (C d)`` matrix of ``g_x`` is never formed: ``<g_a, g_b> = (u_a . u_b)(h_a . h_b)``,
hence ``||g_a - g_b||^2 = ||u_a||^2 ||h_a||^2 + ||u_b||^2 ||h_b||^2 - 2 (u_a . u_b)(h_a . h_b)``,
evaluated in chunks (:class:`GradientSpace`, :mod:`strategies.distances`).

Selection: the first centre is the candidate with the largest gradient norm; then
k-means++ draws each next centre with probability proportional to ``D^2`` using
``ctx.rng`` (:func:`strategies.distances.kmeans_plus_plus`, which never repeats a
centre and fills at random once every remaining ``D^2`` is zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch.nn import functional

from fedal.schema import Schema
from strategies.base import QueryStrategy, RoundContext
from strategies.distances import DEFAULT_CHUNK_SIZE, ChunkSize, as_float64, kmeans_plus_plus
from strategies.registry import register
from strategies.scoring import predict_embeddings


@dataclass(frozen=True)
class GradientSpace:
    """Gradient embeddings ``g_i = u_i h_i^T`` held as their factors ``u`` and ``h``."""

    residuals: torch.Tensor
    hidden: torch.Tensor

    def __len__(self) -> int:
        return len(self.hidden)

    @cached_property
    def sq_norms(self) -> torch.Tensor:
        """``||g_i||^2 = ||u_i||^2 ||h_i||^2``."""
        return (self.residuals**2).sum(dim=1) * (self.hidden**2).sum(dim=1)

    def inner(self, rows: slice, other: GradientSpace) -> torch.Tensor:
        """``<g_i, g_j> = (u_i . u_j)(h_i . h_j)``."""
        return (self.residuals[rows] @ other.residuals.T) * (self.hidden[rows] @ other.hidden.T)

    def take(self, index: torch.Tensor) -> GradientSpace:
        return GradientSpace(self.residuals[index], self.hidden[index])


def gradient_space(probs: torch.Tensor, hidden: torch.Tensor) -> GradientSpace:
    """The factorised gradient embeddings for ``(N, C)`` probabilities, ``(N, d)`` embeddings."""
    onehot = functional.one_hot(probs.argmax(dim=1), probs.shape[1]).to(probs.dtype)
    return GradientSpace(probs - onehot, hidden)


@register
class BADGE(QueryStrategy):
    """k-means++ seeding over last-layer gradient embeddings."""

    name = "badge"

    class Options(Schema):
        """``chunk_size``: rows (and centres) per block of distance computations."""

        chunk_size: ChunkSize = DEFAULT_CHUNK_SIZE

    options: Options

    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        if budget <= 0 or len(ctx.candidates) == 0:
            return np.empty(0, dtype=np.int64)
        hidden, logits = predict_embeddings(ctx.model, ctx.candidates, ctx.device, ctx.batch_size)
        probs = torch.softmax(as_float64(logits, ctx.device), dim=1)
        space = gradient_space(probs, as_float64(hidden, ctx.device))
        first = int(space.sq_norms.argmax())
        return kmeans_plus_plus(space, budget, first, ctx.rng, self.options.chunk_size)
