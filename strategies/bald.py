"""BALD: Bayesian Active Learning by Disagreement (Houlsby et al. 2011; Gal et al. 2017).

Survey: select ``x`` maximising the mutual information between its label and the weights,

    I[y; theta | x, D] = H[ E_theta P(y | x, theta) ] - E_theta H[ P(y | x, theta) ],

estimated with ``T`` MC-dropout samples ``theta_t`` (:mod:`strategies.mc_dropout`):
the entropy of the mean prediction minus the mean entropy of the samples. High when
the model is uncertain on average but each posterior draw is confident.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from fedal.schema import Schema
from strategies.base import QueryStrategy, RoundContext, top_k
from strategies.mc_dropout import mc_dropout_probs
from strategies.registry import register
from strategies.scoring import entropy


def sample_entropies(member_probs: torch.Tensor) -> torch.Tensor:
    """``H[P(y | x, theta_t)]`` for a ``(T, N, C)`` tensor, shape ``(T, N)``."""
    samples, rows, classes = member_probs.shape
    return entropy(member_probs.reshape(samples * rows, classes)).reshape(samples, rows)


def bald_scores(member_probs: torch.Tensor) -> torch.Tensor:
    """Mutual information ``H[mean_t p_t] - mean_t H[p_t]`` per input, from ``(T, N, C)``."""
    return entropy(member_probs.mean(dim=0)) - sample_entropies(member_probs).mean(dim=0)


@register
class BALD(QueryStrategy):
    """Select the candidates with the largest MC-dropout mutual information.

    Needs a scoring model with dropout (``model.dropout > 0``); otherwise ``select``
    raises a ``ValueError``.
    """

    name = "bald"
    needs_dropout = True

    class Options(Schema):
        """``samples``: MC-dropout forward passes T."""

        samples: int = Field(10, ge=1)

    options: Options

    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        if budget <= 0 or len(ctx.candidates) == 0:
            return np.empty(0, dtype=np.int64)
        return top_k(bald_scores(mc_dropout_probs(ctx, self.options.samples)), budget)
