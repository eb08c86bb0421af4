"""Sample views: model-ready batches, and the dataset kept resident on a device."""

from __future__ import annotations

import numpy as np
import torch

from fedal.compute import compute_context
from fedal.config import TrainingSection
from fedal.views import InputSpec, SampleView, resident

SPEC = InputSpec(mean=(0.5,), std=(0.25,))


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 1, 6, 6), dtype=np.uint8)


def test_a_cpu_batch_is_the_normalised_rows_of_the_shared_array() -> None:
    source = images(20)
    source.setflags(write=False)  # the datasets are read-only
    view = SampleView(source, np.array([7, 2, 7, 11]), SPEC)
    batch = view.inputs(np.array([0, 2, 3]))
    expected = (torch.from_numpy(source[[7, 7, 11]].astype(np.float32)) / 255 - 0.5) / 0.25
    assert torch.allclose(batch, expected) and batch.dtype == torch.float32
    assert torch.equal(batch, SPEC.to_tensor(source[[7, 7, 11]]))


def test_off_the_cpu_each_array_is_copied_once_and_the_newest_few_are_kept() -> None:
    device = torch.device("meta")  # stands in for a CUDA device: shapes, no data
    arrays = [images(10, seed) for seed in range(5)]
    first = resident(arrays[0], device)
    assert first.device == device and first.shape == arrays[0].shape
    assert resident(arrays[0], device) is first  # no second copy
    batch = SampleView(arrays[0], np.arange(10), SPEC).inputs(slice(2, 5), device)
    assert batch.shape == (3, 1, 6, 6) and batch.dtype == torch.float32
    for array in arrays[1:]:
        resident(array, device)
    assert resident(arrays[4], device) is resident(arrays[4], device)
    assert resident(arrays[0], device) is not first  # the oldest was dropped, copied again


def test_batches_take_the_layout_of_the_compute_context() -> None:
    """Colour batches are channels_last under ``channels_last = "always"`` on the CPU,
    contiguous under the default and again once the context is left."""
    source = np.random.default_rng(1).integers(0, 256, (8, 3, 5, 5), dtype=np.uint8)
    view = SampleView(source, np.arange(8), InputSpec((0.5,) * 3, (0.25,) * 3))
    cpu = torch.device("cpu")
    with compute_context(cpu, TrainingSection(bf16="off", channels_last="always")):
        inside = view.inputs(slice(0, 4))
    with compute_context(cpu, TrainingSection(bf16="off")):
        default = view.inputs(slice(0, 4))
    after = view.inputs(slice(0, 4))
    assert inside.is_contiguous(memory_format=torch.channels_last) and not inside.is_contiguous()
    assert default.is_contiguous() and after.is_contiguous()
    assert torch.equal(inside, default)
