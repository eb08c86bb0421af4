"""Tests for fedal.training, fedal.views and fedal.central: real training on a small
Fashion-MNIST subset, the crop/flip augmentation, schedules and the proximal term."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedal.central import train_central
from fedal.config import TrainingSection
from fedal.datasets import LoadedDataset, load_dataset
from fedal.models import build_for_dataset, build_model
from fedal.training import (
    crop_flip,
    evaluate,
    make_optimizer,
    make_schedule,
    train_supervised,
    wants_augmentation,
)
from fedal.views import InputSpec, SampleView

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def fashion() -> LoadedDataset:
    return load_dataset("fashion-mnist")


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _toy_view(count: int = 64, seed: int = 0) -> SampleView:
    """Two Gaussian blobs of 2-D float features (passed through unnormalised)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=count).astype(np.int64)
    features = (rng.normal(size=(count, 2)) + 2.0 * labels[:, None]).astype(np.float32)
    return SampleView(features, np.arange(count), InputSpec((), ()), labels)


def _colour_view(count: int = 16) -> SampleView:
    """Random 3x32x32 uint8 images (the shape that gets crop/flip augmentation)."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=count).astype(np.int64)
    return SampleView(images, np.arange(count), InputSpec((0.5,) * 3, (0.25,) * 3), labels)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", in_channels=2, num_classes=2)


def _colour_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn", in_channels=3, num_classes=10, image_size=(32, 32))


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# ----------------------------------------------------------------------------- real data


def test_training_on_fashion_mnist_beats_chance(fashion: LoadedDataset) -> None:
    rng = np.random.default_rng(0)
    train_rows = rng.choice(len(fashion.train_y), size=512, replace=False)
    test_rows = rng.choice(len(fashion.test_y), size=1000, replace=False)
    spec = fashion.input_spec
    train_view = SampleView(fashion.train_x, train_rows, spec, fashion.train_y[train_rows])
    test_view = SampleView(fashion.test_x, test_rows, spec, fashion.test_y[test_rows])
    torch.manual_seed(0)
    model = build_for_dataset("cnn", fashion)
    before = evaluate(model, test_view, CPU, batch_size=500)
    settings = TrainingSection(epochs=2, batch_size=32, lr=0.05)
    stats = train_supervised(model, train_view, settings, CPU, _generator())
    after = evaluate(model, test_view, CPU, batch_size=500)
    assert stats.steps == 2 * 16
    assert np.isfinite(stats.loss)
    assert after.count == 1000
    assert after.accuracy > 0.5  # chance is 0.1
    assert after.accuracy > before.accuracy + 0.2
    assert after.loss < before.loss
    assert not model.training  # left in eval mode


def test_train_central_sanity(fashion: LoadedDataset) -> None:
    accuracy, seconds = train_central(
        dataset_name="fashion-mnist", model_name="cnn", labels=300, epochs=2
    )
    assert accuracy > 0.5
    assert seconds > 0


# ----------------------------------------------------------------------------- views


def test_sample_view_normalises_and_subsets(fashion: LoadedDataset) -> None:
    rows = np.array([5, 0, 9])
    view = SampleView(fashion.train_x, rows, fashion.input_spec, fashion.train_y[rows])
    batch = view.inputs(slice(None))
    assert batch.shape == (3, 1, 28, 28)
    assert batch.dtype == torch.float32
    expected = (fashion.train_x[rows].astype(np.float32) / 255 - fashion.meta.mean[0]) / (
        fashion.meta.std[0]
    )
    np.testing.assert_allclose(batch.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(view.targets([2, 0]).numpy(), fashion.train_y[[9, 5]])
    part = view.subset(np.array([2]))
    np.testing.assert_array_equal(part.positions, [9])
    np.testing.assert_array_equal(part.labels, fashion.train_y[[9]])
    assert [len(b) for b in view.batches(2)] == [2, 1]
    with pytest.raises(ValueError, match="differ"):
        SampleView(fashion.train_x, rows, fashion.input_spec, fashion.train_y[:2])
    with pytest.raises(ValueError, match="no labels"):
        SampleView(fashion.train_x, rows, fashion.input_spec).targets([0])


# ----------------------------------------------------------------------------- augmentation


def test_augmentation_applies_to_colour_32x32_only() -> None:
    assert wants_augmentation(torch.zeros(2, 3, 32, 32))
    assert not wants_augmentation(torch.zeros(2, 1, 28, 28))
    assert not wants_augmentation(torch.zeros(2, 3, 28, 28))
    assert not wants_augmentation(torch.zeros(2, 2))


def test_crop_flip_keeps_shape_and_is_seeded() -> None:
    batch = torch.rand(6, 3, 32, 32, generator=_generator(9))
    first = crop_flip(batch, _generator(1))
    assert first.shape == batch.shape
    assert first.dtype == batch.dtype
    torch.testing.assert_close(first, crop_flip(batch, _generator(1)))
    assert not torch.equal(first, crop_flip(batch, _generator(2)))
    assert not torch.equal(first, batch)


def test_crop_flip_outputs_are_crops_of_the_padded_image() -> None:
    batch = torch.rand(3, 3, 32, 32, generator=_generator(4))
    out = crop_flip(batch, _generator(3))
    padded = nn.functional.pad(batch, (4, 4, 4, 4))
    for row in range(len(batch)):
        crops = [
            view
            for top in range(9)
            for left in range(9)
            for crop in [padded[row, :, top : top + 32, left : left + 32]]
            for view in (crop, crop.flip(-1))
        ]
        assert any(torch.equal(out[row], crop) for crop in crops)


def test_crop_flip_keeps_the_memory_layout_and_flips_some_samples() -> None:
    batch = torch.rand(16, 3, 8, 8, generator=_generator(5))
    channels_last = batch.contiguous(memory_format=torch.channels_last)
    out = crop_flip(channels_last, _generator(6), padding=0)  # no shift: only the flips
    assert out.is_contiguous(memory_format=torch.channels_last)
    flipped = [torch.equal(out[row], batch[row].flip(-1)) for row in range(len(batch))]
    kept = [torch.equal(out[row], batch[row]) for row in range(len(batch))]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < len(batch)


def test_augmented_training_is_seeded_and_changes_the_result() -> None:
    view = _colour_view()
    results = []
    for augment in (True, True, False):
        model = _colour_cnn()
        settings = TrainingSection(epochs=1, batch_size=8, lr=0.05, augment=augment)
        train_supervised(model, view, settings, CPU, _generator(3))
        results.append(_flat(model))
    torch.testing.assert_close(results[0], results[1])
    assert not torch.equal(results[0], results[2])


# ----------------------------------------------------------------------------- schedules


def _learning_rates(schedule: str, steps: int) -> list[float]:
    model = _mlp()
    settings = TrainingSection(lr=0.1, schedule=schedule)
    optimizer = make_optimizer(model, settings)
    scheduler = make_schedule(optimizer, settings, total_steps=steps)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_constant_schedule_keeps_the_rate() -> None:
    assert _learning_rates("constant", 10) == pytest.approx([0.1] * 11)


def test_cosine_schedule_anneals_to_zero() -> None:
    rates = _learning_rates("cosine", 10)
    assert rates[0] == pytest.approx(0.1)
    assert rates[5] == pytest.approx(0.05)
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.diff(rates) <= 0)


def test_schedules_give_different_training() -> None:
    view = _toy_view()
    weights = {}
    for schedule in ("constant", "cosine"):
        model = _mlp()
        settings = TrainingSection(epochs=3, batch_size=16, lr=0.1, schedule=schedule)
        train_supervised(model, view, settings, CPU, _generator())
        weights[schedule] = _flat(model)
    assert not torch.allclose(weights["constant"], weights["cosine"])


def test_adam_optimizer() -> None:
    model = _mlp()
    optimizer = make_optimizer(model, TrainingSection(optimizer="adam", lr=0.01))
    assert isinstance(optimizer, torch.optim.Adam)
    assert isinstance(make_optimizer(model, TrainingSection()), torch.optim.SGD)


# ----------------------------------------------------------------------------- proximal term


def test_proximal_term_keeps_weights_near_the_start() -> None:
    view = _toy_view(count=128)
    settings = TrainingSection(epochs=5, batch_size=16, lr=0.1, weight_decay=0.0)
    start = _flat(_mlp())
    distance = {}
    for mu in (0.0, 1.0):
        model = _mlp()
        train_supervised(model, view, settings, CPU, _generator(), proximal_mu=mu)
        distance[mu] = float((_flat(model) - start).norm())
    assert distance[0.0] > 0
    assert distance[1.0] < 0.8 * distance[0.0]


def test_training_is_reproducible() -> None:
    view = _toy_view()
    settings = TrainingSection(epochs=2, batch_size=8)
    models = [_mlp(), _mlp()]
    for model in models:
        train_supervised(model, view, settings, CPU, _generator(5))
    torch.testing.assert_close(_flat(models[0]), _flat(models[1]))


def test_nothing_to_train_or_evaluate() -> None:
    model = _mlp()
    before = _flat(model).clone()
    empty = _toy_view().subset(np.array([], dtype=np.int64))
    stats = train_supervised(model, empty, TrainingSection(), CPU, _generator())
    assert stats.steps == 0 and np.isnan(stats.loss)
    no_epochs = train_supervised(model, _toy_view(), TrainingSection(epochs=0), CPU, _generator())
    assert no_epochs.steps == 0
    torch.testing.assert_close(_flat(model), before)
    result = evaluate(model, empty, CPU, batch_size=8)
    assert result.count == 0 and np.isnan(result.accuracy)
