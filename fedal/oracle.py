"""The annotator: returns labels for requested samples, optionally noisy.

Noise models
- ``none``: the true label.
- ``uniform``: with probability ``rate`` the label is flipped to a different class drawn
  uniformly (symmetric label noise).
- ``structured``: with probability ``rate`` the label is flipped to a *confusable* class:
  within the same CIFAR-100 superclass when the dataset has superclasses, otherwise
  along a confusion map ``class -> confusable classes`` (default: ``c -> c+1 mod C``).

Answers are deterministic per (seed, sample): asking twice gives the same label, and the
answer for one sample does not depend on which other samples were asked for.

A client round talks to its annotator through :class:`Annotator`: the simulated
:class:`Oracle` answers every request at once; a person (:mod:`fedal.human_oracle`)
answers when they can, so a round also takes the answers that came in since the last one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, get_args

import numpy as np

from fedal.choices import NoiseModel

NOISE_MODELS = get_args(NoiseModel)


class ProtectedSampleError(PermissionError):
    """The oracle was asked to label a protected sample."""


def _no_indices() -> np.ndarray:
    return np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class Answers:
    """Labels given for samples (aligned int64 arrays; empty when there are none)."""

    indices: np.ndarray = field(default_factory=_no_indices)
    labels: np.ndarray = field(default_factory=_no_indices)


class Annotator(Protocol):
    """Who labels a client's picks. ``labelled`` is the client's labelled set: what is
    already in the pool is never answered again."""

    def outstanding(self, labelled: np.ndarray) -> np.ndarray:
        """Samples asked for whose answers are not in the pool yet (not candidates)."""
        ...

    def answers(self, labelled: np.ndarray) -> Answers:
        """Answers given since the pool last took answers (to add to it now)."""
        ...

    def ask(self, indices: np.ndarray, round_number: int) -> Answers:
        """Ask for labels of ``indices`` in ``round_number``; returns those given so far."""
        ...


def superclass_confusion(superclass_of: Sequence[int]) -> dict[int, list[int]]:
    """Confusion map where each class is confusable with the other classes of its superclass."""
    members: dict[int, list[int]] = {}
    for fine, coarse in enumerate(superclass_of):
        members.setdefault(coarse, []).append(fine)
    return {
        fine: [other for other in members[coarse] if other != fine]
        for fine, coarse in enumerate(superclass_of)
    }


def cyclic_confusion(num_classes: int) -> dict[int, list[int]]:
    """Default confusion map for datasets without superclasses: ``c -> (c + 1) mod C``."""
    return {label: [(label + 1) % num_classes] for label in range(num_classes)}


class Oracle:
    """Labels samples of one training set on request; refuses protected samples.

    ``protected`` holds global sample indices the oracle must never label (a client's
    protected set). ``num_queries`` counts every label handed out.
    """

    def __init__(
        self,
        true_labels: np.ndarray,
        num_classes: int,
        *,
        noise: str = "none",
        rate: float = 0.0,
        seed: int = 0,
        protected: Iterable[int] = (),
        confusion: Mapping[int, Sequence[int]] | None = None,
    ) -> None:
        if noise not in NOISE_MODELS:
            raise ValueError(
                f"oracle.noise: unknown noise model {noise!r}; allowed: {NOISE_MODELS}"
            )
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"oracle.rate: {rate} outside [0, 1]")
        self.true_labels = true_labels
        self.num_classes = num_classes
        self.noise = noise
        self.rate = rate if noise != "none" else 0.0
        self.seed = seed
        self.protected = frozenset(int(index) for index in protected)
        self.confusion = {
            int(label): [int(other) for other in others]
            for label, others in (confusion or cyclic_confusion(num_classes)).items()
        }
        self.num_queries = 0

    def label(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Labels for global sample ``indices`` (noise applied per the noise model)."""
        requested = np.asarray(indices, dtype=np.int64)
        for index in requested:
            if int(index) in self.protected:
                raise ProtectedSampleError(
                    f"oracle refused sample {int(index)}: it is protected and may never be labelled"
                )
        answers = np.array([self._answer(int(index)) for index in requested], dtype=np.int64)
        self.num_queries += len(requested)
        return answers

    def outstanding(self, labelled: np.ndarray) -> np.ndarray:
        """Nothing: the simulated oracle answers every request at once."""
        return _no_indices()

    def answers(self, labelled: np.ndarray) -> Answers:
        """No answers: nothing is ever answered late."""
        return Answers()

    def ask(self, indices: np.ndarray, round_number: int) -> Answers:
        """Every requested label, now (:meth:`label`)."""
        return Answers(np.asarray(indices, dtype=np.int64), self.label(indices))

    def _answer(self, index: int) -> int:
        truth = int(self.true_labels[index])
        if self.rate == 0.0:
            return truth
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        if rng.random() >= self.rate:
            return truth
        if self.noise == "uniform":
            return int((truth + rng.integers(1, self.num_classes)) % self.num_classes)
        choices = self.confusion.get(truth, [])
        return int(rng.choice(choices)) if choices else truth
