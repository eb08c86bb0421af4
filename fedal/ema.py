"""The exponential moving average (EMA) of a network, used wherever fedal keeps one.

LHD paper, Algorithm 1 (lines 2 and 14; :mod:`strategies.lhd`) and Algorithm 2 (the
helper's confident-pseudo-label fine-tuning; :mod:`fedal.finetune`) keep the average
``F_beta`` of a trained network ``F_theta`` with, after every optimiser step::

    beta <- alpha * beta + (1 - alpha) * theta          (alpha: the decay)

starting from ``beta = theta``. :class:`EmaModel` holds both networks; the average is a
``torch.optim.swa_utils.AveragedModel`` with the EMA rule of
``torch.optim.swa_utils.get_ema_multi_avg_fn``.

BatchNorm policy (one for every EMA in fedal): the running statistics are averaged like
the weights (``use_buffers=True``); integer buffers (BatchNorm's ``num_batches_tracked``
counter) are copied from ``F_theta``. The statistics belong to the weights they were
measured with: copying them from ``F_theta`` would normalise the averaged weights with
the statistics of the latest ones, while averaging them with the same decay gives
``F_beta`` statistics that lag exactly as its weights do. A counter has no meaningful
average (and an integer one would be truncated), so it follows ``F_theta``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar, cast

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

Network = TypeVar("Network", bound=nn.Module)
Tensors = list[torch.Tensor] | tuple[torch.Tensor, ...]
MultiAvgFn = Callable[[Tensors, Tensors, torch.Tensor | int], None]


def ema_multi_avg_fn(decay: float) -> MultiAvgFn:
    """The EMA rule for ``AveragedModel``'s groups of same-dtype tensors: floating-point
    tensors (weights, running statistics) are averaged, integer buffers copied."""
    average = get_ema_multi_avg_fn(decay)

    def update(averages: Tensors, currents: Tensors, count: torch.Tensor | int) -> None:
        if averages[0].is_floating_point():
            average(averages, currents, count)
        else:
            for target, current in zip(averages, currents, strict=True):
                target.copy_(current)

    return update


class EmaModel(nn.Module, Generic[Network]):
    """A network ``main`` (``F_theta``, trained elsewhere) and its EMA ``average``
    (``F_beta``: eval mode, no gradients), which starts equal to ``main``.

    Call :meth:`update` after every optimiser step of ``main``. The state dict holds
    ``main.<name>``, ``ema.module.<name>`` (``F_beta``) and ``ema.n_averaged``.
    """

    def __init__(self, main: Network, decay: float) -> None:
        super().__init__()
        self.main = main
        self.ema = AveragedModel(main, multi_avg_fn=ema_multi_avg_fn(decay), use_buffers=True)
        self.ema.module.requires_grad_(False).eval()
        self.ema.update_parameters(main)  # the first update copies: beta = theta

    @property
    def average(self) -> Network:
        """``F_beta``, the averaged network."""
        return cast(Network, self.ema.module)

    @torch.no_grad()
    def update(self) -> None:
        """``beta <- decay * beta + (1 - decay) * theta`` with ``main``'s current state."""
        self.ema.update_parameters(self.main)
