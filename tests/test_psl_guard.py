"""Guards on what PSL's peers learn, on a small learnable problem with fixed seeds.

Six classes of 8x8 images (a bright 3x3 blob whose position is the class, under heavy
pixel noise), 150 labels, 2,000 unlabelled images, 1,850 balanced candidates. With the
default options, out-of-class study must not make a peer collapse (before the fix a
peer fell from ~0.95 to ~0.2 here), and the peers' top picks must be harder for the
teacher than random ones without piling onto one class (before the fix: one class,
picks the teacher always got right). Measured with :func:`fedal.app.diagnose.study`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedal.app.diagnose import StudyReport, StudySplit, study
from fedal.config import TrainingSection
from fedal.models import build_model
from fedal.training import train_supervised
from fedal.views import InputSpec, SampleView

CLASSES = 6
BLOB_CORNERS = ((1, 1), (1, 4), (4, 1), (4, 4), (2, 2), (3, 5))
STUDY = {"peer_model": "cnn", "epochs": 15, "unlabelled_batches_per_epoch": 20}
BUDGET = 60


def blob_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, size=count)
    pixels = rng.normal(100, 45, size=(count, 1, 8, 8))
    for label, (row, col) in enumerate(BLOB_CORNERS):
        pixels[labels == label, :, row : row + 3, col : col + 3] += 70
    return np.clip(pixels, 0, 255).astype(np.uint8), labels.astype(np.int64)


def build(name: str, dropout: float = 0.0) -> torch.nn.Module:
    return build_model(name, in_channels=1, num_classes=CLASSES, image_size=(8, 8), dropout=dropout)


@pytest.fixture(scope="module")
def split() -> StudySplit:
    images, labels = blob_images(4000, seed=123)
    spec = InputSpec((0.4,), (0.2,))
    labelled, unlabelled, candidates = np.split(np.arange(4000), [150, 2150])
    return StudySplit(
        labelled=SampleView(images, labelled, spec, labels[labelled]),
        unlabelled=SampleView(images, unlabelled, spec),
        candidates=SampleView(images, candidates, spec),
        truth=labels[candidates],
        num_classes=CLASSES,
    )


def run_study(split: StudySplit, seed: int, **options: object) -> StudyReport:
    device = torch.device("cpu")
    torch.manual_seed(seed)
    teacher = build("cnn")
    training = TrainingSection(epochs=30, lr=0.05, batch_size=16, schedule="cosine")
    train_supervised(teacher, split.labelled, training, device, torch.Generator().manual_seed(seed))
    return study(
        teacher.eval(),
        split,
        {**STUDY, **options},
        label=str(options),
        seed=seed,
        budget=BUDGET,
        build_model=build,
        device=device,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_default_out_of_class_study_keeps_peers_and_picks_sound(
    split: StudySplit, seed: int
) -> None:
    in_class_only = run_study(split, seed, out_of_class=False)
    studied = run_study(split, seed)
    assert min(in_class_only.peer_accuracy) > 0.9  # the problem is learnable
    assert min(studied.peer_accuracy) > np.mean(in_class_only.peer_accuracy) - 0.1
    picks = studied.picks["psl"]
    assert picks.teacher_accuracy < studied.picks["random"].teacher_accuracy
    assert np.bincount(split.truth, minlength=CLASSES).max() / len(split.truth) < 0.2
    assert picks.largest_class_share <= 0.5


def test_the_guard_catches_the_old_alternating_steps(split: StudySplit) -> None:
    """Negative control: the defaults before the fix (Algorithm 1's separate out-of-class
    steps, the directional ranking, a constant learning rate) fail both guards here."""
    old_defaults = {"study_steps": "alternating", "ranking": "directional", "schedule": "constant"}
    in_class_only = run_study(split, 1, out_of_class=False, schedule="constant")
    old = run_study(split, 1, **old_defaults)
    assert min(old.peer_accuracy) < np.mean(in_class_only.peer_accuracy) - 0.1
    assert old.picks["psl"].largest_class_share > 0.5
