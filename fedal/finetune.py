"""Fine-tuning on confident pseudo-labels (LHD paper, section 4.3, Algorithm 2).

A helper-training option usable with every query strategy: during supervised training
an exponential moving average (EMA) of the helper is kept (beta <- a*beta + (1-a)*theta,
:class:`fedal.ema.EmaModel`, the EMA LHD keeps too; its module docstring gives the
BatchNorm policy); afterwards every candidate (non-protected, unlabelled: never a
protected sample) whose confidence c_x = max softmax(F_theta(x)) exceeds gamma gets the
EMA's one-hot prediction as pseudo-label, and the helper is trained for T passes on
strongly augmented versions of those examples (Algorithm 2, lines 3-12), the EMA
following along.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedal.config import TrainingSection
from fedal.ema import EmaModel
from fedal.training import crop_flip, epoch_batches, make_optimizer
from fedal.views import SampleView


def strong_augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A(x): random crop + flip, per-sample brightness/contrast jitter, and a cutout square.

    Feature vectors (2-D toys) get Gaussian jitter instead.
    """
    if batch.dim() != 4:
        noise = torch.randn(batch.shape, generator=generator).to(batch.device)
        return batch + 0.1 * noise
    out = crop_flip(batch, generator, padding=max(1, batch.shape[-1] // 8))
    count = out.shape[0]
    scale = 1.0 + (torch.rand(count, 1, 1, 1, generator=generator) - 0.5) * 0.8
    shift = (torch.rand(count, 1, 1, 1, generator=generator) - 0.5) * 0.8
    out = out * scale.to(out.device) + shift.to(out.device)
    side = max(1, out.shape[-1] // 4)
    corners = torch.randint(0, out.shape[-1] - side + 1, (count, 2), generator=generator)
    return out.masked_fill_(cutout_mask(corners, side, out.shape[-2:]).to(out.device), 0.0)


def cutout_mask(corners: torch.Tensor, side: int, size: torch.Size) -> torch.Tensor:
    """``(N, 1, H, W)``: True in each sample's ``side`` x ``side`` square from its
    ``(top, left)`` corner (one mask for the batch instead of a fill per sample)."""
    rows, columns = torch.arange(size[0]), torch.arange(size[1])
    top, left = corners[:, :1], corners[:, 1:]
    in_rows = (rows >= top) & (rows < top + side)
    in_columns = (columns >= left) & (columns < left + side)
    return (in_rows[:, :, None] & in_columns[:, None, :]).unsqueeze(1)


@dataclass(frozen=True)
class FinetuneStats:
    """How many candidates passed the confidence threshold, and the time taken."""

    confident: int
    steps: int
    seconds: float


@torch.no_grad()
def confident_pseudo_labels(
    model: nn.Module,
    ema: nn.Module,
    candidates: SampleView,
    gamma: float,
    batch_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with c_x = max F_theta(x) > gamma and their EMA pseudo-labels (lines 3-9)."""
    model.eval()
    rows, labels = [], []
    for start in range(0, len(candidates), batch_size):
        inputs = candidates.inputs(slice(start, start + batch_size), device)
        confidence = torch.softmax(model(inputs), dim=1).max(dim=1).values
        keep = (confidence > gamma).nonzero().flatten()
        rows.append(keep.cpu() + start)
        labels.append(ema(inputs[keep]).argmax(dim=1).cpu())
    if not rows:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.cat(rows), torch.cat(labels)


def finetune_on_confident(
    model: nn.Module,
    ema: EmaModel,
    candidates: SampleView,
    settings: TrainingSection,
    device: torch.device,
    generator: torch.Generator,
) -> FinetuneStats:
    """Algorithm 2, lines 10-12: T passes of CE on A(x) for the confident candidates.

    ``model`` is the helper F_theta, ``ema.main`` (its EMA F_beta gives the pseudo-labels
    and follows every step).
    """
    started = time.perf_counter()
    rows, pseudo = confident_pseudo_labels(
        model, ema.average, candidates, settings.finetune_gamma, settings.eval_batch_size, device
    )
    if len(rows) == 0 or settings.finetune_iterations == 0:
        return FinetuneStats(confident=len(rows), steps=0, seconds=time.perf_counter() - started)
    confident = candidates.subset(rows.numpy())
    model.train()
    optimizer = make_optimizer(model, settings)
    steps = 0
    for _ in range(settings.finetune_iterations):
        for batch in epoch_batches(len(confident), settings.batch_size, generator):
            inputs = strong_augment(confident.inputs(batch, device), generator)
            loss = F.cross_entropy(model(inputs), pseudo[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ema.update()
            steps += 1
    model.eval()
    return FinetuneStats(confident=len(rows), steps=steps, seconds=time.perf_counter() - started)
