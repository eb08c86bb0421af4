"""k-means diversity sampling (representativeness only; cf. Zhdanov 2019 in the survey).

Clusters the candidates' penultimate embeddings into ``k = budget`` clusters with
Lloyd's algorithm (Lloyd 1982): assign every point to its nearest centroid, move each
centroid to the mean of its points; a few iterations from a k-means++ initialisation
(Arthur & Vassilvitskii 2007) drawn with ``ctx.rng``. Then, centroid by centroid, the
nearest not yet chosen candidate is selected, so the batch has no duplicates even when
clusters are empty or candidates coincide. Distances are chunked
(:mod:`strategies.distances`); no ``N x N`` matrix is formed.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from fedal.schema import Schema
from strategies.base import QueryStrategy, RoundContext
from strategies.distances import (
    DEFAULT_CHUNK_SIZE,
    ChunkSize,
    EuclideanSpace,
    as_float64,
    kmeans_plus_plus,
    nearest_centres,
    sq_distances,
)
from strategies.registry import register
from strategies.scoring import predict_embeddings


def lloyd(
    space: EuclideanSpace, centroids: torch.Tensor, iterations: int, chunk_size: int
) -> torch.Tensor:
    """Up to ``iterations`` Lloyd steps (stopping early once assignments are stable).

    A centroid that loses all its points stays where it is.
    """
    previous = None
    for _ in range(iterations):
        assignment = nearest_centres(space, EuclideanSpace(centroids), chunk_size)[1]
        if previous is not None and torch.equal(assignment, previous):
            break
        previous = assignment
        sums = torch.zeros_like(centroids).index_add_(0, assignment, space.points)
        counts = torch.bincount(assignment, minlength=len(centroids)).unsqueeze(1)
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    return centroids


def nearest_distinct(space: EuclideanSpace, centroids: torch.Tensor, chunk_size: int) -> np.ndarray:
    """For each centroid in order, the nearest point not chosen for an earlier centroid.

    Distances to blocks of centroids are computed at once (about ``chunk_size^2``
    values per block); ties go to the lowest position.
    """
    taken = torch.zeros(len(space), dtype=torch.bool, device=centroids.device)
    picks = []
    step = max(1, chunk_size * chunk_size // len(space))
    for start in range(0, len(centroids), step):
        block = sq_distances(space, EuclideanSpace(centroids[start : start + step]))
        for column in block.T:  # each pick stays on the device until the end
            pick = column.masked_fill(taken, float("inf")).argmin().reshape(1)
            taken.index_fill_(0, pick, True)
            picks.append(pick)
    return torch.cat(picks).cpu().numpy() if picks else np.empty(0, dtype=np.int64)


@register
class KMeansSampling(QueryStrategy):
    """Select the candidate nearest to each of ``budget`` k-means centroids."""

    name = "kmeans"

    class Options(Schema):
        """``iterations``: Lloyd steps; ``chunk_size``: rows per distance block."""

        iterations: int = Field(5, ge=1)
        chunk_size: ChunkSize = DEFAULT_CHUNK_SIZE

    options: Options

    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        if budget <= 0 or len(ctx.candidates) == 0:
            return np.empty(0, dtype=np.int64)
        hidden, _ = predict_embeddings(ctx.model, ctx.candidates, ctx.device, ctx.batch_size)
        opts = self.options
        return kmeans_representatives(hidden, budget, ctx, opts.iterations, opts.chunk_size)


def kmeans_representatives(
    points: torch.Tensor, budget: int, ctx: RoundContext, iterations: int, chunk_size: int
) -> np.ndarray:
    """Positions of the points nearest to ``budget`` k-means centres: k-means++ seeding
    from a random first point (``ctx.rng``), then ``iterations`` Lloyd steps."""
    space = EuclideanSpace(as_float64(points, ctx.device))
    first = int(ctx.rng.integers(len(space)))
    seeds = kmeans_plus_plus(space, budget, first, ctx.rng, chunk_size)
    initial = space.points[torch.from_numpy(seeds)]
    centroids = lloyd(space, initial, iterations, chunk_size)
    return nearest_distinct(space, centroids, chunk_size)
