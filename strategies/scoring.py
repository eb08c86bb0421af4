"""Batched inference over a sample view: logits, probabilities and embeddings."""

from __future__ import annotations

import torch
from torch import nn

from fedal.views import SampleView


@torch.no_grad()
def predict_logits(
    model: nn.Module, view: SampleView, device: torch.device, batch_size: int
) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) for every row of ``view``, on the CPU."""
    was_training = model.training
    model.eval()
    outputs = [model(batch).float().cpu() for batch in view.batches(batch_size, device)]
    model.train(was_training)
    if not outputs:
        return torch.empty(0, 0)
    return torch.cat(outputs)


def predict_probs(
    model: nn.Module, view: SampleView, device: torch.device, batch_size: int
) -> torch.Tensor:
    """Softmax class probabilities for every row of ``view``."""
    return torch.softmax(predict_logits(model, view, device, batch_size), dim=1)


@torch.no_grad()
def predict_embeddings(
    model: nn.Module, view: SampleView, device: torch.device, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate embeddings and logits for every row of ``view``, on the CPU."""
    was_training = model.training
    model.eval()
    embeddings, logits = [], []
    for batch in view.batches(batch_size, device):
        hidden = model.embed(batch)
        embeddings.append(hidden.float().cpu())
        logits.append(model.head(hidden).float().cpu())
    model.train(was_training)
    if not embeddings:
        return torch.empty(0, 0), torch.empty(0, 0)
    return torch.cat(embeddings), torch.cat(logits)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy -sum_c p_c log p_c per row, with 0 log 0 = 0."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=1)
