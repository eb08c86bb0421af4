"""PAL's scoring network and its scores (PAL paper, sections 3.1-3.3) on plain tensors.

Rotation logits are laid out ``(N, 4, 4)``: sample, applied rotation ``i`` (the input
is ``rot_{90i}(x)``), predicted rotation class.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from fedal.models import Classifier
from strategies.private_training import step

ROTATIONS = 4
Variant = Literal["self_supervision", "plus_classification", "full"]
"""The ablations of section 4.5, see :func:`variant_weights`."""


def rotate_all(inputs: torch.Tensor) -> torch.Tensor:
    """The four rotations of a ``(B, C, H, W)`` batch stacked as ``(4B, C, H, W)``.

    Block ``i`` holds ``rot_{90i}(x)`` (``torch.rot90`` by ``i`` quarter turns).
    """
    if inputs.dim() != 4 or inputs.shape[2] != inputs.shape[3]:
        raise ValueError(
            f"pal rotates square images (N, C, H, W); got inputs of shape {tuple(inputs.shape)}"
        )
    return torch.cat([torch.rot90(inputs, i, dims=(2, 3)) for i in range(ROTATIONS)])


def rotation_targets(count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Rotation labels aligned with :func:`rotate_all`: ``count`` zeros, ones, twos, threes."""
    return torch.arange(ROTATIONS, device=device).repeat_interleave(count)


class PretextScorer(nn.Module):
    """The scoring network: a shared trunk, classification head h_psi, rotation head g_phi.

    ``classifier`` is a fresh :class:`fedal.models.Classifier` (its ``head`` is h_psi);
    the rotation head is a linear layer on the same embedding.
    """

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.rotation_head = nn.Linear(classifier.embedding_dim, ROTATIONS)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Embeddings of the four rotations of every input, shape ``(B, 4, D)``.

        Both heads read these: ``rotation_head`` on all four, ``classifier.head`` on the
        unrotated ``[:, 0]``.
        """
        hidden = self.classifier.embed(rotate_all(inputs))
        return hidden.view(ROTATIONS, len(inputs), -1).transpose(0, 1)


def multitask_loss(
    network: PretextScorer, inputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Algorithm 1's scoring-network objective on one labelled batch.

    ``CE(h_psi(x), y) + CE(g_phi(rot_{90i}(x)), i)``, the rotation term averaged over the
    batch's four rotations. Algorithm 1 takes one SGD step per term with the same rate;
    here both terms are summed into one step.
    """
    hidden = network.classifier.embed(rotate_all(inputs))
    rotation = F.cross_entropy(
        network.rotation_head(hidden), rotation_targets(len(inputs), hidden.device)
    )
    classification = F.cross_entropy(network.classifier.head(hidden[: len(inputs)]), targets)
    return classification + rotation


def rotation_score(rotation_logits: torch.Tensor) -> torch.Tensor:
    """Equation 1: ``S_S(x) = -sum_i g(rot_{90i}(x))_i``, from ``(N, 4, 4)`` logits.

    The probability the rotation head gives the *applied* rotation, summed over the four
    rotations and negated: -4 for a perfectly recognised (familiar) image, near 0 for a
    novel one. With the fine-tuned head g_phi' it is ``S_D`` (section 3.3).
    """
    probs = torch.softmax(rotation_logits, dim=-1)
    return -probs.diagonal(dim1=1, dim2=2).sum(dim=-1)


def classification_score(class_logits: torch.Tensor) -> torch.Tensor:
    """Equation 3: ``S_C(x) = -KL(U || h(x)) = log C + (1/C) sum_c log h(x)_c``.

    ``U`` is the uniform distribution over the C classes; 0 for a uniform prediction and
    unbounded below as the prediction grows confident (log-softmax keeps it finite).
    """
    classes = class_logits.shape[-1]
    return math.log(classes) + F.log_softmax(class_logits, dim=-1).mean(dim=-1)


def hybrid_score(
    self_supervision: torch.Tensor,
    classification: torch.Tensor,
    lambda1: float,
    diversity: torch.Tensor | None = None,
    lambda2: float = 0.0,
) -> torch.Tensor:
    """Equation 3 ``S_S + lambda1 S_C``, or equation 4 ``+ lambda2 S_D`` with ``diversity``."""
    score = self_supervision + lambda1 * classification
    if diversity is None:
        return score
    return score + lambda2 * diversity


def variant_weights(variant: Variant, lambda1: float, lambda2: float) -> tuple[float, float]:
    """``(lambda1, lambda2)`` of a section 4.5 ablation.

    ``self_supervision``: ``lambda1 = lambda2 = 0``; ``plus_classification``:
    ``lambda2 = 0``; ``full``: both as given.
    """
    if variant not in get_args(Variant):
        allowed = ", ".join(get_args(Variant))
        raise ValueError(f"unknown PAL variant {variant!r}; allowed: {allowed}")
    return (
        0.0 if variant == "self_supervision" else lambda1,
        lambda2 if variant == "full" else 0.0,
    )


def finetune_rotation_head(
    head: nn.Module, optimizer: torch.optim.Optimizer, embeddings: torch.Tensor, steps: int
) -> None:
    """Section 3.3 / Algorithm 1's inner loop: fine-tune g_phi' in place on chosen samples.

    ``embeddings`` ``(n, 4, D)`` are the trunk's (fixed) embeddings of the four rotations
    of the samples chosen so far; each of the ``steps`` epochs is one full-batch step of
    rotation cross-entropy. No class label is used.
    """
    targets = torch.arange(ROTATIONS).repeat(len(embeddings))
    for _ in range(steps):
        logits = head(embeddings).reshape(-1, ROTATIONS)
        step(optimizer, head, F.cross_entropy(logits, targets.to(logits.device)))
