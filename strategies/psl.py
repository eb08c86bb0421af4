"""Peer Study Learning (PSL): light peer students as a private active learner.

PSL paper, section 3 and Algorithm 1. P independently initialised peers live on the
client only (they may train on protected data and never leave it). Per epoch of
:meth:`PeerStudyLearning.fit`:

1. (Algorithm 1, line 6: the task learner / helper is updated with equation 1 by the
   runtime *before* ``fit``; it arrives as ``ctx.model`` and is the teacher here.)
2. In-Class Peer Study (equation 2) over the labelled set.
3. Out-of-Class Peer Study (equations 3-5) over unlabelled batches of
   ``ctx.private_unlabelled``.

By default (``study_steps = "joint"``) steps 2 and 3 share optimiser steps: each step
minimises equation 2 on a labelled batch plus equation 5 on the next unlabelled batch
(while the epoch's unlabelled batches last), so every update stays anchored to the
labels. ``"alternating"`` runs them as Algorithm 1 lists them, a pass of in-class steps
and then a pass of out-of-class steps; measured with ``fedal diagnose psl``, those
out-of-class steps degrade the peers even with the loss multiplied by zero (SGD
momentum and weight decay keep moving the weights with no label in the step), see
experiments/README.md, "PSL's out-of-class study".

Peer Study Feedback (equation 6) then scores the candidates by the peers' discrepancy.

The peers are built, seeded, trained and persisted with :mod:`strategies.private_training`
(:class:`~strategies.private_training.PrivateNetworks`, one seed from ``ctx.rng`` per peer).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from itertools import chain
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fedal.choices import ModelName, Schedule
from fedal.config import TrainingSection
from fedal.models import Classifier
from fedal.training import make_schedule
from fedal.views import SampleView
from strategies.base import RoundContext, top_k
from strategies.private_training import (
    BatchCap,
    LearningRate,
    NetworkStrategy,
    PrivateNetworks,
    SGDOptions,
    labelled_batches,
    step,
    unlabelled_batches,
)
from strategies.psl_losses import (
    Ranking,
    consensus_mask,
    discrepancy,
    in_class_loss,
    margin_ranking_loss,
    sample_pairs,
)
from strategies.registry import register
from strategies.scoring import entropy, predict_logits


class PSLOptions(SGDOptions):
    """``[query.options]`` of ``psl``.

    - ``peers`` (1-4), ``peer_model``: number and architecture of the peer students.
    - ``alpha``, ``tau``: equation 2's weight and softmax temperature; ``margin``: xi of
      equation 5; ``ranking``: which reading of equation 5 (see
      :func:`strategies.psl_losses.margin_ranking_loss`). The default is equation 5 as
      printed (and as the paper's own "simplified form" writes it); the directional
      reading amplifies disagreement and made a peer collapse in ``fedal diagnose psl``
      (experiments/README.md, "PSL's out-of-class study").
    - ``in_class`` / ``out_of_class``: the paper's ablations (section 4.5). Without
      in-class study the peers still learn the labels (plain cross-entropy, alpha = 0).
    - ``study_steps``: ``"joint"`` (equations 2 and 5 in one optimiser step) or
      ``"alternating"`` (Algorithm 1's order); see the module docstring.
    - ``unlabelled_batchnorm``: ``"batch"`` normalises unlabelled batches with their own
      statistics and updates the running ones (train mode, as Algorithm 1 implies);
      ``"running"`` uses the running statistics the labelled batches keep, so
      out-of-class study cannot move them.
    - ``epochs``, ``lr``, ``momentum``, ``weight_decay``, ``batch_size``: peer training
      (SGD) per ``fit``; ``schedule``: the learning rate per epoch of a ``fit``,
      cosine-annealed (default) or constant (the paper does not say; at a constant
      rate the peers' held-out accuracy swings from epoch to epoch and ends lower);
      ``unlabelled_batches_per_epoch`` caps out-of-class batches per epoch (0 = the
      whole private pool); ``augment``: crop/flip on labelled batches of 32x32 colour
      images.

    The defaults keep one ``fit`` cheap on a CPU; the experiment configs set paper values.
    """

    peers: int = Field(2, ge=1, le=4)
    peer_model: ModelName = "resnet8"
    alpha: float = Field(0.1, ge=0, le=1)
    tau: float = Field(4.0, gt=0)
    margin: float = Field(0.01, ge=0)
    ranking: Ranking = "paper"
    in_class: bool = True
    out_of_class: bool = True
    unlabelled_batchnorm: Literal["batch", "running"] = "batch"
    study_steps: Literal["joint", "alternating"] = "joint"
    lr: LearningRate = 0.05
    schedule: Schedule = "cosine"
    unlabelled_batches_per_epoch: BatchCap = 4

    def settings(self) -> TrainingSection:
        """The SGD settings with this ``schedule``."""
        return super().settings().model_copy(update={"schedule": self.schedule})


@register
class PeerStudyLearning(NetworkStrategy):
    """Select the candidates on which the peer students disagree most (equation 6).

    With a single peer the discrepancy is undefined and the score degrades to the
    entropy of that peer's prediction (section 4.5, "Effect of multiple peers").
    The peers' weights (BatchNorm statistics included) persist through
    :meth:`state_dict` as ``peer<j>.<name>``; the optimizer restarts every ``fit``.
    """

    name = "psl"
    Options = PSLOptions
    options: PSLOptions

    def __init__(self, options: Mapping[str, object] | None = None) -> None:
        super().__init__(options)
        names = [f"peer{j}" for j in range(self.options.peers)]
        self.networks: PrivateNetworks[Classifier] = PrivateNetworks(self.name, names, self._build)

    def _build(self, ctx: RoundContext) -> Classifier:
        return ctx.build_model(self.options.peer_model)

    # ------------------------------------------------------------------ training

    def fit(self, ctx: RoundContext) -> None:
        """Algorithm 1, lines 4-12 without line 6: per epoch, in-class study (eq. 2) and
        out-of-class study (eqs 3-5), in shared steps or one after the other
        (``study_steps``); the learning rate follows ``schedule`` over the epochs."""
        peers = nn.ModuleList(self.networks.get(ctx))  # one optimiser trains them all
        opts = self.options
        optimizer = opts.optimizer(peers)
        schedule = make_schedule(optimizer, opts.settings(), opts.epochs)
        peers.train()
        for _ in range(opts.epochs):
            in_class = self._in_class_losses(ctx, peers)
            out_of_class = (
                self._out_of_class_losses(ctx, peers)
                if opts.out_of_class and len(peers) > 1
                else iter(())
            )
            losses: Iterator[torch.Tensor]
            if opts.study_steps == "joint":
                losses = (loss + next(out_of_class, 0.0) for loss in in_class)
            else:
                losses = chain(in_class, out_of_class)
            steps = 0
            for loss in losses:
                step(optimizer, peers, loss)
                steps += 1
            if steps:  # no labelled batch in joint mode: nothing to anneal
                schedule.step()
        peers.eval()

    def _in_class_losses(self, ctx: RoundContext, peers: nn.ModuleList) -> Iterator[torch.Tensor]:
        """Equation 2 summed over the peers, one loss per shuffled labelled batch."""
        opts = self.options
        for inputs, targets in labelled_batches(ctx, opts.batch_size, opts.augment):
            teacher = _teacher_logits(ctx.model, inputs) if opts.in_class else None
            yield torch.stack(
                [
                    in_class_loss(peer(inputs), targets, teacher, opts.alpha, opts.tau)
                    for peer in peers
                ]
            ).sum()

    def _out_of_class_losses(
        self, ctx: RoundContext, peers: nn.ModuleList
    ) -> Iterator[torch.Tensor]:
        """Equations 3-5 on (capped) shuffled unlabelled batches; batches without a
        pair (S_A or S_D empty) give no loss."""
        opts = self.options
        batches = unlabelled_batches(ctx, opts.batch_size, opts.unlabelled_batches_per_epoch)
        for inputs in batches:
            with _running_batchnorm(peers, opts.unlabelled_batchnorm == "running"):
                logits = torch.stack([peer(inputs) for peer in peers])
            rows_a, rows_d = sample_pairs(consensus_mask(logits.argmax(dim=-1)), ctx.generator)
            if len(rows_a) == 0:
                continue
            scores = discrepancy(logits)
            yield margin_ranking_loss(
                scores[rows_d.to(scores.device)],
                scores[rows_a.to(scores.device)],
                opts.margin,
                opts.ranking,
            )

    # ------------------------------------------------------------------ selection

    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        """Top-``budget`` candidates by Peer Study Feedback (equation 6)."""
        if budget <= 0 or len(ctx.candidates) == 0:
            return np.empty(0, dtype=np.int64)
        return top_k(self.feedback_scores(ctx), budget)

    def feedback_scores(self, ctx: RoundContext) -> torch.Tensor:
        """Equation 6 on ``ctx.candidates`` (non-protected only): the peers' discrepancy,
        or the single peer's prediction entropy when ``peers = 1``."""
        logits = self.peer_logits(ctx, ctx.candidates)
        if len(logits) == 1:
            return entropy(torch.softmax(logits[0], dim=1))
        return discrepancy(logits)

    def peer_logits(self, ctx: RoundContext, view: SampleView) -> torch.Tensor:
        """Every peer's logits on ``view`` (eval mode), stacked as ``(P, N, C)`` on the CPU."""
        return torch.stack(
            [
                predict_logits(peer, view, ctx.device, ctx.batch_size)
                for peer in self.networks.get(ctx)
            ]
        )

    # ------------------------------------------------------------------ peers and state


@torch.no_grad()
def _teacher_logits(teacher: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The teacher's (task learner's) logits in eval mode; its mode is restored."""
    was_training = teacher.training
    teacher.eval()
    logits = teacher(inputs)
    teacher.train(was_training)
    return logits


@contextmanager
def _running_batchnorm(peers: nn.ModuleList, active: bool) -> Iterator[None]:
    """Forward passes inside use (and do not update) BatchNorm's running statistics."""
    if not active:
        yield
        return
    peers.eval()
    try:
        yield
    finally:
        peers.train()
