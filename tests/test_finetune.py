"""Fine-tuning on confident pseudo-labels (LHD Algorithm 2) as a helper-training option."""

from __future__ import annotations

import numpy as np
import torch
from strategy_context import make_context

from fedal.config import TrainingSection
from fedal.ema import EmaModel
from fedal.finetune import (
    confident_pseudo_labels,
    cutout_mask,
    finetune_on_confident,
    strong_augment,
)
from fedal.training import train_supervised


def test_strong_augment_keeps_shape_and_is_seeded() -> None:
    batch = torch.rand(4, 1, 8, 8)
    first = strong_augment(batch, torch.Generator().manual_seed(1))
    again = strong_augment(batch, torch.Generator().manual_seed(1))
    assert first.shape == batch.shape and torch.equal(first, again)
    assert not torch.equal(first, batch)


def test_cutout_masks_one_square_per_sample_at_its_corner() -> None:
    corners = torch.tensor([[0, 0], [5, 2], [3, 6]])
    mask = cutout_mask(corners, side=2, size=torch.Size([8, 8]))
    assert mask.shape == (3, 1, 8, 8)
    for sample, (top, left) in enumerate(corners.tolist()):
        expected = torch.zeros(8, 8, dtype=torch.bool)
        expected[top : top + 2, left : left + 2] = True
        assert torch.equal(mask[sample, 0], expected)


def test_only_confident_candidates_are_pseudo_labelled_by_the_ema() -> None:
    ctx = make_context(labelled=40, candidates=30)
    model = ctx.model
    ema = EmaModel(model, decay=0.5)
    rows, labels = confident_pseudo_labels(model, ema.average, ctx.candidates, 0.0, 7, ctx.device)
    assert torch.equal(rows, torch.arange(len(ctx.candidates)))  # gamma 0: everything
    with torch.no_grad():
        probs = torch.softmax(model(ctx.candidates.inputs(slice(None))), dim=1)
    gamma = float(probs.max(dim=1).values.median())
    rows, labels = confident_pseudo_labels(model, ema.average, ctx.candidates, gamma, 7, ctx.device)
    assert 0 < len(rows) < len(ctx.candidates)
    assert (probs.max(dim=1).values[rows] > gamma).all()
    assert torch.equal(labels, probs.argmax(dim=1)[rows])  # EMA == model before any step


def test_finetuning_changes_the_helper_using_candidates_only() -> None:
    ctx = make_context(labelled=40, candidates=30)
    settings = TrainingSection(
        epochs=2, batch_size=8, lr=0.05, finetune=True, finetune_gamma=0.0, finetune_iterations=2
    )
    model = ctx.build_model("cnn")
    ema = EmaModel(model, settings.finetune_ema_decay)
    generator = torch.Generator().manual_seed(0)
    train_supervised(model, ctx.labelled, settings, ctx.device, generator, after_step=ema.update)
    before = [p.detach().clone() for p in model.parameters()]
    stats = finetune_on_confident(model, ema, ctx.candidates, settings, ctx.device, generator)
    assert stats.confident == len(ctx.candidates) and stats.steps == 2 * 4
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert np.array_equal(ctx.candidates.positions, np.arange(40, 70))
