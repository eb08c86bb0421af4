"""Index views over a shared, loaded dataset.

Clients and query strategies never copy the dataset: they hold index arrays into the
process-wide arrays of :mod:`fedal.datasets` and turn a view into model-ready tensors
one batch at a time. On CUDA the raw array is copied to the device once per process
(:func:`resident`) and batches are gathered and normalised there, in the layout of
:func:`fedal.compute.memory_format` (channels_last on CUDA, and on the CPU under
``training.channels_last = "always"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fedal.compute import memory_format

_RESIDENT_ARRAYS = 4  # raw arrays kept on a device per process (train, test, noisy sets)
_resident: dict[tuple[int, str], tuple[np.ndarray, torch.Tensor]] = {}


def resident(source: np.ndarray, device: torch.device) -> torch.Tensor:
    """``source`` as a tensor on ``device``: on the CPU the same memory, elsewhere a copy
    made once per process and array (the newest few arrays are kept)."""
    if device.type == "cpu":
        with warnings.catch_warnings():  # the datasets are read-only; batches are copies
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(source)
    key = (id(source), str(device))
    held = _resident.get(key)
    if held is None or held[0] is not source:
        while len(_resident) >= _RESIDENT_ARRAYS:
            _resident.pop(next(iter(_resident)))
        held = (source, torch.as_tensor(np.ascontiguousarray(source), device=device))
        _resident[key] = held
    return held[1]


@dataclass(frozen=True)
class InputSpec:
    """How raw arrays become model inputs: per-channel normalisation of uint8 images.

    Float arrays (the 2-D toys) are passed through unchanged.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_tensor(self, raw: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """Convert a raw batch (uint8 NCHW images or float features) to a float tensor."""
        return self.normalise(torch.as_tensor(np.ascontiguousarray(raw), device=device))

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """A raw batch already on its device as model input, laid out as
        :func:`fedal.compute.memory_format` says."""
        if batch.dtype != torch.uint8:
            return batch.float()
        mean = torch.tensor(self.mean, device=batch.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, -1, 1, 1)
        normalised = (batch.float().div_(255.0) - mean) / std
        return normalised.contiguous(memory_format=memory_format(batch.device))


@dataclass(frozen=True)
class SampleView:
    """A read-only selection of samples of a shared array.

    ``positions`` index rows of ``source``; ``labels`` (when present) are aligned with
    ``positions`` and are the labels this client *holds* for them (for labelled data:
    the oracle's answers, noise included).
    """

    source: np.ndarray
    positions: np.ndarray
    spec: InputSpec
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.positions):
            raise ValueError(
                f"labels ({len(self.labels)}) and positions ({len(self.positions)}) differ"
            )

    def __len__(self) -> int:
        return len(self.positions)

    def inputs(self, rows: np.ndarray | slice, device: torch.device | str = "cpu") -> torch.Tensor:
        """Model-ready inputs for the view's ``rows`` (positions within this view)."""
        device = torch.device(device)
        chosen = torch.as_tensor(self.positions[rows], device=device)
        return self.spec.normalise(resident(self.source, device)[chosen])

    def targets(self, rows: np.ndarray | slice, device: torch.device | str = "cpu") -> torch.Tensor:
        """The held labels for ``rows`` as an int64 tensor."""
        if self.labels is None:
            raise ValueError("this view carries no labels")
        return torch.tensor(np.array(self.labels[rows]), dtype=torch.long, device=device)

    def batches(
        self, batch_size: int, device: torch.device | str = "cpu"
    ) -> Iterator[torch.Tensor]:
        """Model-ready inputs in view order, ``batch_size`` rows at a time."""
        for start in range(0, len(self), batch_size):
            yield self.inputs(slice(start, start + batch_size), device)

    def subset(self, rows: np.ndarray) -> SampleView:
        """A view of some of this view's rows (labels follow)."""
        labels = None if self.labels is None else self.labels[rows]
        return SampleView(self.source, self.positions[rows], self.spec, labels)
