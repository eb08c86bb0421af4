"""KAFAL's knowledge-compensatory federated update, KCFU (Cao et al., ICCV 2023,
"Knowledge-Aware Federated Active Learning with Non-IID Data", section "Knowledge-
Compensatory Federated Update"), as the reference code computes it (``main.py``,
``train_epoch_client_distil``).

During local training the client's weak (locally scarce) classes are compensated:

- *Knowledge-compensatory local loss*: cross entropy of the balanced softmax,
  ``-log(n_y exp(z_y) / sum_j n_j exp(z_j))``, i.e. ``CE(z + log n, y)`` with ``n_c`` the
  client's labelled samples of class ``c`` (:func:`balanced_softmax_loss`); a class
  without labels gets ``log 0 = -inf`` and no gradient.
- *Compensatory distillation* from the global model as received (frozen, ``p^g``) on
  mixed inputs ``x~ = lam x + (1 - lam) x_pi`` (``lam ~ Beta(a, a)``, ``a = 2``, ``pi`` a
  random pairing of the batch; :func:`mixup`):
  ``L_kd = 1/B sum_b Gamma_b 1/C sum_c p^g_c (log p^g_c - log p^l_c)`` with
  ``Gamma_b = lam_b gamma[yhat_b] + (1 - lam_b) gamma[yhat_pi(b)]``, ``yhat`` the global
  model's predicted class of the mixed input, and the class weights
  ``gamma_c = (N / n_c) / sum_j (N / n_j)`` over the classes the client has labels of,
  0 for the others (:func:`compensatory_class_weights`, :func:`compensatory_distillation`).
  Scarce classes weigh most: the global model's knowledge of them is distilled hardest.
- ``L = L_bal + L_kd`` (no weight, as in the reference code). The reference code skips
  ``L_kd`` in the first communication round, when the server model is untrained; here
  in server round 1, whose global model is the initialisation.

Deviation (privacy): the reference code mixes *unlabelled* local samples; here the
mixed inputs are the (augmented) labelled batch, so only labelled data and the global
model's outputs on it enter the loss (see experiments/README.md, "LoGo, KAFAL, FEAL").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def label_counts(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """``n_c``: the client's labelled samples per class (float32)."""
    return torch.from_numpy(np.bincount(labels, minlength=num_classes).astype(np.float32))


def balanced_softmax_loss(
    logits: torch.Tensor, targets: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """``L_bal``: batch mean of ``CE(z + log n, y)``."""
    return F.cross_entropy(logits + counts.log(), targets)


def compensatory_class_weights(counts: torch.Tensor) -> torch.Tensor:
    """``gamma_c``: ``N / n_c`` normalised to sum 1 over the classes with labels, 0 else."""
    present = counts > 0
    ratios = torch.where(present, counts.sum() / counts.clamp(min=1), torch.zeros_like(counts))
    return ratios / ratios.sum()


def mixup(inputs: torch.Tensor, lam: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """``lam x + (1 - lam) x[partner]`` per row."""
    weight = lam.view(-1, *([1] * (inputs.dim() - 1)))
    return weight * inputs + (1 - weight) * inputs[partner]


def compensatory_distillation(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    class_weights: torch.Tensor,
    lam: torch.Tensor,
    partner: torch.Tensor,
) -> torch.Tensor:
    """``L_kd = 1/B sum_b Gamma_b 1/C sum_c p^g_c (log p^g_c - log p^l_c)``."""
    predicted = teacher_logits.argmax(dim=1)
    weights = lam * class_weights[predicted] + (1 - lam) * class_weights[predicted[partner]]
    divergence = F.kl_div(
        F.log_softmax(student_logits, dim=1), F.softmax(teacher_logits, dim=1), reduction="none"
    )
    return (weights * divergence.mean(dim=1)).mean()


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode without gradients (the global model as received)."""
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher


@dataclass(frozen=True)
class KcfuObjective:
    """The helper's per-batch loss with ``training.kcfu = true``: ``L_bal`` plus, with a
    ``teacher``, ``L_kd``; ``rng`` draws the mixing weights and the pairing."""

    counts: torch.Tensor
    teacher: nn.Module | None
    mix_alpha: float
    rng: np.random.Generator

    def __call__(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        counts = self.counts.to(inputs.device)
        loss = balanced_softmax_loss(model(inputs), targets, counts)
        if self.teacher is None:
            return loss
        lam = torch.from_numpy(self.rng.beta(self.mix_alpha, self.mix_alpha, size=len(inputs)))
        lam = lam.to(device=inputs.device, dtype=inputs.dtype)
        partner = torch.from_numpy(self.rng.permutation(len(inputs))).to(inputs.device)
        mixed = mixup(inputs, lam, partner)
        with torch.no_grad():
            teacher_logits = self.teacher(mixed)
        weights = compensatory_class_weights(counts)
        return loss + compensatory_distillation(model(mixed), teacher_logits, weights, lam, partner)
