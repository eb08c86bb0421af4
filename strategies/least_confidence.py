"""Least-confidence sampling (Lewis & Gale 1994; survey: U(x) = 1 - P(y_hat | x)).

Also known as the variation ratio: the candidates whose most likely class has the
lowest predicted probability are the most uncertain.
"""

from __future__ import annotations

import numpy as np
import torch

from strategies.base import QueryStrategy, RoundContext, top_k
from strategies.registry import register
from strategies.scoring import predict_probs


def least_confidence_scores(probs: torch.Tensor) -> torch.Tensor:
    """``U(x) = 1 - max_y P(y | x)`` per row of an ``(N, C)`` probability matrix."""
    return 1.0 - probs.max(dim=1).values


@register
class LeastConfidenceSampling(QueryStrategy):
    """Select the candidates with the largest ``1 - max_y P(y | x)``."""

    name = "least_confidence"

    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        if budget <= 0 or len(ctx.candidates) == 0:
            return np.empty(0, dtype=np.int64)
        probs = predict_probs(ctx.model, ctx.candidates, ctx.device, ctx.batch_size)
        return top_k(least_confidence_scores(probs), budget)
