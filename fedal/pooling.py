"""Max pooling that runs torch's faster channels_last CPU kernel on contiguous batches.

Torch's CPU max-pool kernel for the contiguous (NCHW) layout is several times slower than
its channels_last kernel on the small images here: measured on one thread, the forward
pass over a (58, 32, 28, 28) batch, the demo CNN's first pool on a PSL client's private
pool, took 6.5 ms contiguous and 1.8 ms through a channels_last copy (copies included);
the contiguous kernel was a quarter of the CNN's forward and backward pass on that batch.
:class:`MaxPool2d` therefore pools a contiguous CPU batch through a channels_last copy and
hands back a contiguous result, so the layers after it compute in the layout they would
have had.

Nothing changes numerically: both kernels take the first maximum of each window in the
same scan order (ties included, common on Fashion-MNIST's flat background), so values
and argmax indices are identical, and the backward pass is torch's own contiguous kernel
scattering the gradient to those indices. CUDA tensors and batches already in
channels_last (``training.channels_last``, :mod:`fedal.compute`) take torch's pooling
unchanged. ``tests/test_models.py`` compares values and gradients with torch's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _ChannelsLastMaxPool(torch.autograd.Function):
    """Forward through the channels_last kernel, backward through the contiguous one."""

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor, kernel: int) -> torch.Tensor:
        values, indices = torch.ops.aten.max_pool2d_with_indices(
            inputs.contiguous(memory_format=torch.channels_last), [kernel, kernel], [kernel, kernel]
        )
        ctx.save_for_backward(inputs, indices.contiguous())
        ctx.kernel = kernel
        return values.contiguous()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        inputs, indices = ctx.saved_tensors
        size = [ctx.kernel, ctx.kernel]
        grad_inputs = torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(), inputs, size, size, [0, 0], [1, 1], False, indices
        )
        return grad_inputs, None


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d(kernel)`` (stride = kernel, no padding) with the CPU fast path of
    the module docstring; same outputs and gradients as torch's."""

    def __init__(self, kernel: int) -> None:
        super().__init__(kernel)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Pool ``inputs`` of shape ``(N, C, H, W)``."""
        if inputs.device.type != "cpu" or inputs.dim() != 4 or not inputs.is_contiguous():
            return super().forward(inputs)
        if torch.is_grad_enabled() and inputs.requires_grad:
            pooled: torch.Tensor = _ChannelsLastMaxPool.apply(inputs, self.kernel_size)
            return pooled
        channels_last = inputs.contiguous(memory_format=torch.channels_last)
        return F.max_pool2d(channels_last, self.kernel_size).contiguous()
