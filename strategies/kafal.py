"""KAFAL's sampling, KSAS (Cao et al., ICCV 2023, "Knowledge-Aware Federated Active
Learning with Non-IID Data"): knowledge-specialised active sampling.

KSAS queries the candidates on which the client's local model and the global model
disagree most, with the disagreement intensified on the client's *specialised* classes,
those frequent in its labelled data:

- *Knowledge-specialised prediction*: with ``n_c`` the client's labelled samples of class
  ``c``, a model's logits ``z`` give ``p~_c = n_c exp(z_c) / sum_j n_j exp(z_j)``, i.e. the
  softmax of ``z + log n`` (:func:`specialised_log_probs`); a class the client has no
  label of gets probability 0 under both models and adds nothing.
- *Discrepancy*: the symmetric KL divergence of the local (``p~^l``) and global
  (``p~^g``) specialised predictions,
  ``D(x) = 1/2 [KL(p~^g || p~^l) + KL(p~^l || p~^g)]``, i.e.
  ``D(x) = 1/2 sum_c (p~^l_c - p~^g_c)(log p~^l_c - log p~^g_c)`` (:func:`ksas_discrepancy`);
  the ``budget`` largest are queried (ties: lower position).

Models: the global model as received (``ctx.global_model``) and the locally specialised
model, the helper after this round's training (``ctx.model``); ``query.scoring_model =
"both"``. KAFAL's second part, KCFU (the knowledge-compensatory federated update: a
balanced-softmax loss and distillation from the global model on weak classes during
local training), changes helper training: it is the training option
``training.kcfu = true`` (:mod:`fedal.kcfu`), off by default; see experiments/README.md,
"LoGo, KAFAL, FEAL".
"""

from __future__ import annotations

import numpy as np
import torch

from strategies.base import QueryStrategy, RoundContext, global_and_local, top_k
from strategies.registry import register
from strategies.scoring import predict_logits


@register
class KAFAL(QueryStrategy):
    """KSAS: the largest knowledge-specialised discrepancy between local and global."""

    name = "kafal"
    needs_labelled = True
    scoring_models = ("both",)

    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        if len(ctx.labelled) == 0:
            raise ValueError("kafal: KSAS weighs classes by the labelled set; it is empty")
        if budget <= 0 or len(ctx.candidates) == 0:
            return np.empty(0, dtype=np.int64)
        global_model, local_model = global_and_local(ctx, self.name)
        local_logits = predict_logits(local_model, ctx.candidates, ctx.device, ctx.batch_size)
        global_logits = predict_logits(global_model, ctx.candidates, ctx.device, ctx.batch_size)
        counts = class_counts(ctx.labelled.labels, ctx.num_classes)
        return top_k(ksas_discrepancy(local_logits, global_logits, counts), budget)


def class_counts(labels: np.ndarray | None, num_classes: int) -> torch.Tensor:
    """``n_c``: labelled samples per class (float64)."""
    return torch.bincount(torch.as_tensor(labels), minlength=num_classes).double()


def specialised_log_probs(logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``log p~`` over the classes with ``n_c > 0``: ``log_softmax(z + log n)``."""
    present = counts > 0
    return torch.log_softmax(logits.double()[:, present] + counts[present].log(), dim=1)


def ksas_discrepancy(
    local_logits: torch.Tensor, global_logits: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """``D(x) = 1/2 [KL(p~^g || p~^l) + KL(p~^l || p~^g)]`` per row."""
    local = specialised_log_probs(local_logits, counts)
    received = specialised_log_probs(global_logits, counts)
    return 0.5 * ((local.exp() - received.exp()) * (local - received)).sum(dim=1)
