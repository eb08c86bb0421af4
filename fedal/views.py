"""Index views over a shared, loaded dataset.

Clients and query strategies never copy the dataset: they hold index arrays into the
process-wide arrays of :mod:`fedal.datasets` and turn a view into model-ready tensors
one batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class InputSpec:
    """How raw arrays become model inputs: per-channel normalisation of uint8 images.

    Float arrays (the 2-D toys) are passed through unchanged.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_tensor(self, raw: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """Convert a raw batch (uint8 NCHW images or float features) to a float tensor."""
        batch = torch.as_tensor(np.ascontiguousarray(raw), device=device)
        if batch.dtype != torch.uint8:
            return batch.float()
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        return (batch.float().div_(255.0) - mean) / std


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
        chosen = self.positions[rows]
        return self.spec.to_tensor(self.source[chosen], device)

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
