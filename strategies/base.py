"""The query-strategy contract (DESIGN section 5).

A strategy receives a :class:`RoundContext` and returns positions into the candidate
view. It never sees Flower; what it keeps across rounds goes through ``state_dict``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from fedal.choices import ScoringModel
from fedal.models import Classifier
from fedal.schema import Schema, validated
from fedal.views import SampleView


@dataclass(frozen=True)
class RoundContext:
    """Everything a query strategy may use on one client in one round.

    - ``model``: the scoring model (the locally trained helper, or the global model as
      received, per ``query.scoring_model``; the helper when it is ``"both"``), a
      :class:`fedal.models.Classifier`: strategies use its logits, its embedding
      (``embed``) and head (``head``), and its dropout layer (``dropout``). Read-only:
      copy it before training.
    - ``global_model``: the global model as received this round, set only when
      ``query.scoring_model = "both"`` (``model`` is then the helper after training);
      ``None`` otherwise. Read-only, like ``model``.
    - ``labelled``: labelled, non-protected samples with the labels the oracle returned.
    - ``candidates``: non-protected unlabelled samples; ``select`` indexes this view.
    - ``private_unlabelled``: the unlabelled data a strategy's *private* models may train
      on (all unlabelled incl. protected when ``query.private_data = "all"``, otherwise
      the candidates only). Never used to pick samples.
    - ``build_model(name, dropout)``: builds a fresh private network for this dataset.
    - ``generator``: a seeded torch generator (CPU); ``rng``: a seeded numpy generator.
    """

    model: Classifier
    labelled: SampleView
    candidates: SampleView
    private_unlabelled: SampleView
    num_classes: int
    device: torch.device
    generator: torch.Generator
    rng: np.random.Generator
    round: int
    batch_size: int
    build_model: Callable[..., Classifier]
    global_model: Classifier | None = None


class NoOptions(Schema):
    """The options of a strategy that has none: every option name is rejected."""


class QueryStrategy(ABC):
    """Base class: subclasses set ``name`` and an ``Options`` schema, implement ``select``.

    ``Options`` fields are the strategy's own configuration (``[query.options]`` in an
    experiment config), validated by :func:`fedal.schema.validated`: choices are
    ``Literal`` types, ranges ``Field`` bounds, rules across fields model validators.
    A bad or unknown option fails with one line naming the field, the value and what is
    allowed. The validated options are ``self.options``.

    ``scoring_models`` lists the ``query.scoring_model`` values the strategy works with
    (checked before a run starts). By default all three: under ``"both"`` a strategy that
    scores with one model uses ``model``, the helper, so one sweep can run it beside
    strategies that compare the global model as received with the helper after training
    (those allow only ``"both"``).
    """

    name: ClassVar[str]
    Options: ClassVar[type[Schema]] = NoOptions
    needs_labelled: ClassVar[bool] = False
    needs_dropout: ClassVar[bool] = False  # Monte-Carlo dropout: model.dropout must be > 0
    scoring_models: ClassVar[tuple[ScoringModel, ...]] = ("helper", "global", "both")

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = self.parse_options(options or {})

    @classmethod
    def parse_options(cls, raw: Mapping[str, Any]) -> Schema:
        """``raw`` validated as this strategy's ``Options`` (a one-line ConfigError if not)."""
        return validated(cls.Options, raw, "query.options")

    def fit(self, ctx: RoundContext) -> None:  # noqa: B027 - optional hook
        """Train private models before selection (optional)."""

    @abstractmethod
    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        """Return ``min(budget, len(ctx.candidates))`` distinct positions into candidates."""

    def sampling_parameters(self) -> int | None:
        """Trainable parameters of the strategy's own sampling model(s), once fitted or
        used; ``None`` when it scores with the helper (or uses no model)."""
        return None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Private state that must persist across rounds (flat name -> tensor)."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:  # noqa: B027
        """Restore what :meth:`state_dict` returned."""


def top_k(scores: torch.Tensor | np.ndarray, budget: int) -> np.ndarray:
    """Positions of the ``budget`` largest scores; ties broken by the lower position."""
    values = np.asarray(
        scores.detach().float().cpu() if isinstance(scores, torch.Tensor) else scores
    )
    budget = min(budget, len(values))
    order = np.argsort(-values, kind="stable")
    return order[:budget].astype(np.int64)


def global_and_local(ctx: RoundContext, name: str) -> tuple[Classifier, Classifier]:
    """``(global model as received, helper after training)`` of a ``"both"`` context; a
    clear error naming strategy ``name`` when the context has one model only."""
    if ctx.global_model is None:
        raise ValueError(
            f"{name}: needs the global model as received and the local helper "
            "(query.scoring_model = 'both')"
        )
    return ctx.global_model, ctx.model
