"""Supervised training and evaluation of a classifier on a labelled sample view.

Equation 1 of the PSL paper (the task learner's cross-entropy objective) on CPU or CUDA,
with the standard crop (pad 4) + horizontal-flip augmentation for 32x32 colour images.
The per-batch loss is an :data:`Objective`; :func:`helper_objective` picks the helper's
from the training options: cross entropy, FEAL's evidential loss
(:mod:`fedal.evidential`) or KAFAL's KCFU (:mod:`fedal.kcfu`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedal.choices import Optimizer, Schedule
from fedal.compute import place
from fedal.config import TrainingSection
from fedal.evidential import EvidentialObjective, annealing_coefficient, class_prior
from fedal.kcfu import KcfuObjective, label_counts
from fedal.views import SampleView

OPTIMIZERS = get_args(Optimizer)
SCHEDULES = get_args(Schedule)


Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""A per-batch training loss of (model, inputs, targets)."""


def cross_entropy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """PSL eq. 1: mean cross entropy of the model's logits (the default objective)."""
    return F.cross_entropy(model(inputs), targets)


def helper_objective(
    settings: TrainingSection,
    labels: np.ndarray,
    num_classes: int,
    server_round: int,
    global_model: nn.Module | None,
    generator: torch.Generator,
) -> Objective:
    """The helper's loss in ``server_round`` from ``settings``, built from the client's
    held ``labels`` only: KCFU (``kcfu``; distilling from the frozen ``global_model``
    from round 2 on), FEAL's evidential loss (``loss = "evidential"``) or cross entropy.
    Only KCFU draws from ``generator`` (once, to seed its mixing)."""
    if settings.kcfu:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return KcfuObjective(
            counts=label_counts(labels, num_classes),
            teacher=global_model if server_round > 1 else None,
            mix_alpha=settings.kcfu_mix_alpha,
            rng=np.random.default_rng(seed),
        )
    if settings.loss == "evidential":
        return EvidentialObjective(
            prior=class_prior(labels, num_classes),
            annealing=annealing_coefficient(server_round, settings.evidential_annealing_rounds),
            kl_weight=settings.evidential_kl_weight,
        )
    return cross_entropy


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class TrainStats:
    """What one call of :func:`train_supervised` did (``samples``: rows its steps saw)."""

    loss: float
    steps: int
    seconds: float
    samples: int = 0


@dataclass(frozen=True)
class EvalStats:
    """Accuracy and mean cross-entropy over a labelled view."""

    accuracy: float
    loss: float
    count: int


@dataclass(frozen=True)
class EvalSums:
    """What an evaluation adds up over a labelled view: right predictions, the summed
    cross-entropy (float64) and the samples. The sums of disjoint parts of a view add up
    to the whole view's: the same right predictions and samples, the loss to float64
    rounding."""

    correct: int
    loss_sum: float
    count: int

    def __add__(self, other: EvalSums) -> EvalSums:
        return EvalSums(
            self.correct + other.correct, self.loss_sum + other.loss_sum, self.count + other.count
        )

    def stats(self) -> EvalStats:
        """Accuracy and mean loss (both NaN for an empty view)."""
        if self.count == 0:
            return EvalStats(accuracy=float("nan"), loss=float("nan"), count=0)
        return EvalStats(self.correct / self.count, self.loss_sum / self.count, self.count)


def wants_augmentation(batch: torch.Tensor) -> bool:
    """Crop/flip augmentation applies to colour images of 32x32 pixels."""
    return batch.dim() == 4 and batch.shape[1] == 3 and tuple(batch.shape[2:]) == (32, 32)


def crop_flip(batch: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop after zero padding plus random horizontal flip, per sample.

    One gather for the whole batch (row and column indices per sample, the columns
    reversed where the sample flips), in ``batch``'s memory layout: on a GPU a copy per
    sample would launch a kernel per image of every training step."""
    count, _, height, width = batch.shape
    padded = F.pad(batch, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (count, 2), generator=generator)
    flips = torch.rand(count, generator=generator) < 0.5
    columns_in_order = torch.where(
        flips.unsqueeze(1), torch.arange(width - 1, -1, -1), torch.arange(width)
    )
    rows = (offsets[:, :1] + torch.arange(height)).to(batch.device)
    columns = (offsets[:, 1:] + columns_in_order).to(batch.device)
    samples = torch.arange(count, device=batch.device)[:, None, None]
    crops = padded[samples, :, rows[:, :, None], columns[:, None, :]]  # (N, H, W, C)
    return torch.empty_like(batch).copy_(crops.permute(0, 3, 1, 2))


def make_optimizer(model: nn.Module, settings: TrainingSection) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or Adam over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(
        params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )


def make_schedule(
    optimizer: torch.optim.Optimizer, settings: TrainingSection, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate schedule: constant or cosine annealing to zero."""
    if settings.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def epoch_batches(size: int, batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
    """Shuffled row batches covering ``size`` rows once (the last may be smaller)."""
    order = torch.randperm(size, generator=generator).numpy()
    return [order[start : start + batch_size] for start in range(0, size, batch_size)]


def train_supervised(
    model: nn.Module,
    view: SampleView,
    settings: TrainingSection,
    device: torch.device,
    generator: torch.Generator,
    proximal_mu: float = 0.0,
    after_step: Callable[[], None] | None = None,
    gradient_correction: Sequence[torch.Tensor] | None = None,
    objective: Objective = cross_entropy,
) -> TrainStats:
    """Minimise ``objective`` (default: cross entropy, PSL eq. 1) on the labelled
    ``view`` for ``settings.epochs``.

    With ``proximal_mu > 0`` the FedProx proximal term mu/2 * ||w - w_start||^2 is added
    (Li et al. 2020, eq. 2), anchoring the weights to those the round started from.
    ``after_step`` runs after every optimiser step (e.g. an EMA update).

    ``gradient_correction``: one tensor per trainable parameter (in ``model.parameters()``
    order), added to that parameter's gradient after every backward pass and before the
    optimiser step: SCAFFOLD's local update y <- y - eta_l (g_i(y) + c - c_i)
    (Karimireddy et al. 2020, Algorithm 1, line 10) with the correction c - c_i. Without
    it (``None``) the gradients are left untouched.
    """
    started = time.perf_counter()
    if len(view) == 0 or settings.epochs == 0:
        return TrainStats(loss=float("nan"), steps=0, seconds=0.0)
    place(model, device).train()
    optimizer = make_optimizer(model, settings)
    steps_per_epoch = -(-len(view) // settings.batch_size)
    schedule = make_schedule(optimizer, settings, steps_per_epoch * settings.epochs)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    corrected: list[tuple[nn.Parameter, torch.Tensor]] = []
    if gradient_correction is not None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        for p, c in zip(trainable, gradient_correction, strict=True):
            if tuple(c.shape) != tuple(p.shape):
                raise ValueError(
                    f"gradient correction of shape {tuple(c.shape)} for a "
                    f"parameter of shape {tuple(p.shape)}"
                )
        corrected = [
            (p, c.to(device=p.device, dtype=p.dtype))
            for p, c in zip(trainable, gradient_correction, strict=True)
        ]
    # summed on the device in float64 (as Python floats would), read once at the end
    total_loss, steps = torch.zeros((), dtype=torch.float64, device=device), 0
    for _ in range(settings.epochs):
        for rows in epoch_batches(len(view), settings.batch_size, generator):
            inputs = view.inputs(rows, device)
            if settings.augment and wants_augmentation(inputs):
                inputs = crop_flip(inputs, generator)
            loss = objective(model, inputs, view.targets(rows, device))
            if anchor:
                loss = loss + proximal_mu / 2 * sum(
                    (p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for parameter, correction in corrected:
                if parameter.grad is None:
                    parameter.grad = correction.clone()
                else:
                    parameter.grad.add_(correction)
            optimizer.step()
            schedule.step()
            if after_step is not None:
                after_step()
            total_loss += loss.detach().double()
            steps += 1
    model.eval()
    return TrainStats(
        loss=float(total_loss) / steps,
        steps=steps,
        seconds=time.perf_counter() - started,
        samples=len(view) * settings.epochs,
    )


def evaluate(
    model: nn.Module, view: SampleView, device: torch.device, batch_size: int
) -> EvalStats:
    """Accuracy and mean cross-entropy of ``model`` on a labelled view."""
    return evaluation_sums(model, view, device, batch_size).stats()


@torch.no_grad()
def evaluation_sums(
    model: nn.Module, view: SampleView, device: torch.device, batch_size: int
) -> EvalSums:
    """Right predictions, summed cross-entropy and samples of ``model`` on a labelled
    view, ``batch_size`` rows at a time."""
    place(model, device).eval()
    # summed on the device (the loss in float64, as Python floats would), read once
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, len(view), batch_size):
        rows = slice(start, start + batch_size)
        logits = model(view.inputs(rows, device))
        targets = view.targets(rows, device)
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").double()
        correct += (logits.argmax(dim=1) == targets).sum()
    return EvalSums(int(correct), float(loss_sum), len(view))
