"""Maximum-entropy sampling (Shannon 1948; survey: x* = argmax_x -sum_y P(y|x) log P(y|x))."""

from __future__ import annotations

import numpy as np

from strategies.base import QueryStrategy, RoundContext, top_k
from strategies.registry import register
from strategies.scoring import entropy, predict_probs


@register
class EntropySampling(QueryStrategy):
    """Select the candidates whose predicted class distribution has the largest entropy."""

    name = "entropy"

    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        if budget <= 0 or len(ctx.candidates) == 0:
            return np.empty(0, dtype=np.int64)
        probs = predict_probs(ctx.model, ctx.candidates, ctx.device, ctx.batch_size)
        return top_k(entropy(probs), budget)
