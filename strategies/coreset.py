"""Core-set selection by greedy k-center (Sener & Savarese, ICLR 2018).

Survey: active learning as core-set selection; the greedy 2-approximation of the
k-center problem repeatedly adds the candidate farthest from every current centre,

    u = argmax_{i in candidates} min_{j in centres} ||h_i - h_j||,

starting from the labelled set as centres, in the scoring model's penultimate embedding
space ``h`` (``Classifier.embed``). A running vector of each candidate's squared
distance to its nearest centre is updated with one new centre per step, in chunks
(:mod:`strategies.distances`); no ``N x N`` matrix is formed.

Empty labelled set (documented fallback): the first centre is the candidate farthest
from the mean candidate embedding (ties: lowest position).
"""

from __future__ import annotations

import numpy as np
import torch

from fedal.schema import Schema
from fedal.views import SampleView
from strategies.base import QueryStrategy, RoundContext
from strategies.distances import (
    DEFAULT_CHUNK_SIZE,
    ChunkSize,
    EuclideanSpace,
    as_float64,
    nearest_centres,
    sq_distances_to,
)
from strategies.registry import register
from strategies.scoring import predict_embeddings


def greedy_k_center(
    candidates: EuclideanSpace,
    min_sq: torch.Tensor,
    budget: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """Farthest-first traversal from ``min_sq``, each candidate's distance to the centres.

    Entries marked ``-1`` are already chosen. Picks up to ``budget`` distinct unchosen
    candidates; ties go to the lowest position.
    """
    min_sq = min_sq.clone()
    count = min(budget, int((min_sq >= 0).sum()))
    picks = torch.empty(count, dtype=torch.long, device=min_sq.device)
    for step in range(len(picks)):  # each pick stays on the device until the end
        pick = min_sq.argmax().reshape(1)
        picks[step : step + 1] = pick
        min_sq = torch.minimum(min_sq, sq_distances_to(candidates, pick, chunk_size))
        min_sq.index_fill_(0, pick, -1.0)
    return picks.cpu().numpy()


@register
class CoreSet(QueryStrategy):
    """Greedy k-center on penultimate embeddings, labelled samples as initial centres."""

    name = "coreset"

    class Options(Schema):
        """``chunk_size``: rows (and centres) per block of distance computations."""

        chunk_size: ChunkSize = DEFAULT_CHUNK_SIZE

    options: Options

    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        if budget <= 0 or len(ctx.candidates) == 0:
            return np.empty(0, dtype=np.int64)
        chunk = self.options.chunk_size
        candidates = self._space(ctx, ctx.candidates)
        if len(ctx.labelled) > 0:
            min_sq = nearest_centres(candidates, self._space(ctx, ctx.labelled), chunk)[0]
            return greedy_k_center(candidates, min_sq, budget, chunk)
        mean = EuclideanSpace(candidates.points.mean(dim=0, keepdim=True))
        first = int(nearest_centres(candidates, mean, chunk)[0].argmax())
        min_sq = sq_distances_to(candidates, first, chunk)
        min_sq[first] = -1.0
        rest = greedy_k_center(candidates, min_sq, budget - 1, chunk)
        return np.concatenate([[first], rest]).astype(np.int64)

    @staticmethod
    def _space(ctx: RoundContext, view: SampleView) -> EuclideanSpace:
        embeddings, _ = predict_embeddings(ctx.model, view, ctx.device, ctx.batch_size)
        return EuclideanSpace(as_float64(embeddings, ctx.device))
