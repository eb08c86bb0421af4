"""LHD: Loss and Hidden state Difference sampling (LHD paper, section 4.2, Algorithm 1).

A *main* model ``F_theta`` is trained on the labelled set ``S`` with cross-entropy while
an exponential moving average ``F_beta`` of its weights is kept (Algorithm 1, lines 2
and 14)::

    beta <- alpha * beta + (1 - alpha) * theta      in each training iteration.

For every candidate ``x`` (``U \\ S``; lines 5-10)::

    y_pseudo = OH(F_beta(x))                                        (line 6)
    l_ema    = CE(F_beta(x), y_pseudo),   h_ema  = penultimate of F_beta   (line 7)
    l_main   = CE(F_theta(x), y_pseudo),  h_main = penultimate of F_theta  (line 8)
    dl = |l_ema - l_main|,  dh = h_ema - h_main                     (line 9)
    lh = dl * dh                                                    (line 10)

and k-means++ seeding over the ``lh`` vectors picks the batch (line 12). The paper
applies no normalisation to ``dl``, ``dh`` or ``lh``; neither does this module.

Readings of the paper fixed here:

- *Which network is the main model.* The paper's main model is the classifier itself,
  trained from initialisation in the first round (line 2). Here the runtime's
  classifier (``ctx.model``) is read-only, so the strategy keeps a private
  ``main``/``ema`` pair, built the first time from the ``backbone`` option:
  ``"helper-init"`` (default) is a deep copy of ``ctx.model`` re-initialised with each
  layer's ``reset_parameters`` (the helper's architecture, so it fits every dataset
  incl. the 2-D toys, trained from scratch as in the paper; ResNet convolutions get
  PyTorch's default initialisation instead of :mod:`fedal.models`' Kaiming-normal);
  ``"helper"`` is a deep copy keeping the helper's trained weights (warm start); a
  model name is a fresh ``ctx.build_model(name)``. The EMA starts equal to the main
  model (line 2: "updating the initial EMA model F_theta_1").
- *Across rounds.* Line 14 trains ``F_theta_{t+1}`` from ``F_theta_t`` and carries
  ``F_beta`` on: the pair persists through :meth:`LHD.state_dict` (``main.*``,
  ``ema.*``) and every ``fit`` continues it. The Adam optimizer restarts each ``fit``.
- *EMA step.* Algorithm 1 updates the average "in each training iteration" (section
  4.2 says "at epoch t"; the algorithm is followed): after every optimizer step,
  with the freshly updated ``theta``. Floating-point buffers (BatchNorm running
  statistics) are averaged the same way so that the EMA network's normalisation
  matches its weights; integer buffers (batch counters) are copied.
- *Training.* Adam (``beta_1 = 0.9``, ``beta_2 = 0.999``, no weight decay), batches of
  ``batch_size`` labelled samples, no augmentation (the paper names augmentation only
  for fine-tuning, Algorithm 2, which the client runtime provides, not this module).
- *Penultimate layer* is ``Classifier.embed`` (before dropout); both networks are
  scored in eval mode.
- *k-means++ seeding.* Arthur & Vassilvitskii (2007), as in BADGE: the first centre is
  the candidate with the largest ``||lh||`` (the paper wants "diverse examples that
  have a high magnitude of lh"), then ``D^2``-proportional draws from ``ctx.rng``
  (:func:`strategies.distances.kmeans_plus_plus`: chunked running minimum, no
  duplicates, zero-``D^2`` remainder filled at random).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedal.config import TrainingSection
from fedal.models import available_models
from fedal.training import epoch_batches, make_optimizer
from fedal.views import SampleView
from strategies.base import QueryStrategy, RoundContext
from strategies.distances import (
    DEFAULT_CHUNK_SIZE,
    EuclideanSpace,
    as_float64,
    kmeans_plus_plus,
)
from strategies.private_training import SEED_BOUND, PrivateNetwork
from strategies.registry import register
from strategies.scoring import predict_embeddings

HELPER_BACKBONE = "helper"
FRESH_HELPER_BACKBONE = "helper-init"


@dataclass(frozen=True)
class LHDOptions:
    """``[query.options]`` of ``lhd`` (paper values from appendix B, "Training setup").

    - ``ema_decay``: alpha of the EMA update (paper: 0.999).
    - ``backbone``: ``"helper-init"`` (the scoring model's architecture, re-initialised),
      ``"helper"`` (a copy of the scoring model, trained weights kept) or a model name
      for ``ctx.build_model`` (paper: the classifier itself from initialisation, a
      ResNet on CIFAR-10/SVHN).
    - ``epochs``: passes over the labelled set per ``fit`` (paper: 500; the default is
      small so that one ``fit`` stays cheap on a CPU; experiment configs set more).
    - ``lr``: Adam learning rate (paper: 1e-4).
    - ``batch_size``: labelled samples per training step (paper: 64).
    - ``chunk_size``: rows per block of k-means++ distance computations (no paper value).
    """

    ema_decay: float = 0.999
    backbone: str = FRESH_HELPER_BACKBONE
    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 64
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def __post_init__(self) -> None:
        backbones = [FRESH_HELPER_BACKBONE, HELPER_BACKBONE, *available_models()]
        checks = [
            ("ema_decay", 0 <= self.ema_decay < 1, "0 <= value < 1"),
            ("backbone", self.backbone in backbones, ", ".join(backbones)),
            ("epochs", self.epochs >= 0, "an integer >= 0"),
            ("lr", self.lr > 0, "a number > 0"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("chunk_size", self.chunk_size >= 1, "an integer >= 1"),
        ]
        for field, ok, allowed in checks:
            if not ok:
                value = getattr(self, field)
                raise ValueError(
                    f"query.options.{field}: {value!r} is not allowed for 'lhd'; allowed: {allowed}"
                )


@torch.no_grad()
def ema_update(ema: nn.Module, main: nn.Module, decay: float) -> None:
    """``beta <- alpha * beta + (1 - alpha) * theta`` (Algorithm 1, lines 2 and 14).

    Applied to every floating-point entry of the state dict (parameters and BatchNorm
    running statistics); integer buffers are copied from ``main``.
    """
    main_state = main.state_dict()
    for key, average in ema.state_dict().items():
        current = main_state[key]
        if average.is_floating_point():
            average.mul_(decay).add_(current, alpha=1.0 - decay)
        else:
            average.copy_(current)


def lhd_vectors(
    main_logits: torch.Tensor,
    main_hidden: torch.Tensor,
    ema_logits: torch.Tensor,
    ema_hidden: torch.Tensor,
) -> torch.Tensor:
    """State differences ``lh_x = dl_x * dh_x`` (Algorithm 1, lines 6-10), shape ``(N, d)``.

    ``y_pseudo`` is the EMA model's argmax; both losses are cross-entropies against it;
    ``dh = h_ema - h_main``.
    """
    pseudo = ema_logits.argmax(dim=1)
    loss_ema = F.cross_entropy(ema_logits, pseudo, reduction="none")
    loss_main = F.cross_entropy(main_logits, pseudo, reduction="none")
    loss_difference = (loss_ema - loss_main).abs()
    return loss_difference.unsqueeze(1) * (ema_hidden - main_hidden)


def seed_batch(
    vectors: torch.Tensor, budget: int, rng: np.random.Generator, chunk_size: int
) -> np.ndarray:
    """k-means++ seeding over ``vectors`` (Algorithm 1, line 12), largest norm first."""
    space = EuclideanSpace(vectors)
    first = int(space.sq_norms.argmax())
    return kmeans_plus_plus(space, budget, first, rng, chunk_size)


@contextmanager
def _torch_rng_from(rng: np.random.Generator) -> Iterator[None]:
    """Torch's global RNGs seeded from ``rng`` inside a fork (the caller's state is kept)."""
    seed = int(rng.integers(0, SEED_BOUND))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def _reinitialise(model: nn.Module) -> None:
    """Fresh weights (and BatchNorm statistics) for every layer that can reset itself."""
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


@register
class LHD(QueryStrategy):
    """k-means++ seeding over the main/EMA state differences ``lh`` (Algorithm 1).

    The ``main`` and ``ema`` networks (weights and buffers) persist through
    :meth:`state_dict` as ``main.<name>`` and ``ema.<name>``.
    """

    name = "lhd"
    Options = LHDOptions

    def __init__(self, options: Mapping[str, object] | None = None) -> None:
        super().__init__(options)
        self._pair: PrivateNetwork[nn.ModuleDict] = PrivateNetwork(self._new_pair)

    # ------------------------------------------------------------------ training

    def fit(self, ctx: RoundContext) -> None:
        """Algorithm 1, lines 2/14: train ``main`` on the labelled set, EMA every step."""
        pair = self._models(ctx)
        with _torch_rng_from(ctx.rng):
            self._train(pair, ctx.labelled, ctx)

    def _train(self, pair: nn.ModuleDict, view: SampleView, ctx: RoundContext) -> None:
        """``epochs`` passes of cross-entropy steps on ``main``, each followed by the EMA."""
        opts = self.options
        if len(view) == 0 or opts.epochs == 0:
            return
        main, ema = pair["main"], pair["ema"]
        optimizer = make_optimizer(
            main, TrainingSection(optimizer="adam", lr=opts.lr, weight_decay=0.0)
        )
        main.train()
        for _ in range(opts.epochs):
            for rows in epoch_batches(len(view), opts.batch_size, ctx.generator):
                loss = F.cross_entropy(
                    main(view.inputs(rows, ctx.device)), view.targets(rows, ctx.device)
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                ema_update(ema, main, opts.ema_decay)
        main.eval()

    # ------------------------------------------------------------------ selection

    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        """Algorithm 1, lines 5-12, over ``ctx.candidates``."""
        if budget <= 0 or len(ctx.candidates) == 0:
            return np.empty(0, dtype=np.int64)
        vectors = as_float64(self.state_differences(ctx), ctx.device)
        return seed_batch(vectors, budget, ctx.rng, self.options.chunk_size)

    def state_differences(self, ctx: RoundContext) -> torch.Tensor:
        """``lh`` for every candidate, shape ``(N, embedding_dim)``, on the CPU."""
        pair = self._models(ctx)
        main_hidden, main_logits = predict_embeddings(
            pair["main"], ctx.candidates, ctx.device, ctx.batch_size
        )
        ema_hidden, ema_logits = predict_embeddings(
            pair["ema"], ctx.candidates, ctx.device, ctx.batch_size
        )
        return lhd_vectors(main_logits, main_hidden, ema_logits, ema_hidden)

    # ------------------------------------------------------------------ models and state

    def _models(self, ctx: RoundContext) -> nn.ModuleDict:
        """The ``main``/``ema`` pair on ``ctx.device``, created on first use (then given any
        loaded state); see :class:`strategies.private_training.PrivateNetwork`."""
        return self._pair.get(ctx)

    def _new_pair(self, ctx: RoundContext) -> nn.ModuleDict:
        """``main`` from the backbone option, ``ema`` an exact copy of it (line 2)."""
        backbone = self.options.backbone
        if backbone in (HELPER_BACKBONE, FRESH_HELPER_BACKBONE):
            main = copy.deepcopy(ctx.model)
            if backbone == FRESH_HELPER_BACKBONE:
                _reinitialise(main)
        else:
            main = ctx.build_model(backbone)
        main.requires_grad_(True).eval()
        ema = copy.deepcopy(main).requires_grad_(False)
        return nn.ModuleDict({"main": main, "ema": ema})

    def sampling_parameters(self) -> int:
        """The main network's trainable parameters (the EMA copy is not trained)."""
        return self._pair.parameter_count()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Both networks as ``main.<name>`` / ``ema.<name>`` (empty before they exist)."""
        return self._pair.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned (applied once the pair exists)."""
        unknown = sorted({key.split(".", 1)[0] for key in state} - {"main", "ema"})
        if unknown:
            raise ValueError(f"lhd: saved state has unknown model(s) {unknown}")
        self._pair.load_state_dict(state)
