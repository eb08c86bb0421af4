"""FEAL's evidential training of the helper (Chen et al., CVPR 2024, "Think Twice
Before Selection: Federated Evidential Active Learning ...", section "Evidential Model
Learning"), as the reference code computes it (``utils/loss_func.py``, ``EDL_Loss``).

A model's logits ``z`` give evidence ``ReLU(z)`` and a Dirichlet ``Dir(alpha)`` with
``alpha = ReLU(z) + 1``, ``S = sum_k alpha_k`` (the mapping :mod:`strategies.feal` scores
with). For a labelled sample of class ``y`` (one-hot ``y_k``), over a batch of ``B``:

- ``L_ce = 1/B sum_b sum_k (2 - pi_k) y_k (psi(S) - psi(alpha_k))``: the Dirichlet's
  expected cross entropy weighted by the client's labelled class prior ``pi``
  (:func:`expected_cross_entropy`);
- ``L_kl = 1/B sum_b KL(Dir(alpha~) || Dir(1))`` with ``alpha~ = y + (1 - y) alpha``, the
  misleading evidence removed (:func:`uniform_dirichlet_kl`);
- ``L_cor = 1/B sum_b -(K / S) z_y`` with ``S`` held constant (:func:`correction_term`);
- ``L = L_ce + w (lambda_t L_kl + L_cor)``, ``w = kl_weight`` (0.01) and the annealing
  ``lambda_t = min(1, (t - 1) / annealing_rounds)`` in server round ``t`` (1-based;
  the reference code's ``min(1, round_idx / 10)``) (:func:`evidential_loss`).

Only the client's labelled data (its held labels) enter the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def expected_cross_entropy(
    alpha: torch.Tensor, one_hot: torch.Tensor, prior: torch.Tensor
) -> torch.Tensor:
    """``L_ce``: batch mean of ``sum_k (2 - pi_k) y_k (psi(S) - psi(alpha_k))``."""
    total = alpha.sum(dim=1, keepdim=True)
    terms = (2 - prior) * one_hot * (torch.digamma(total) - torch.digamma(alpha))
    return terms.sum() / len(alpha)


def uniform_dirichlet_kl(alpha: torch.Tensor) -> torch.Tensor:
    """Batch mean of ``KL(Dir(alpha) || Dir(1, ..., 1))``: ``log Gamma(S) - sum_k log
    Gamma(alpha_k) - log Gamma(K) + sum_k (alpha_k - 1)(psi(alpha_k) - psi(S))``."""
    total = alpha.sum(dim=1)
    classes = torch.tensor(float(alpha.shape[1]), dtype=alpha.dtype, device=alpha.device)
    normaliser = torch.lgamma(total) - torch.lgamma(alpha).sum(dim=1) - torch.lgamma(classes)
    spread = ((alpha - 1) * (torch.digamma(alpha) - torch.digamma(total[:, None]))).sum(dim=1)
    return (normaliser + spread).mean()


def correction_term(
    logits: torch.Tensor, alpha: torch.Tensor, one_hot: torch.Tensor
) -> torch.Tensor:
    """``L_cor``: batch mean of ``-(K / S) z_y``, ``S`` detached (no gradient through it)."""
    total = alpha.sum(dim=1, keepdim=True).detach()
    return (-logits.shape[1] / total * one_hot * logits).sum() / len(logits)


def annealing_coefficient(server_round: int, annealing_rounds: int) -> float:
    """``lambda_t = min(1, (t - 1) / annealing_rounds)``: 0 in round 1, 1 from then on
    after ``annealing_rounds`` rounds."""
    return min(1.0, (server_round - 1) / annealing_rounds)


def evidential_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    prior: torch.Tensor,
    annealing: float,
    kl_weight: float,
) -> torch.Tensor:
    """FEAL's evidential loss ``L_ce + kl_weight (annealing L_kl + L_cor)`` of a batch."""
    alpha = F.relu(logits) + 1
    one_hot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    misleading = (alpha - 1) * (1 - one_hot) + 1
    regulariser = annealing * uniform_dirichlet_kl(misleading)
    regulariser = regulariser + correction_term(logits, alpha, one_hot)
    return expected_cross_entropy(alpha, one_hot, prior) + kl_weight * regulariser


def class_prior(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """``pi``: the share of each class among the client's labels (float32)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.from_numpy(counts / max(1.0, counts.sum())).float()


@dataclass(frozen=True)
class EvidentialObjective:
    """The helper's per-batch loss with ``training.loss = "evidential"``."""

    prior: torch.Tensor
    annealing: float
    kl_weight: float

    def __call__(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        logits = model(inputs)
        prior = self.prior.to(device=logits.device, dtype=logits.dtype)
        return evidential_loss(logits, targets, prior, self.annealing, self.kl_weight)
