"""Query-by-committee (Seung et al. 1992) with an MC-dropout committee.

The committee is ``C`` MC-dropout samples of the scoring model (Gal & Ghahramani 2016,
:mod:`strategies.mc_dropout`), member ``c`` predicting ``P_c(y | x)``. Disagreement
measures from the survey:

- vote entropy: ``U(x) = H(V(y) / C)``, ``V(y)`` the number of members voting ``y``
  (their argmax);
- consensus entropy: ``U(x) = H(P_C)``, ``P_C = (1/C) sum_c P_c`` the mean prediction;
- KL to consensus: ``U(x) = (1/C) sum_c KL(P_c || P_C)``.

With an MC-dropout committee the KL score equals BALD's mutual information (the mean
KL to the mean is ``H[P_C] - mean_c H[P_c]``); it is kept for comparison with the
survey's committee formulation.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from pydantic import Field
from torch.nn import functional

from fedal.schema import Schema
from strategies.base import QueryStrategy, RoundContext, top_k
from strategies.mc_dropout import mc_dropout_probs
from strategies.registry import register
from strategies.scoring import entropy

LOG_FLOOR = 1e-12


def vote_entropy_scores(member_probs: torch.Tensor) -> torch.Tensor:
    """``H(V(y) / C)`` from ``(C, N, K)`` member probabilities (argmax votes)."""
    classes = member_probs.shape[2]
    votes = functional.one_hot(member_probs.argmax(dim=2), classes).float().mean(dim=0)
    return entropy(votes)


def consensus_entropy_scores(member_probs: torch.Tensor) -> torch.Tensor:
    """``H(P_C)``, the entropy of the members' mean prediction, from ``(C, N, K)``."""
    return entropy(member_probs.mean(dim=0))


def kl_to_consensus_scores(member_probs: torch.Tensor) -> torch.Tensor:
    """``(1/C) sum_c KL(P_c || P_C)`` from ``(C, N, K)``, with ``0 log 0 = 0``."""
    log_members = torch.log(member_probs.clamp_min(LOG_FLOOR))
    log_consensus = torch.log(member_probs.mean(dim=0).clamp_min(LOG_FLOOR))
    return (member_probs * (log_members - log_consensus)).sum(dim=2).mean(dim=0)


class CommitteeOptions(Schema):
    """``members``: committee size C (MC-dropout forward passes)."""

    members: int = Field(10, ge=1)


class _Committee(QueryStrategy):
    """Select the candidates on which the MC-dropout committee disagrees most."""

    Options = CommitteeOptions
    options: CommitteeOptions
    needs_dropout = True
    disagreement: ClassVar[staticmethod[[torch.Tensor], torch.Tensor]]

    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        if budget <= 0 or len(ctx.candidates) == 0:
            return np.empty(0, dtype=np.int64)
        member_probs = mc_dropout_probs(ctx, self.options.members)
        return top_k(self.disagreement(member_probs), budget)


@register
class VoteEntropy(_Committee):
    """Query-by-committee with vote entropy."""

    name = "vote_entropy"
    disagreement = staticmethod(vote_entropy_scores)


@register
class ConsensusEntropy(_Committee):
    """Query-by-committee with consensus entropy."""

    name = "consensus_entropy"
    disagreement = staticmethod(consensus_entropy_scores)


@register
class KLToConsensus(_Committee):
    """Query-by-committee with the mean KL divergence to the consensus."""

    name = "kl_to_consensus"
    disagreement = staticmethod(kl_to_consensus_scores)
