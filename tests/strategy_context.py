"""Tiny, real round contexts for query-strategy tests (no mocks: real views and models)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fedal.models import Classifier, build_model
from fedal.views import InputSpec, SampleView
from strategies.base import RoundContext

IMAGE_SHAPE = (1, 8, 8)


def tiny_images(count: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images whose mean brightness depends on the class (learnable), plus labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=count).astype(np.int64)
    base = (labels[:, None, None, None] * (200 // max(1, num_classes - 1))).astype(np.int64)
    noise = rng.integers(0, 56, size=(count, *IMAGE_SHAPE))
    return np.clip(base + noise, 0, 255).astype(np.uint8), labels


def unbalanced_blobs(count: int = 48) -> SampleView:
    """Labelled 2-D features: three Gaussian blobs holding 60%, 30% and 10% of them."""
    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=count, p=[0.6, 0.3, 0.1]).astype(np.int64)
    features = (rng.normal(size=(count, 2)) + 2.0 * np.eye(3)[labels, :2]).astype(np.float32)
    return SampleView(features, np.arange(count), InputSpec((), ()), labels)


def feature_context(
    model: Classifier,
    features: np.ndarray,
    labels: np.ndarray,
    first_candidate: int,
    *,
    seed: int = 0,
    batch_size: int = 64,
    build_model: Callable[..., Classifier] | None = None,
    global_model: Classifier | None = None,
) -> RoundContext:
    """A two-class context over raw feature rows (no normalisation): rows
    ``[0, len(labels))`` labelled with ``labels``, rows from ``first_candidate`` on the
    candidates (and the private unlabelled view); ``build_model`` defaults to ``model``."""
    spec = InputSpec(mean=(), std=())
    candidate_rows = np.arange(first_candidate, len(features))
    return RoundContext(
        model=model,
        labelled=SampleView(features, np.arange(len(labels)), spec, labels),
        candidates=SampleView(features, candidate_rows, spec),
        private_unlabelled=SampleView(features, candidate_rows, spec),
        num_classes=2,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed),
        rng=np.random.default_rng(seed),
        round=1,
        batch_size=batch_size,
        build_model=build_model or (lambda *args, **kwargs: model),
        global_model=global_model,
    )


def make_context(
    *,
    labelled: int = 20,
    candidates: int = 40,
    protected: int = 30,
    num_classes: int = 4,
    seed: int = 0,
    helper: str = "cnn",
    dropout: float = 0.3,
    labelled_classes: int | None = None,
    identical_candidates: bool = False,
    private_includes_protected: bool = True,
) -> RoundContext:
    """A context over ``labelled + candidates + protected`` tiny images.

    Rows ``[0, labelled)`` are labelled, the next ``candidates`` rows are candidates,
    the last ``protected`` rows are protected (in ``private_unlabelled`` only when
    ``private_includes_protected``). ``model`` (the helper) and ``global_model`` are two
    differently initialised ``helper`` networks, as under ``query.scoring_model = "both"``
    (strategies scoring with one model ignore ``global_model``).
    """
    total = labelled + candidates + protected
    images, labels = tiny_images(total, num_classes, seed=1234)
    if labelled_classes is not None:
        labels[:labelled] = labels[:labelled] % labelled_classes
    if identical_candidates and candidates:
        images[labelled : labelled + candidates] = images[labelled]
    spec = InputSpec(mean=(0.5,), std=(0.25,))
    rows = np.arange(total)
    labelled_rows = rows[:labelled]
    candidate_rows = rows[labelled : labelled + candidates]
    private_rows = rows[labelled:] if private_includes_protected else candidate_rows

    def build(name: str, dropout: float = 0.0) -> torch.nn.Module:
        return build_model(
            name,
            in_channels=IMAGE_SHAPE[0],
            num_classes=num_classes,
            image_size=IMAGE_SHAPE[1:],
            dropout=dropout,
        )

    torch.manual_seed(0)
    model = build(helper, dropout).eval()
    with torch.random.fork_rng():  # the caller's torch RNG continues as after ``model``
        torch.manual_seed(1)
        global_model = build(helper, dropout).eval()
    return RoundContext(
        model=model,
        labelled=SampleView(images, labelled_rows, spec, labels[labelled_rows]),
        candidates=SampleView(images, candidate_rows, spec),
        private_unlabelled=SampleView(images, private_rows, spec),
        num_classes=num_classes,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed),
        rng=np.random.default_rng(seed),
        round=1,
        batch_size=16,
        build_model=build,
        global_model=global_model,
    )
