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
  ``main``/``ema`` pair (a :class:`fedal.ema.EmaModel`, built, seeded and persisted
  with :mod:`strategies.private_training`), built the first time from the ``backbone``
  option:
  ``"helper-init"`` (default) is a deep copy of ``ctx.model`` re-initialised with each
  layer's ``reset_parameters`` (the helper's architecture, so it fits every dataset
  incl. the 2-D toys, trained from scratch as in the paper; ResNet convolutions get
  PyTorch's default initialisation instead of :mod:`fedal.models`' Kaiming-normal);
  ``"helper"`` is a deep copy keeping the helper's trained weights (warm start); a
  model name is a fresh ``ctx.build_model(name)``. The EMA starts equal to the main
  model (line 2: "updating the initial EMA model F_theta_1").
- *Across rounds.* Line 14 trains ``F_theta_{t+1}`` from ``F_theta_t`` and carries
  ``F_beta`` on: the pair persists through :meth:`LHD.state_dict` (``main.*``,
  ``ema.module.*``, ``ema.n_averaged``) and every ``fit`` continues it. The Adam
  optimizer restarts each ``fit``.
- *EMA step.* Algorithm 1 updates the average "in each training iteration" (section
  4.2 says "at epoch t"; the algorithm is followed): after every optimizer step,
  with the freshly updated ``theta``, by :class:`fedal.ema.EmaModel` (the EMA the
  helper's fine-tuning keeps too; its module docstring gives the BatchNorm policy:
  running statistics averaged like the weights, batch counters copied).
- *Training.* Adam (``beta_1 = 0.9``, ``beta_2 = 0.999``, no weight decay), batches of
  ``batch_size`` labelled samples, no augmentation (the paper names augmentation only
  for fine-tuning, Algorithm 2).
- *How long.* ``dl`` measures how fast a sample converges only once ``F_theta`` fits
  the labelled set and ``F_beta`` has left its starting point (with alpha = 0.999 the
  EMA still keeps 0.999^n of its start after n steps: 0.98 after 20). The paper trains
  500 epochs, which on its CIFAR-10 pools is thousands of steps; with a few dozen labels
  it is a few hundred. So ``fit`` trains at least ``epochs`` passes and then until both
  hold: the EMA keeps at most ``1 - ema_moved`` of its start over the pair's life
  (``alpha^n <= 0.05``: n >= 2995 steps at the defaults), and ``F_theta``'s accuracy on
  the labelled set has not risen for ``fit_patience`` passes (it fits the labelled set
  as far as it will: labels on noisy data may never be fitted), at most ``max_steps``
  steps per ``fit`` (:class:`FitStats` says where it stopped).
- *Fine-tuning (Algorithm 2).* With ``finetune`` the pair itself is fine-tuned after
  each ``fit``: candidates whose confidence under ``F_theta`` exceeds
  ``finetune_gamma`` get ``F_beta``'s one-hot prediction and ``F_theta`` trains
  ``finetune_iterations`` passes on strongly augmented copies, the EMA following
  (:func:`fedal.finetune.finetune_on_confident`, the routine the runtime's
  ``training.finetune`` applies to the helper).
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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from fedal.choices import ModelName
from fedal.config import TrainingSection
from fedal.ema import EmaModel
from fedal.finetune import finetune_on_confident
from fedal.models import Classifier
from fedal.schema import Schema
from fedal.training import make_optimizer
from strategies.base import RoundContext
from strategies.distances import (
    DEFAULT_CHUNK_SIZE,
    ChunkSize,
    EuclideanSpace,
    as_float64,
    kmeans_plus_plus,
)
from strategies.private_training import (
    BatchSize,
    Epochs,
    LearningRate,
    NetworkStrategy,
    PrivateNetwork,
    labelled_batches,
    seeded_torch,
    step,
)
from strategies.registry import register
from strategies.scoring import predict_embeddings

HelperBackbone = Literal["helper-init", "helper"]
"""Backbones copied from the scoring model: re-initialised, or with its trained weights."""


class LHDOptions(Schema):
    """``[query.options]`` of ``lhd`` (paper values from appendix B, "Training setup").

    - ``ema_decay``: alpha of the EMA update (paper: 0.999).
    - ``backbone``: ``"helper-init"`` (the scoring model's architecture, re-initialised),
      ``"helper"`` (a copy of the scoring model, trained weights kept) or a model name
      for ``ctx.build_model`` (paper: the classifier itself from initialisation, a
      ResNet on CIFAR-10/SVHN).
    - ``epochs``: passes over the labelled set per ``fit`` at least (paper: 500 in all);
      then training goes on until the two conditions below hold.
    - ``ema_moved``: train until the EMA keeps at most ``1 - ema_moved`` of its starting
      point (``ema_decay ** steps``, counted over the pair's life).
    - ``fit_patience``: ... and until the main network's accuracy on the labelled set
      has not risen for this many passes.
    - ``max_steps``: at most this many steps per ``fit`` (0 = no training).
    - ``lr``: Adam learning rate (paper: 1e-4).
    - ``batch_size``: labelled samples per training step (paper: 64).
    - ``chunk_size``: rows per block of k-means++ distance computations (no paper value).
    - ``finetune``, ``finetune_gamma``, ``finetune_iterations``: Algorithm 2 on the pair
      (paper: gamma 0.9, T = 1).
    """

    ema_decay: float = Field(0.999, ge=0, lt=1)
    backbone: Literal[HelperBackbone, ModelName] = "helper-init"
    epochs: Epochs = 10
    ema_moved: float = Field(0.95, ge=0, lt=1)
    fit_patience: int = Field(20, ge=1)
    max_steps: int = Field(10_000, ge=0)
    lr: LearningRate = 1e-4
    batch_size: BatchSize = 64
    chunk_size: ChunkSize = DEFAULT_CHUNK_SIZE
    finetune: bool = False
    finetune_gamma: float = Field(0.9, ge=0, lt=1)
    finetune_iterations: int = Field(1, ge=0)


@dataclass(frozen=True)
class FitStats:
    """Where one ``fit`` stopped: steps taken, the main network's accuracy on the
    labelled set, the weight the EMA keeps on its starting point, and (with
    ``finetune``) how many candidates were pseudo-labelled."""

    steps: int
    labelled_accuracy: float
    ema_start_weight: float
    pseudo_labelled: int = 0


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


@torch.no_grad()
def labelled_accuracy(model: Classifier, ctx: RoundContext) -> float:
    """``model``'s accuracy on the labelled set (eval mode)."""
    _, logits = predict_embeddings(model, ctx.labelled, ctx.device, ctx.batch_size)
    labels = torch.as_tensor(ctx.labelled.labels)
    return float((logits.argmax(dim=1) == labels).float().mean())


def ema_start_weight(pair: EmaModel[Classifier], decay: float) -> float:
    """The weight ``alpha^n`` the EMA keeps on its starting point after n updates."""
    updates = int(pair.ema.n_averaged) - 1  # the first "update" copied main
    return float(decay**updates)


def _reinitialise(model: Classifier) -> None:
    """Fresh weights (and BatchNorm statistics) for every layer that can reset itself."""
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()


@register
class LHD(NetworkStrategy):
    """k-means++ seeding over the main/EMA state differences ``lh`` (Algorithm 1).

    The ``main`` network and its EMA (weights and buffers) persist through
    :meth:`state_dict` as ``main.<name>`` and ``ema.module.<name>``.
    """

    name = "lhd"
    Options = LHDOptions
    options: LHDOptions

    def __init__(self, options: Mapping[str, object] | None = None) -> None:
        super().__init__(options)
        self.networks: PrivateNetwork[EmaModel[Classifier]] = PrivateNetwork(self._new_pair)
        self.last_fit: FitStats | None = None

    # ------------------------------------------------------------------ training

    def fit(self, ctx: RoundContext) -> None:
        """Algorithm 1, lines 2/14: cross-entropy steps on ``main`` over the labelled set,
        each followed by the EMA update, until the stopping rule of the module docstring
        ("How long"); then, with ``finetune``, Algorithm 2 on the pair."""
        pair, opts = self.networks.get(ctx), self.options
        with seeded_torch(ctx):  # drawn even with nothing to train: one stream either way
            if len(ctx.labelled) == 0 or opts.max_steps == 0:
                return
            settings = TrainingSection(
                optimizer="adam",
                lr=opts.lr,
                weight_decay=0.0,
                batch_size=opts.batch_size,
                eval_batch_size=ctx.batch_size,
                finetune_gamma=opts.finetune_gamma,
                finetune_iterations=opts.finetune_iterations,
            )
            steps = self._train_until_settled(ctx, pair, settings)
            pseudo = 0
            if opts.finetune:
                pseudo = finetune_on_confident(
                    pair.main, pair, ctx.candidates, settings, ctx.device, ctx.generator
                ).confident
            self.last_fit = FitStats(
                steps,
                labelled_accuracy(pair.main, ctx),
                ema_start_weight(pair, opts.ema_decay),
                pseudo,
            )

    def _train_until_settled(
        self, ctx: RoundContext, pair: EmaModel[Classifier], settings: TrainingSection
    ) -> int:
        """Passes over the labelled set until the stopping rule holds; returns the steps."""
        opts = self.options
        optimizer = make_optimizer(pair.main, settings)
        steps, passes, best, since_best = 0, 0, -1.0, 0
        while steps < opts.max_steps:
            pair.main.train()
            for inputs, targets in labelled_batches(ctx, opts.batch_size, augment=False):
                step(optimizer, pair.main, F.cross_entropy(pair.main(inputs), targets))
                pair.update()
                steps += 1
                if steps == opts.max_steps:
                    break
            passes += 1
            accuracy = labelled_accuracy(pair.main, ctx)
            best, since_best = (accuracy, 0) if accuracy > best else (best, since_best + 1)
            settled = ema_start_weight(pair, opts.ema_decay) <= 1 - opts.ema_moved
            if passes >= opts.epochs and settled and since_best >= opts.fit_patience:
                break
        pair.main.eval()
        return steps

    # ------------------------------------------------------------------ selection

    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        """Algorithm 1, lines 5-12, over ``ctx.candidates``."""
        if budget <= 0 or len(ctx.candidates) == 0:
            return np.empty(0, dtype=np.int64)
        vectors = as_float64(self.state_differences(ctx), ctx.device)
        return seed_batch(vectors, budget, ctx.rng, self.options.chunk_size)

    def state_differences(self, ctx: RoundContext) -> torch.Tensor:
        """``lh`` for every candidate, shape ``(N, embedding_dim)``, on the CPU."""
        pair = self.networks.get(ctx)
        main_hidden, main_logits = predict_embeddings(
            pair.main, ctx.candidates, ctx.device, ctx.batch_size
        )
        ema_hidden, ema_logits = predict_embeddings(
            pair.average, ctx.candidates, ctx.device, ctx.batch_size
        )
        return lhd_vectors(main_logits, main_hidden, ema_logits, ema_hidden)

    # ------------------------------------------------------------------ models and state

    def _new_pair(self, ctx: RoundContext) -> EmaModel[Classifier]:
        """``main`` from the backbone option, its EMA starting as an exact copy (line 2)."""
        backbone = self.options.backbone
        if backbone in get_args(HelperBackbone):
            main = copy.deepcopy(ctx.model)
            if backbone == "helper-init":
                _reinitialise(main)
        else:
            main = ctx.build_model(backbone)
        return EmaModel(main.requires_grad_(True).eval(), self.options.ema_decay)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned (applied once the pair exists)."""
        unknown = sorted({key.split(".", 1)[0] for key in state} - {"main", "ema"})
        if unknown:
            raise ValueError(f"lhd: saved state has unknown model(s) {unknown}")
        super().load_state_dict(state)
