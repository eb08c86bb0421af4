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
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch
from torch import nn

from fedal.config import TrainingSection
from fedal.models import available_models, count_parameters
from fedal.training import (
    SCHEDULES,
    crop_flip,
    epoch_batches,
    make_optimizer,
    make_schedule,
    wants_augmentation,
)
from fedal.views import SampleView
from strategies.base import QueryStrategy, RoundContext, top_k
from strategies.psl_losses import (
    RANKINGS,
    consensus_mask,
    discrepancy,
    in_class_loss,
    margin_ranking_loss,
    sample_pairs,
)
from strategies.registry import register
from strategies.scoring import entropy, predict_logits

MAX_PEERS = 4
BATCHNORM_MODES = ("batch", "running")
STUDY_STEPS = ("joint", "alternating")
STATE_PREFIX = "peer"


@dataclass(frozen=True)
class PSLOptions:
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

    peers: int = 2
    peer_model: str = "resnet8"
    alpha: float = 0.1
    tau: float = 4.0
    margin: float = 0.01
    ranking: str = "paper"
    in_class: bool = True
    out_of_class: bool = True
    unlabelled_batchnorm: str = "batch"
    study_steps: str = "joint"
    epochs: int = 5
    lr: float = 0.05
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    unlabelled_batches_per_epoch: int = 4
    augment: bool = True

    def __post_init__(self) -> None:
        checks = [
            ("peers", 1 <= self.peers <= MAX_PEERS, f"an integer from 1 to {MAX_PEERS}"),
            ("peer_model", self.peer_model in available_models(), ", ".join(available_models())),
            ("alpha", 0 <= self.alpha <= 1, "0 <= value <= 1"),
            ("tau", self.tau > 0, "a number > 0"),
            ("margin", self.margin >= 0, "a number >= 0"),
            ("ranking", self.ranking in RANKINGS, ", ".join(RANKINGS)),
            ("study_steps", self.study_steps in STUDY_STEPS, ", ".join(STUDY_STEPS)),
            (
                "unlabelled_batchnorm",
                self.unlabelled_batchnorm in BATCHNORM_MODES,
                ", ".join(BATCHNORM_MODES),
            ),
            ("epochs", self.epochs >= 0, "an integer >= 0"),
            ("lr", self.lr > 0, "a number > 0"),
            ("schedule", self.schedule in SCHEDULES, ", ".join(SCHEDULES)),
            ("momentum", 0 <= self.momentum < 1, "0 <= value < 1"),
            ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("unlabelled_batches_per_epoch", self.unlabelled_batches_per_epoch >= 0, ">= 0"),
        ]
        for field, ok, allowed in checks:
            if not ok:
                value = getattr(self, field)
                where = f"query.options.{field}"
                raise ValueError(f"{where}: {value!r} is not allowed for 'psl'; allowed: {allowed}")


@register
class PeerStudyLearning(QueryStrategy):
    """Select the candidates on which the peer students disagree most (equation 6).

    With a single peer the discrepancy is undefined and the score degrades to the
    entropy of that peer's prediction (section 4.5, "Effect of multiple peers").
    The peers' weights (BatchNorm statistics included) persist through
    :meth:`state_dict` as ``peer<j>.<name>``; the optimizer restarts every ``fit``.
    """

    name = "psl"
    Options = PSLOptions

    def __init__(self, options: Mapping[str, object] | None = None) -> None:
        super().__init__(options)
        self._peers: nn.ModuleList | None = None
        self._pending: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ training

    def fit(self, ctx: RoundContext) -> None:
        """Algorithm 1, lines 4-12 without line 6: per epoch, in-class study (eq. 2) and
        out-of-class study (eqs 3-5), in shared steps or one after the other
        (``study_steps``); the learning rate follows ``schedule`` over the epochs."""
        peers = self._ensure_peers(ctx)
        opts = self.options
        settings = TrainingSection(
            optimizer="sgd",
            lr=opts.lr,
            momentum=opts.momentum,
            weight_decay=opts.weight_decay,
            schedule=opts.schedule,
        )
        optimizer = make_optimizer(peers, settings)
        schedule = make_schedule(optimizer, settings, opts.epochs)
        peers.train()
        for _ in range(opts.epochs):
            in_class = self._in_class_losses(ctx, peers)
            out_of_class = (
                self._out_of_class_losses(ctx, peers)
                if opts.out_of_class and len(peers) > 1
                else iter(())
            )
            if opts.study_steps == "joint":
                losses = (loss + next(out_of_class, 0.0) for loss in in_class)
            else:
                losses = chain(in_class, out_of_class)
            steps = 0
            for loss in losses:
                _step(optimizer, loss)
                steps += 1
            if steps:  # no labelled batch in joint mode: nothing to anneal
                schedule.step()
        peers.eval()

    def _in_class_losses(self, ctx: RoundContext, peers: nn.ModuleList) -> Iterator[torch.Tensor]:
        """Equation 2 summed over the peers, one loss per shuffled labelled batch."""
        opts, view = self.options, ctx.labelled
        for rows in epoch_batches(len(view), opts.batch_size, ctx.generator):
            inputs = view.inputs(rows, ctx.device)
            if opts.augment and wants_augmentation(inputs):
                inputs = crop_flip(inputs, ctx.generator)
            targets = view.targets(rows, ctx.device)
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
        opts, view = self.options, ctx.private_unlabelled
        batches = epoch_batches(len(view), opts.batch_size, ctx.generator)
        if opts.unlabelled_batches_per_epoch:
            batches = batches[: opts.unlabelled_batches_per_epoch]
        for rows in batches:
            inputs = view.inputs(rows, ctx.device)
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
        peers = self._ensure_peers(ctx)
        return torch.stack(
            [predict_logits(peer, view, ctx.device, ctx.batch_size) for peer in peers]
        )

    def sampling_parameters(self) -> int:
        """Trainable parameters of all peers (the paper's Table 1 'sampling model' size)."""
        if self._peers is None:
            raise RuntimeError("psl: the peers do not exist yet; call fit or select first")
        return count_parameters(self._peers)

    # ------------------------------------------------------------------ peers and state

    def _ensure_peers(self, ctx: RoundContext) -> nn.ModuleList:
        """The peers on ``ctx.device``: created on first use from seeds drawn from
        ``ctx.rng`` (global torch RNG untouched), then given any loaded state."""
        if self._peers is None:
            seeds = ctx.rng.integers(0, 2**62, size=self.options.peers)
            self._peers = nn.ModuleList(
                _seeded_model(ctx, self.options.peer_model, int(seed)) for seed in seeds
            )
            if self._pending:
                self._peers.load_state_dict(_unprefixed(self._pending))
                self._pending = {}
        return self._peers.to(ctx.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every peer's weights and buffers as ``peer<j>.<name>`` (empty before any peer)."""
        if self._peers is None:
            return dict(self._pending)
        return {
            f"{STATE_PREFIX}{key}": value.detach().cpu().clone()
            for key, value in self._peers.state_dict().items()
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore peers saved by :meth:`state_dict` (applied when the peers are built)."""
        found = {key[len(STATE_PREFIX) :].split(".", 1)[0] for key in state}
        expected = {str(j) for j in range(self.options.peers)}
        if state and found != expected:
            raise ValueError(
                f"psl: saved state holds peers {sorted(found)}, options ask for "
                f"{self.options.peers} peer(s)"
            )
        if self._peers is None:
            self._pending = dict(state)
        elif state:
            self._peers.load_state_dict(_unprefixed(state))


def _unprefixed(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``peer<j>.<name>`` keys back to the peer list's own ``<j>.<name>``."""
    return {key[len(STATE_PREFIX) :]: value for key, value in state.items()}


def _seeded_model(ctx: RoundContext, name: str, seed: int) -> nn.Module:
    """``ctx.build_model(name)`` initialised from ``seed`` without disturbing global RNGs."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return ctx.build_model(name)


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


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One gradient step on ``loss``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
