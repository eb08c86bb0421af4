"""How models compute on a device: bf16 autocast, channels_last inputs and cuDNN
autotuning on CUDA; plain float32 on the CPU.

:func:`compute_context` wraps a client round and the central evaluation: under
``training.bf16 = "cuda"`` (the default) convolutions and matrix products run in bfloat16
on CUDA while weights, optimiser state and losses stay float32
(:func:`torch.autocast`); ``"always"`` does the same on the CPU (how the test suite runs
the CUDA path), ``"off"`` keeps float32 everywhere. On CUDA it also turns on cuDNN's
autotuner (``torch.backends.cudnn.benchmark``), and :func:`input_memory_format` gives
image batches the channels_last layout that tensor cores prefer. Nothing here changes a
CPU run under the default: CPU runs stay bit-reproducible from their seed; what CUDA does
not reproduce bit for bit is listed in the README ("Determinism").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from fedal.choices import Bf16Autocast


def autocasts(device: torch.device, bf16: Bf16Autocast) -> bool:
    """Whether compute on ``device`` runs under bf16 autocast with setting ``bf16``."""
    return bf16 == "always" or (bf16 == "cuda" and device.type == "cuda")


@contextmanager
def compute_context(device: torch.device, bf16: Bf16Autocast) -> Iterator[None]:
    """Run the enclosed model compute on ``device`` as configured (module docstring)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    enabled = autocasts(device, bf16)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled):
        yield


def input_memory_format(device: torch.device) -> torch.memory_format:
    """The layout of image batches on ``device``: channels_last on CUDA."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


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
