"""Building, training and persisting a strategy's *private* network.

A private network lives on the client only: it is built with ``ctx.build_model``, trained
in ``fit`` and kept across rounds through the strategy's flat ``state_dict``; it is never
uploaded. Shared by the strategies that keep one (PAL, ADS, LHD).

Determinism: the network's initial weights come from a seed drawn from ``ctx.rng`` inside
``torch.random.fork_rng`` (the caller's global torch RNG is left untouched); batches are
shuffled and augmented with ``ctx.generator``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

import torch
from torch import nn

from fedal.config import TrainingSection
from fedal.models import available_models, count_parameters
from fedal.training import crop_flip, epoch_batches, make_optimizer, wants_augmentation
from strategies.base import RoundContext

SEED_BOUND = 2**62

Network = TypeVar("Network", bound=nn.Module)


class PrivateNetwork(Generic[Network]):
    """A network built on first use from ``build(ctx)`` and persisted as a flat state dict.

    :meth:`get` draws one seed from ``ctx.rng`` on *every* call and uses it only when the
    network has to be built, so the round's random stream does not depend on whether the
    network already existed (a strategy restored from its state behaves like the original).
    State loaded before the network exists is kept and applied when it is built.
    """

    def __init__(self, build: Callable[[RoundContext], Network]) -> None:
        self._build = build
        self._module: Network | None = None
        self._pending: dict[str, torch.Tensor] = {}

    def get(self, ctx: RoundContext, fresh: bool = False) -> Network:
        """The network on ``ctx.device``; ``fresh`` rebuilds it from new initial weights."""
        seed = int(ctx.rng.integers(0, SEED_BOUND))
        if fresh:
            self._module, self._pending = None, {}
        if self._module is None:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                self._module = self._build(ctx)
            if self._pending:
                self._module.load_state_dict(self._pending)
                self._pending = {}
        return self._module.to(ctx.device)

    def parameter_count(self) -> int:
        """Trainable parameters of the built network."""
        if self._module is None:
            raise RuntimeError("the private network does not exist yet; call fit or select")
        return count_parameters(self._module)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Weights and buffers as CPU tensors (what was loaded, while nothing is built)."""
        if self._module is None:
            return dict(self._pending)
        return {k: v.detach().cpu().clone() for k, v in self._module.state_dict().items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned (applied on build if not built yet)."""
        if self._module is None:
            self._pending = dict(state)
        elif state:
            self._module.load_state_dict(state)


def step(optimizer: torch.optim.Optimizer, model: nn.Module, loss: torch.Tensor) -> None:
    """One gradient step of ``optimizer`` on ``loss``; every gradient of ``model`` is
    cleared first, so parameters outside the optimizer keep no stale gradient."""
    model.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def labelled_batches(
    ctx: RoundContext, batch_size: int, augment: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled epoch of ``(inputs, targets)`` over ``ctx.labelled``.

    With ``augment``, 32x32 colour images get the crop/flip of :mod:`fedal.training`.
    """
    view = ctx.labelled
    for rows in epoch_batches(len(view), batch_size, ctx.generator):
        inputs = view.inputs(rows, ctx.device)
        if augment and wants_augmentation(inputs):
            inputs = crop_flip(inputs, ctx.generator)
        yield inputs, view.targets(rows, ctx.device)


def unlabelled_batches(ctx: RoundContext, batch_size: int, limit: int) -> Iterator[torch.Tensor]:
    """One shuffled epoch of ``ctx.private_unlabelled`` input batches, at most ``limit``
    of them (0 = all)."""
    view = ctx.private_unlabelled
    batches = epoch_batches(len(view), batch_size, ctx.generator)
    for rows in batches[:limit] if limit else batches:
        yield view.inputs(rows, ctx.device)


@dataclass(frozen=True)
class PrivateTrainingOptions:
    """Options shared by strategies that train a private network (SGD on labelled batches).

    - ``backbone``: a :func:`fedal.models.available_models` name for ``ctx.build_model``.
    - ``epochs``: training epochs per ``fit``; ``lr``, ``momentum``, ``weight_decay``,
      ``batch_size``: the SGD settings of those epochs.
    - ``warm_start``: continue from the network of the previous round (kept in the
      strategy's state); ``False`` re-initialises it at every ``fit``.
    - ``augment``: crop/flip on labelled batches of 32x32 colour images.

    Subclasses set ``owner`` (the strategy name used in error messages), may override the
    defaults and extend :meth:`checks` with their own fields.
    """

    owner: ClassVar[str] = "private network"

    backbone: str = "resnet8"
    epochs: int = 5
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    warm_start: bool = True
    augment: bool = True

    def checks(self) -> list[tuple[str, bool, str]]:
        """``(field, valid, allowed values)`` for every validated field."""
        return [
            ("backbone", self.backbone in available_models(), ", ".join(available_models())),
            ("epochs", self.epochs >= 0, "an integer >= 0"),
            ("lr", self.lr > 0, "a number > 0"),
            ("momentum", 0 <= self.momentum < 1, "0 <= value < 1"),
            ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
        ]

    def __post_init__(self) -> None:
        for field, valid, allowed in self.checks():
            if not valid:
                raise ValueError(
                    f"query.options.{field}: {getattr(self, field)!r} is not allowed for "
                    f"'{self.owner}'; allowed: {allowed}"
                )

    def optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        """SGD with these settings over ``module``'s trainable parameters."""
        settings = TrainingSection(
            optimizer="sgd", lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        return make_optimizer(module, settings)
