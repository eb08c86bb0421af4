"""The toolkit of every strategy with networks of its own (PSL, LHD, PAL, ADS).

A private network lives on the client only: it is built lazily with ``ctx.build_model``
(:class:`PrivateNetwork`; several under name prefixes: :class:`PrivateNetworks`),
trained in ``fit`` with :func:`step` over :func:`labelled_batches` and
:func:`unlabelled_batches`, and kept across rounds through the strategy's flat
``state_dict``; it is never uploaded. :class:`SGDOptions` and
:class:`PrivateTrainingOptions` are the option schemas the SGD-trained ones share.

Determinism: a network's initial weights, and anything else drawn from torch's global
RNG while a strategy trains (dropout masks), come from a seed drawn from ``ctx.rng``
inside :func:`seeded_torch` (the caller's global torch RNG is left untouched); batches
are shuffled and augmented with ``ctx.generator``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, Generic, TypeVar

import torch
from pydantic import Field
from torch import nn

from fedal.choices import ModelName
from fedal.compute import place
from fedal.config import TrainingSection
from fedal.models import count_parameters
from fedal.schema import Schema
from fedal.training import crop_flip, epoch_batches, make_optimizer, wants_augmentation
from strategies.base import QueryStrategy, RoundContext

SEED_BOUND = 2**62

Network = TypeVar("Network", bound=nn.Module)

Epochs = Annotated[int, Field(ge=0)]
LearningRate = Annotated[float, Field(gt=0)]
BatchSize = Annotated[int, Field(ge=1)]
BatchCap = Annotated[int, Field(ge=0)]
"""A cap on batches per epoch; 0 = no cap."""


@contextmanager
def seeded_torch(ctx: RoundContext) -> Iterator[None]:
    """Torch's global RNGs seeded from one draw of ``ctx.rng`` inside a fork of them."""
    seed = int(ctx.rng.integers(0, SEED_BOUND))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


class PrivateNetwork(Generic[Network]):
    """A network built on first use from ``build(ctx)`` and persisted as a flat state dict.

    :meth:`get` draws one seed from ``ctx.rng`` (:func:`seeded_torch`) on *every* call and
    uses it only when the network has to be built, so the round's random stream does not
    depend on whether the network already existed (a strategy restored from its state
    behaves like the original). State loaded before the network exists is kept and
    applied when it is built.
    """

    def __init__(self, build: Callable[[RoundContext], Network]) -> None:
        self._build = build
        self._module: Network | None = None
        self._pending: dict[str, torch.Tensor] = {}

    def get(self, ctx: RoundContext, fresh: bool = False) -> Network:
        """The network on ``ctx.device``; ``fresh`` rebuilds it from new initial weights."""
        with seeded_torch(ctx):
            if fresh:
                self._module, self._pending = None, {}
            if self._module is None:
                self._module = self._build(ctx)
                if self._pending:
                    self._module.load_state_dict(self._pending)
                    self._pending = {}
        return place(self._module, ctx.device)

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


class PrivateNetworks(Generic[Network]):
    """Several :class:`PrivateNetwork` built alike, persisted in one flat state dict as
    ``<name>.<key>``; ``owner`` (the strategy's name) prefixes error messages."""

    def __init__(
        self, owner: str, names: Sequence[str], build: Callable[[RoundContext], Network]
    ) -> None:
        self._owner = owner
        self._networks = {name: PrivateNetwork(build) for name in names}

    def get(self, ctx: RoundContext) -> list[Network]:
        """Every network on ``ctx.device``, in the order of ``names`` (one seed each)."""
        return [network.get(ctx) for network in self._networks.values()]

    def parameter_count(self) -> int:
        """Trainable parameters of all networks."""
        return sum(network.parameter_count() for network in self._networks.values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every network's state under ``<name>.`` (empty before any is built or loaded)."""
        return {
            f"{name}.{key}": value
            for name, network in self._networks.items()
            for key, value in network.state_dict().items()
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned; it must hold exactly these networks."""
        parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in self._networks}
        found = {key.split(".", 1)[0] for key in state}
        if state and found != set(parts):
            raise ValueError(
                f"{self._owner}: saved state holds networks {sorted(found)}, "
                f"expected {sorted(parts)}"
            )
        for key, value in state.items():
            name, rest = key.split(".", 1)
            parts[name][rest] = value
        for name, network in self._networks.items():
            network.load_state_dict(parts[name])


class NetworkStrategy(QueryStrategy):
    """A query strategy whose private state is its network(s), ``self.networks``: they
    give the sampling-model size (the PSL paper's Table 1 column) and what persists
    across rounds."""

    networks: PrivateNetwork[Any] | PrivateNetworks[Any]

    def sampling_parameters(self) -> int:
        """Trainable parameters of the strategy's private network(s)."""
        return self.networks.parameter_count()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The network(s)' weights and buffers (empty before they exist)."""
        return self.networks.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned (applied once they are built)."""
        self.networks.load_state_dict(state)


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


class SGDOptions(Schema):
    """Options of a private network trained with SGD on labelled batches.

    - ``epochs``: training epochs per ``fit``; ``lr``, ``momentum``, ``weight_decay``,
      ``batch_size``: the SGD settings of those epochs.
    - ``augment``: crop/flip on labelled batches of 32x32 colour images.

    Subclasses may change a default by declaring the field again with the same type
    (``lr: LearningRate = 0.05``), which keeps its bounds.
    """

    epochs: Epochs = 5
    lr: LearningRate = 0.01
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: BatchSize = 64
    augment: bool = True

    def settings(self) -> TrainingSection:
        """These settings as the training section :mod:`fedal.training` reads."""
        return TrainingSection(
            optimizer="sgd", lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )

    def optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        """SGD with these settings over ``module``'s trainable parameters."""
        return make_optimizer(module, self.settings())


class PrivateTrainingOptions(SGDOptions):
    """:class:`SGDOptions` of one private network built from a model name.

    - ``backbone``: a :func:`fedal.models.available_models` name for ``ctx.build_model``.
    - ``warm_start``: continue from the network of the previous round (kept in the
      strategy's state); ``False`` re-initialises it at every ``fit``.
    """

    backbone: ModelName = "resnet8"
    warm_start: bool = True
