"""Margin sampling (Scheffer et al. 2001; survey: U(x) = P(y_1 | x) - P(y_2 | x)).

``y_1`` and ``y_2`` are the most and second most likely classes; a small margin means
the model hesitates between two classes, so the candidates with the *smallest* margin
are selected.
"""

from __future__ import annotations

import numpy as np
import torch

from strategies.base import QueryStrategy, RoundContext, top_k
from strategies.registry import register
from strategies.scoring import predict_probs


def margin_scores(probs: torch.Tensor) -> torch.Tensor:
    """``P(y_1 | x) - P(y_2 | x)`` per row of an ``(N, C)`` probability matrix, ``C >= 2``."""
    best_two = probs.topk(2, dim=1).values
    return best_two[:, 0] - best_two[:, 1]


@register
class MarginSampling(QueryStrategy):
    """Select the candidates with the smallest top-two probability margin."""

    name = "margin"

    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        if budget <= 0 or len(ctx.candidates) == 0:
            return np.empty(0, dtype=np.int64)
        probs = predict_probs(ctx.model, ctx.candidates, ctx.device, ctx.batch_size)
        return top_k(-margin_scores(probs), budget)
