"""ALFA-Mix: Active Learning by Feature Mixing (Parvaneh et al., CVPR 2022), section 3.

The scoring model's embedding ``z = ctx.model.embed(x)`` and linear head ``f_c =
ctx.model.head`` are used as they are; the strategy trains nothing and keeps no state.

1. *Anchors* (section 3.2): for every class y present in the labelled set, the anchor
   ``z*_y`` is the mean embedding of the labelled samples of class y.
2. *Pseudo-labels*: ``y*_u = argmax f_c(z_u)``, the model's prediction on candidate u.
3. *Optimal interpolation* (equations 4-5): the mixing ``z~ = alpha (.) z*_y + (1 - alpha)
   (.) z_u`` (per-dimension alpha, ``||alpha|| <= epsilon``) that most increases the loss
   ``l(f_c(z~), y*_u)``. A first-order expansion of the loss around ``z_u`` and the dual
   norm give the closed form (equation 5)

       alpha* = epsilon ||z*_y - z_u||_2 g / (||g||_2 (z*_y - z_u)),   (element-wise ratio)

   with ``g = d l(f_c(z_u), y*_u) / d z_u`` the gradient of the cross entropy of the
   candidate against its own pseudo-label (:func:`loss_gradients`, :func:`optimal_alpha`).
4. *Candidate set* (section 3.3): u is a candidate when the head's prediction on ``z~``
   differs from ``y*_u`` for at least one anchor (:func:`prediction_changes`).
5. *Diversity* (section 3.3): the candidates' embeddings ``z_u`` are clustered with
   k-means into as many clusters as the budget (k-means++ seeds from ``ctx.rng``, Lloyd
   steps, :mod:`strategies.kmeans`) and the candidate nearest to each centre is chosen.

Readings fixed here:

- *Bounding alpha*. Equation 5 can give negative values or values above epsilon in a
  dimension (where ``z*_y - z_u`` is small or has the opposite sign of g); the
  interpolation is kept an interpolation by clipping alpha element-wise to ``[0,
  epsilon]``. Dimensions where ``z*_y = z_u`` (and all of them when ``g = 0``) get
  alpha 0: mixing cannot move them.
- *Growing the bound* (``grow_epsilon``, default on). While the candidate set is
  smaller than the budget the search is repeated with the bound raised to 2 epsilon,
  3 epsilon, ... (at most 1), the candidate sets joined; it stops at the first bound
  that reaches the budget.
- *Too few candidates*. With fewer candidates than the budget all are taken and the
  remainder is filled (``fill``) with random other candidates (default) or the other
  candidates of largest predictive entropy. With no labelled data there are no anchors
  and the whole budget is filled that way.
- *Loss*. Cross entropy on the head's logits (no dropout, the model in eval mode).

Distances and k-means are chunked (:mod:`strategies.distances`); interpolations are
computed ``chunk_size`` candidates at a time, so memory stays ``O(chunk_size x d)``
besides the embeddings.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fedal.schema import Schema
from strategies.base import QueryStrategy, RoundContext, top_k
from strategies.distances import (
    DEFAULT_CHUNK_SIZE,
    ChunkSize,
)
from strategies.kmeans import kmeans_representatives
from strategies.registry import register
from strategies.scoring import entropy, predict_embeddings

DIFFERENCE_FLOOR = 1e-12
"""``|z*_y - z_u|`` below this counts as zero in equation 5 (alpha set to 0 there)."""


def class_anchors(
    embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Section 3.2: mean labelled embedding per class present; ``(anchors, classes)``."""
    classes = torch.unique(labels[(labels >= 0) & (labels < num_classes)])
    if len(classes) == 0:
        return embeddings.new_empty(0, embeddings.shape[1]), classes
    anchors = torch.stack([embeddings[labels == c].mean(dim=0) for c in classes])
    return anchors, classes


def loss_gradients(head: nn.Module, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, y*)``: per-sample gradients of ``CE(head(z_u), y*_u)`` w.r.t. ``z_u`` and the
    pseudo-labels ``y*_u = argmax head(z_u)``. The head's own gradients are untouched."""
    with torch.enable_grad():
        hidden = embeddings.detach().clone().requires_grad_(True)
        logits = head(hidden)
        pseudo = logits.argmax(dim=1).detach()
        loss = F.cross_entropy(logits, pseudo, reduction="sum")  # sum: per-sample gradients
        (grads,) = torch.autograd.grad(loss, hidden)
    return grads.detach(), pseudo


def optimal_alpha(
    embeddings: torch.Tensor, anchor: torch.Tensor, grads: torch.Tensor, epsilon: float
) -> torch.Tensor:
    """Equation 5, clipped to ``[0, epsilon]`` element-wise: one alpha row per candidate.

    ``alpha* = epsilon ||z* - z_u||_2 g / (||g||_2 (z* - z_u))``; ``embeddings`` and
    ``grads`` are ``(N, d)``, ``anchor`` is ``(d,)``.
    """
    difference = anchor.unsqueeze(0) - embeddings
    scale = epsilon * difference.norm(dim=1, keepdim=True) / grads.norm(dim=1, keepdim=True)
    scale = torch.nan_to_num(scale, nan=0.0, posinf=0.0)
    movable = difference.abs() > DIFFERENCE_FLOOR
    ratio = torch.where(movable, grads / torch.where(movable, difference, 1.0), 0.0)
    return (scale * ratio).clamp(0.0, epsilon)


def mix(embeddings: torch.Tensor, anchor: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Equation 4's interpolation ``alpha (.) z* + (1 - alpha) (.) z_u``."""
    return alpha * anchor.unsqueeze(0) + (1 - alpha) * embeddings


@torch.no_grad()
def prediction_changes(
    head: nn.Module,
    embeddings: torch.Tensor,
    anchors: torch.Tensor,
    epsilon: float,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Section 3.3: a boolean per candidate, ``True`` when the head's prediction on some
    anchor's optimal interpolation differs from the candidate's pseudo-label."""
    changed = torch.zeros(len(embeddings), dtype=torch.bool, device=embeddings.device)
    for start in range(0, len(embeddings), chunk_size):
        rows = embeddings[start : start + chunk_size]
        grads, pseudo = loss_gradients(head, rows)
        for anchor in anchors:
            mixed = mix(rows, anchor, optimal_alpha(rows, anchor, grads, epsilon))
            changed[start : start + chunk_size] |= head(mixed).argmax(dim=1) != pseudo
    return changed


class ALFAMixOptions(Schema):
    """``[query.options]`` of ``alfa_mix``.

    - ``epsilon``: the bound on alpha in equations 4-5 (each alpha component lies in
      ``[0, epsilon]``).
    - ``grow_epsilon``: while fewer candidates than the budget are found, try again with
      the bound raised by ``epsilon`` (up to 1), keeping the candidates found so far.
    - ``fill``: how a budget larger than the candidate set is completed, ``random`` or
      ``entropy`` (largest predictive entropy first).
    - ``iterations``: Lloyd steps of the k-means over the candidate set.
    - ``chunk_size``: candidates per block of interpolations and distances.
    """

    epsilon: float = Field(0.2, gt=0, le=1)
    grow_epsilon: bool = True
    fill: Literal["random", "entropy"] = "random"
    iterations: int = Field(5, ge=1)
    chunk_size: ChunkSize = DEFAULT_CHUNK_SIZE


@register
class ALFAMix(QueryStrategy):
    """Candidates whose prediction flips under feature mixing, diversified by k-means."""

    name = "alfa_mix"
    Options = ALFAMixOptions
    options: ALFAMixOptions

    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        pool = len(ctx.candidates)
        budget = min(budget, pool)
        if budget <= 0:
            return np.empty(0, dtype=np.int64)
        hidden, logits = predict_embeddings(ctx.model, ctx.candidates, ctx.device, ctx.batch_size)
        changed = self.candidate_set(ctx, hidden, budget)
        candidates = np.flatnonzero(changed.cpu().numpy()).astype(np.int64)
        if len(candidates) > budget:
            picked = self.cluster_centres(ctx, hidden[torch.from_numpy(candidates)], budget)
            return candidates[picked]
        return self.filled(ctx, candidates, logits, budget)

    def candidate_set(self, ctx: RoundContext, hidden: torch.Tensor, budget: int) -> torch.Tensor:
        """Section 3.3's candidate mask over the candidates' embeddings ``hidden``: the
        union over the bounds of :meth:`epsilons`, stopping at the first bound by which
        at least ``budget`` candidates are found."""
        if len(ctx.labelled) == 0:
            return torch.zeros(len(hidden), dtype=torch.bool)
        labelled_hidden, _ = predict_embeddings(ctx.model, ctx.labelled, ctx.device, ctx.batch_size)
        labels = torch.as_tensor(ctx.labelled.labels, dtype=torch.long)
        anchors, _ = class_anchors(labelled_hidden, labels, ctx.num_classes)
        head = ctx.model.head
        was_training = head.training
        head.eval()
        dtype = next(head.parameters()).dtype
        points, anchors = hidden.to(ctx.device, dtype), anchors.to(ctx.device, dtype)
        changed = torch.zeros(len(hidden), dtype=torch.bool)
        try:
            for epsilon in self.epsilons():
                chunk = self.options.chunk_size
                changed |= prediction_changes(head, points, anchors, epsilon, chunk).cpu()
                if changed.sum() >= budget:
                    break
        finally:
            head.train(was_training)
        return changed

    def epsilons(self) -> list[float]:
        """The bounds tried in order: ``epsilon``, then (``grow_epsilon``) ``2 epsilon``,
        ``3 epsilon``, ... up to 1."""
        epsilon = self.options.epsilon
        if not self.options.grow_epsilon:
            return [epsilon]
        steps = math.ceil(1 / epsilon - 1e-9)
        return [min(1.0, epsilon * (k + 1)) for k in range(steps)]

    def cluster_centres(self, ctx: RoundContext, hidden: torch.Tensor, budget: int) -> np.ndarray:
        """Positions (into ``hidden``) of the points nearest to ``budget`` k-means centres."""
        opts = self.options
        return kmeans_representatives(hidden, budget, ctx, opts.iterations, opts.chunk_size)

    def filled(
        self, ctx: RoundContext, chosen: np.ndarray, logits: torch.Tensor, budget: int
    ) -> np.ndarray:
        """``chosen`` completed to ``budget`` positions with the ``fill`` rule."""
        rest = np.setdiff1d(np.arange(len(ctx.candidates)), chosen).astype(np.int64)
        missing = budget - len(chosen)
        if missing <= 0:
            return chosen
        if self.options.fill == "entropy":
            scores = entropy(torch.softmax(logits[torch.from_numpy(rest)], dim=1))
            extra = rest[top_k(scores, missing)]
        else:
            extra = ctx.rng.choice(rest, size=missing, replace=False).astype(np.int64)
        return np.concatenate([chosen, extra]).astype(np.int64)
