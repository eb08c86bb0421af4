"""Batched inference over a sample view: logits, probabilities and embeddings.

Every network pass over a view runs inside :func:`inference_pass`, so an
:func:`inference_clock` (used by ``fedal bench sampling``) can tell the time a strategy
spends in forward passes from the selection work it does with their outputs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

from fedal.models import Classifier
from fedal.views import SampleView


@dataclass
class InferenceClock:
    """Wall seconds, network passes over sample views and the images they scored, while
    it is active."""

    seconds: float = 0.0
    passes: int = 0
    images: int = 0
    running: bool = False


_ACTIVE_CLOCK: ContextVar[InferenceClock | None] = ContextVar("inference_clock", default=None)


@contextmanager
def inference_clock() -> Iterator[InferenceClock]:
    """Count every :func:`inference_pass` that runs inside the ``with`` block."""
    clock = InferenceClock()
    token = _ACTIVE_CLOCK.set(clock)
    try:
        yield clock
    finally:
        _ACTIVE_CLOCK.reset(token)


@contextmanager
def inference_pass(images: int = 0) -> Iterator[None]:
    """Mark one network pass over a view of ``images`` samples; outputs must be on the
    CPU when it ends (a device-to-host copy synchronises CUDA; the batches' outputs stay
    on the device until one copy at the end, so the device is never idle waiting for the
    host between batches). A pass nested in another counts once."""
    clock = _ACTIVE_CLOCK.get()
    if clock is None or clock.running:
        yield
        return
    clock.running = True
    started = time.perf_counter()
    try:
        yield
    finally:
        clock.seconds += time.perf_counter() - started
        clock.passes += 1
        clock.images += images
        clock.running = False


@torch.no_grad()
def predict_logits(
    model: nn.Module, view: SampleView, device: torch.device, batch_size: int
) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) for every row of ``view``, on the CPU."""
    was_training = model.training
    model.eval()
    with inference_pass(len(view)):
        outputs = [model(batch).float() for batch in view.batches(batch_size, device)]
        logits = torch.cat(outputs).cpu() if outputs else torch.empty(0, 0)
    model.train(was_training)
    return logits


def predict_probs(
    model: nn.Module, view: SampleView, device: torch.device, batch_size: int
) -> torch.Tensor:
    """Softmax class probabilities for every row of ``view``."""
    return torch.softmax(predict_logits(model, view, device, batch_size), dim=1)


@torch.no_grad()
def predict_embeddings(
    model: Classifier, view: SampleView, device: torch.device, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate embeddings and logits for every row of ``view``, on the CPU."""
    was_training = model.training
    model.eval()
    embeddings, logits = [], []
    with inference_pass(len(view)):
        for batch in view.batches(batch_size, device):
            hidden = model.embed(batch)
            embeddings.append(hidden.float())
            logits.append(model.head(hidden).float())
        outputs = (
            (torch.cat(embeddings).cpu(), torch.cat(logits).cpu())
            if embeddings
            else (torch.empty(0, 0), torch.empty(0, 0))
        )
    model.train(was_training)
    return outputs


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy -sum_c p_c log p_c per row, with 0 log 0 = 0."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=1)
