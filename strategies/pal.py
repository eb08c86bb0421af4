"""PAL: Pretext-based Active Learning (Bhatnagar et al.), Algorithm 1, equations 1, 3, 4.

A private *scoring network* (:class:`strategies.pal_heads.PretextScorer`: a
``ctx.build_model(backbone)`` trunk with the classification head h_psi and a rotation
head g_phi) scores the candidates; the task network is the runtime's business.

Readings of the paper fixed here:

- *Training data* (section 3.1, Algorithm 1). The rotation head is trained "on only the
  images from D_L, so that the head learns the distribution of the labeled data", and the
  classification head on D_L with its labels: ``ctx.private_unlabelled`` is not used.
  Both losses are summed per labelled batch (:func:`strategies.pal_heads.multitask_loss`).
- *Direction.* Algorithm 1 writes ``argmin`` over the score, but sections 3.1-3.3 select
  "the N most informative samples ... with the highest S": S_S is near 0 and S_C high for
  novel samples, S_D is small for samples like those already chosen. The text is
  followed: each sub-query takes the *largest* scores.
- *Sub-queries* (section 3.3). The budget N is split into K sub-queries of N/K (sizes
  differing by at most one; ``min(K, N)`` sub-queries). The first uses equation 3; after
  each one a copy g_phi' of the rotation head (initialised once to g_phi, then carried
  on) is fine-tuned on the rotations of *all* samples chosen so far, and the next
  sub-query uses equation 4 with ``S_D`` from g_phi'. Only the head is tuned ("we tune
  only the self-supervision head between the sub-queries"), on the trunk's fixed
  embeddings; the scoring network itself is never changed by ``select``.
- *Ablations* (section 4.5): ``variant`` sets ``lambda1 = lambda2 = 0``
  (``self_supervision``), ``lambda2 = 0`` (``plus_classification``) or keeps both
  (``full``). Without the diversity term a single query is taken (sub-queries would not
  change the scores). The scoring network is trained the same way in every variant.
- *Across rounds.* The paper retrains every network from scratch after each query;
  here ``warm_start`` (default) carries the scoring network on through the strategy's
  state, ``warm_start = False`` is the paper's protocol.

The scoring network is built, seeded, trained and persisted with
:mod:`strategies.private_training`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch
from pydantic import Field

from strategies.base import RoundContext, top_k
from strategies.pal_heads import (
    PretextScorer,
    Variant,
    classification_score,
    finetune_rotation_head,
    hybrid_score,
    multitask_loss,
    rotation_score,
    variant_weights,
)
from strategies.private_training import (
    NetworkStrategy,
    PrivateNetwork,
    PrivateTrainingOptions,
    labelled_batches,
    step,
)
from strategies.registry import register
from strategies.scoring import predict_logits


class PALOptions(PrivateTrainingOptions):
    """``[query.options]`` of ``pal``; paper values (appendix B, Table 2) in brackets.

    - ``lambda1``, ``lambda2``: weights of S_C and S_D in equation 4 [1 and 1 on
      CIFAR-10/SVHN/Caltech-101; 0.5 and 0 on Cityscapes].
    - ``subqueries``: K sub-queries per query [not reported].
    - ``variant``: ``full``, ``plus_classification`` or ``self_supervision`` (section 4.5).
    - ``finetune_steps``: E_S, full-batch fine-tuning steps of g_phi' after each
      sub-query [not reported].
    - ``backbone``: scoring-network trunk [ResNet-18; VGG-16 in section 4.4].
    - ``epochs``: E_Q [100]; ``lr``: alpha_S, also used for fine-tuning [0.01, SGD];
      ``momentum``, ``weight_decay`` [not reported]; ``batch_size`` [64; 32 on
      Caltech-101]; ``warm_start`` [False: retrained from scratch]; ``augment``.

    The defaults keep one ``fit`` + ``select`` cheap on a CPU; experiment configs set
    paper values.
    """

    lambda1: float = Field(1.0, ge=0)
    lambda2: float = Field(1.0, ge=0)
    subqueries: int = Field(4, ge=1)
    variant: Variant = "full"
    finetune_steps: int = Field(20, ge=0)


@register
class PretextActiveLearning(NetworkStrategy):
    """Select by the hybrid self-supervision + classification score in diverse sub-queries.

    The scoring network (weights and BatchNorm statistics) persists through
    :meth:`state_dict` under its own parameter names; the optimizer restarts every ``fit``.
    """

    name = "pal"
    Options = PALOptions
    options: PALOptions

    def __init__(self, options: Mapping[str, object] | None = None) -> None:
        super().__init__(options)
        self.networks: PrivateNetwork[PretextScorer] = PrivateNetwork(self._build)

    def _build(self, ctx: RoundContext) -> PretextScorer:
        return PretextScorer(ctx.build_model(self.options.backbone))

    # ------------------------------------------------------------------ training

    def fit(self, ctx: RoundContext) -> None:
        """Algorithm 1, "training ... scoring networks": ``epochs`` passes over D_L."""
        opts = self.options
        network = self.networks.get(ctx, fresh=not opts.warm_start)
        if len(ctx.labelled) == 0 or opts.epochs == 0:
            return
        optimizer = opts.optimizer(network)
        network.train()
        for _ in range(opts.epochs):
            for inputs, targets in labelled_batches(ctx, opts.batch_size, opts.augment):
                step(optimizer, network, multitask_loss(network, inputs, targets))
        network.eval()

    # ------------------------------------------------------------------ selection

    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        """The union of the sub-queries of :meth:`select_subqueries`."""
        chunks = self.select_subqueries(ctx, budget)
        return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)

    @torch.no_grad()
    def select_subqueries(self, ctx: RoundContext, budget: int) -> list[np.ndarray]:
        """Algorithm 1, "diversity-based sub-query sampling": one position array per
        sub-query, in order; their union has ``min(budget, len(candidates))`` positions."""
        budget = min(budget, len(ctx.candidates))
        if budget <= 0:
            return []
        opts = self.options
        lambda1, lambda2 = variant_weights(opts.variant, opts.lambda1, opts.lambda2)
        network = self.networks.get(ctx)
        # the network's output is the (N, 4, D) embeddings of the four rotations
        embeddings = predict_logits(network, ctx.candidates, ctx.device, ctx.batch_size)
        embeddings = embeddings.to(ctx.device)
        s_s = rotation_score(network.rotation_head(embeddings))
        s_c = classification_score(network.classifier.head(embeddings[:, 0]))
        head = copy.deepcopy(network.rotation_head)
        optimizer = opts.optimizer(head)
        score = hybrid_score(s_s, s_c, lambda1)
        taken = torch.zeros(len(embeddings), dtype=torch.bool, device=embeddings.device)
        chunks: list[np.ndarray] = []
        for size in subquery_sizes(budget, opts.subqueries if lambda2 > 0 else 1):
            if chunks:
                with torch.enable_grad():
                    finetune_rotation_head(head, optimizer, embeddings[taken], opts.finetune_steps)
                score = hybrid_score(s_s, s_c, lambda1, rotation_score(head(embeddings)), lambda2)
            chunk = top_k(score.masked_fill(taken, -torch.inf), size)
            taken[torch.as_tensor(chunk, device=taken.device)] = True
            chunks.append(chunk)
        return chunks

    # ------------------------------------------------------------------ state


def subquery_sizes(budget: int, subqueries: int) -> list[int]:
    """``min(subqueries, budget)`` sizes summing to ``budget``, differing by at most one."""
    count = min(subqueries, budget)
    return [len(part) for part in np.array_split(np.arange(budget), count)] if count else []
