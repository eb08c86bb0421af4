"""Random sampling: the baseline every acquisition function is measured against."""

from __future__ import annotations

import numpy as np

from strategies.base import QueryStrategy, RoundContext
from strategies.registry import register


@register
class RandomSampling(QueryStrategy):
    """Uniformly random candidates, drawn from the round's seeded generator."""

    name = "random"

    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        budget = min(budget, len(ctx.candidates))
        return ctx.rng.choice(len(ctx.candidates), size=budget, replace=False).astype(np.int64)
