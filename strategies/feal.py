"""FEAL (Chen et al., CVPR 2024, "Think Twice Before Selection: Federated Evidential
Active Learning for Medical Image Analysis with Domain Shifts"): calibrated evidential
sampling (CES) with the global and the local model, then the diversity relaxation.

- *Evidential outputs*: a model's logits ``z`` give evidence ``e = ReLU(z)`` and the
  parameters ``alpha = e + 1`` of a Dirichlet distribution over the class probabilities,
  ``S = sum_k alpha_k`` (:func:`dirichlet_parameters`).
- *Aleatoric uncertainty*: the expected entropy of the categorical under the Dirichlet,
  ``U_ale = E_{p ~ Dir(alpha)}[H(p)] = sum_k (alpha_k / S)(psi(S + 1) - psi(alpha_k + 1))``
  (:func:`aleatoric_uncertainty`), under the global model (``U_ale^g``) and under the
  local model (``U_ale^l``).
- *Epistemic uncertainty*: the entropy of the global model's Dirichlet,
  ``U_epi^g = H(Dir(alpha^g)) = log B(alpha) + (S - K) psi(S) - sum_k (alpha_k - 1) psi(alpha_k)``
  (:func:`epistemic_uncertainty`).
- *Calibration* (CES): ``U(x) = U~_epi^g(x) (U_ale^g(x) + U_ale^l(x))``, with ``U~_epi^g``
  min-max normalised over the candidates (:func:`calibrated_uncertainty`): the global
  model's epistemic uncertainty calibrates both models' aleatoric uncertainty.
- *Diversity relaxation*: candidates are taken in decreasing ``U``; one is skipped when
  it has ``neighbours`` other candidates with cosine similarity above ``similarity`` in
  the local model's feature space and one of those ``neighbours`` most similar ones is
  already chosen (:func:`diversity_relaxation`).

Models: the global model as received (``ctx.global_model``) and the local model, the
helper after this round's training (``ctx.model``); ``query.scoring_model = "both"``.
The paper trains both with its evidential loss (EML): the training option
``training.loss = "evidential"`` (:mod:`fedal.evidential`); with the default cross
entropy the evidence comes from cross-entropy logits, as listed with the other
deviations in experiments/README.md, "LoGo, KAFAL, FEAL".
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from fedal.schema import Schema
from strategies.base import QueryStrategy, RoundContext, global_and_local
from strategies.distances import DEFAULT_CHUNK_SIZE, ChunkSize
from strategies.registry import register
from strategies.scoring import predict_embeddings, predict_logits


class FEALOptions(Schema):
    """``[query.options]`` of ``feal``; the reference code's defaults in brackets.

    - ``neighbours``: n, the nearest neighbours the relaxation checks [5].
    - ``similarity``: the cosine similarity above which a candidate is a neighbour [0.85].
    - ``chunk_size``: about ``chunk_size^2`` similarities are held at once.
    """

    neighbours: int = Field(5, ge=1)
    similarity: float = Field(0.85, ge=-1, le=1)
    chunk_size: ChunkSize = DEFAULT_CHUNK_SIZE


@register
class FEAL(QueryStrategy):
    """Calibrated evidential uncertainty of the global and local model, relaxed for
    diversity in the local model's feature space."""

    name = "feal"
    Options = FEALOptions
    options: FEALOptions
    scoring_models = ("both",)

    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        count = min(budget, len(ctx.candidates))
        if count <= 0:
            return np.empty(0, dtype=np.int64)
        global_model, local_model = global_and_local(ctx, self.name)
        global_logits = predict_logits(global_model, ctx.candidates, ctx.device, ctx.batch_size)
        features, local_logits = predict_embeddings(
            local_model, ctx.candidates, ctx.device, ctx.batch_size
        )
        scores = calibrated_uncertainty(global_logits.double(), local_logits.double())
        ranking = np.argsort(-scores.numpy(), kind="stable")
        opts = self.options
        return diversity_relaxation(
            ranking, features, count, opts.neighbours, opts.similarity, opts.chunk_size
        )


def dirichlet_parameters(logits: torch.Tensor) -> torch.Tensor:
    """``alpha = ReLU(z) + 1``: evidence ``ReLU(z)`` plus the uniform prior."""
    return F.relu(logits) + 1


def aleatoric_uncertainty(alpha: torch.Tensor) -> torch.Tensor:
    """Expected entropy ``sum_k (alpha_k / S)(psi(S + 1) - psi(alpha_k + 1))`` per row."""
    total = alpha.sum(dim=1, keepdim=True)
    return (alpha / total * (torch.digamma(total + 1) - torch.digamma(alpha + 1))).sum(dim=1)


def epistemic_uncertainty(alpha: torch.Tensor) -> torch.Tensor:
    """Differential entropy of ``Dir(alpha)`` per row."""
    return torch.distributions.Dirichlet(alpha).entropy()


def min_max(values: torch.Tensor) -> torch.Tensor:
    """``(v - min v) / (max v - min v)``; all ones when every value is the same."""
    span = values.max() - values.min()
    if span <= 0:
        return torch.ones_like(values)
    return (values - values.min()) / span


def calibrated_uncertainty(global_logits: torch.Tensor, local_logits: torch.Tensor) -> torch.Tensor:
    """CES: ``U = U~_epi^g (U_ale^g + U_ale^l)``, ``U~_epi^g`` min-max normalised."""
    global_alpha = dirichlet_parameters(global_logits)
    aleatoric = aleatoric_uncertainty(global_alpha)
    aleatoric = aleatoric + aleatoric_uncertainty(dirichlet_parameters(local_logits))
    return min_max(epistemic_uncertainty(global_alpha)) * aleatoric


def diversity_relaxation(
    ranking: np.ndarray,
    features: torch.Tensor,
    count: int,
    neighbours: int,
    similarity: float,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """The relaxation: walk ``ranking`` (most uncertain first) and choose a candidate
    unless it has ``neighbours`` others with cosine similarity above ``similarity`` and
    one of those most similar ``neighbours`` is already chosen. Stops at ``count``; if
    the walk ends short, the skipped candidates follow in ranking order."""
    unit = F.normalize(features.double(), dim=1)
    size = len(unit)
    closest = min(neighbours, size - 1)
    chosen = np.zeros(size, dtype=bool)
    picks: list[int] = []
    block = max(1, chunk_size * chunk_size // size)
    for start in range(0, size, block):
        rows = torch.from_numpy(ranking[start : start + block])
        cosine = unit[rows] @ unit.T
        cosine[torch.arange(len(rows)), rows] = -float("inf")  # a candidate is not its neighbour
        values, index = cosine.topk(closest, dim=1)
        crowded = (values > similarity).all(dim=1) & (closest == neighbours)
        for row, position in enumerate(rows.tolist()):
            if crowded[row] and chosen[index[row].numpy()].any():
                continue
            chosen[position] = True
            picks.append(position)
            if len(picks) == count:
                return np.asarray(picks, dtype=np.int64)
    skipped = ranking[~chosen[ranking]][: count - len(picks)]
    return np.concatenate([np.asarray(picks, dtype=np.int64), skipped]).astype(np.int64)
