"""How models compute on a device: bf16 autocast, the channels_last layout and cuDNN
autotuning on CUDA; plain float32 in the contiguous layout on the CPU, unless configured.

:func:`compute_context` wraps a client round and the central evaluation with two
switches of :class:`fedal.config.TrainingSection`, each ``"cuda"`` (the default: on CUDA
only), ``"always"`` or ``"off"``:

- ``bf16``: convolutions and matrix products run in bfloat16 while weights, optimiser
  state and losses stay float32 (:func:`torch.autocast`);
- ``channels_last``: image batches (:func:`memory_format`, read by
  :mod:`fedal.views`) and the convolution weights of the models placed with
  :func:`place` use the channels_last layout, which tensor cores prefer and oneDNN's
  CPU kernels run faster too (single-channel images take the layout only through the
  weights: such a batch is laid out alike either way).

``"always"`` turns a switch on for the CPU too (how the test suite runs the CUDA path;
for ``channels_last`` also a faster CPU run, README "Many clients on one box"). On CUDA
the context also turns on cuDNN's autotuner (``torch.backends.cudnn.benchmark``).
Nothing here changes a CPU run under the defaults; a switch turned on for the CPU changes
float rounding, not reproducibility: CPU runs stay bit-reproducible from their seed. What
CUDA does not reproduce bit for bit is listed in the README ("Determinism").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol, TypeVar

import torch
from torch import nn

from fedal.choices import ComputeSwitch

Module = TypeVar("Module", bound=nn.Module)

_channels_last: ContextVar[ComputeSwitch] = ContextVar("channels_last", default="cuda")


def switched_on(device: torch.device, switch: ComputeSwitch) -> bool:
    """Whether a compute switch set to ``switch`` applies on ``device``."""
    return switch == "always" or (switch == "cuda" and device.type == "cuda")


class ComputeSwitches(Protocol):
    """The two switches: :class:`fedal.config.TrainingSection` (``config.training``), or
    the settings of ``fedal bench sampling``."""

    @property
    def bf16(self) -> ComputeSwitch: ...

    @property
    def channels_last(self) -> ComputeSwitch: ...


@contextmanager
def compute_context(device: torch.device, switches: ComputeSwitches) -> Iterator[None]:
    """Run the enclosed model compute on ``device`` as ``switches`` say (module
    docstring)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    token = _channels_last.set(switches.channels_last)
    try:
        enabled = switched_on(device, switches.bf16)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled):
            yield
    finally:
        _channels_last.reset(token)


def memory_format(device: torch.device) -> torch.memory_format:
    """The layout of image batches and convolution weights on ``device`` under the
    enclosing :func:`compute_context` (outside one: channels_last on CUDA only)."""
    on = switched_on(device, _channels_last.get())
    return torch.channels_last if on else torch.contiguous_format


def place(model: Module, device: torch.device) -> Module:
    """``model`` on ``device``, its 4-D weights in :func:`memory_format` (in place)."""
    return model.to(device).to(memory_format=memory_format(device))


# Dense bf16 tensor-core peaks (TFLOP/s, vendor data sheets) by device-name fragment,
# most specific first: the reference of ``fedal bench sampling``'s peak fraction.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H200", 989.4),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
)


def bf16_peak_tflops(device: torch.device) -> float | None:
    """The device's dense bf16 peak, when it is a CUDA device listed above."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for fragment, peak in BF16_PEAK_TFLOPS if fragment in name), None)


def synchronise(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
