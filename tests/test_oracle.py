"""Tests for fedal.oracle: the three noise models, measured flip rates, determinism per
seed and sample, query counting and refusal of protected samples."""

from __future__ import annotations

import numpy as np
import pytest

from fedal.oracle import Oracle, ProtectedSampleError, cyclic_confusion, superclass_confusion

DRAWS = 10_000
NUM_CLASSES = 10
TRUTH = np.random.default_rng(7).integers(0, NUM_CLASSES, size=DRAWS).astype(np.int64)
ALL = np.arange(DRAWS)

SUPERCLASS_OF = [fine // 5 for fine in range(100)]  # CIFAR-100 style: 20 groups of 5
FINE_TRUTH = np.random.default_rng(8).integers(0, 100, size=DRAWS).astype(np.int64)


def _uniform(rate: float, seed: int = 0) -> Oracle:
    return Oracle(TRUTH, NUM_CLASSES, noise="uniform", rate=rate, seed=seed)


def _structured_fine(rate: float) -> Oracle:
    confusion = superclass_confusion(SUPERCLASS_OF)
    return Oracle(FINE_TRUTH, 100, noise="structured", rate=rate, seed=0, confusion=confusion)


def test_no_noise_returns_the_truth() -> None:
    oracle = Oracle(TRUTH, NUM_CLASSES, noise="none", rate=0.5)
    np.testing.assert_array_equal(oracle.label(ALL), TRUTH)


@pytest.mark.parametrize("noise", ["uniform", "structured"])
def test_rate_zero_returns_the_truth(noise: str) -> None:
    oracle = Oracle(TRUTH, NUM_CLASSES, noise=noise, rate=0.0)
    np.testing.assert_array_equal(oracle.label(ALL[:500]), TRUTH[:500])


@pytest.mark.parametrize("rate", [0.2, 0.3])
def test_uniform_flip_rate(rate: float) -> None:
    flipped = _uniform(rate).label(ALL) != TRUTH
    assert abs(flipped.mean() - rate) < 0.02


def test_uniform_flips_spread_over_the_other_classes() -> None:
    answers = _uniform(1.0).label(ALL)
    assert not np.any(answers == TRUTH)  # a flip never returns the true label
    offsets = (answers - TRUTH) % NUM_CLASSES
    counts = np.bincount(offsets, minlength=NUM_CLASSES)
    assert counts[0] == 0
    expected = DRAWS / (NUM_CLASSES - 1)
    assert np.all(np.abs(counts[1:] - expected) < 0.15 * expected)
    for label in range(NUM_CLASSES):  # every class can be confused with every other class
        given = answers[np.equal(TRUTH, label)]
        assert set(given.tolist()) == set(range(NUM_CLASSES)) - {label}


@pytest.mark.parametrize("rate", [0.2, 0.3])
def test_structured_flip_rate(rate: float) -> None:
    flipped = _structured_fine(rate).label(ALL) != FINE_TRUTH
    assert abs(flipped.mean() - rate) < 0.02


def test_structured_flips_stay_within_the_superclass() -> None:
    answers = _structured_fine(1.0).label(ALL)
    coarse = np.asarray(SUPERCLASS_OF)
    assert not np.any(answers == FINE_TRUTH)
    np.testing.assert_array_equal(coarse[answers], coarse[FINE_TRUTH])
    for label in range(0, 100, 17):  # spread over the four other members
        members = {other for other in range(100) if SUPERCLASS_OF[other] == SUPERCLASS_OF[label]}
        assert set(answers[np.equal(FINE_TRUTH, label)].tolist()) == members - {label}


def test_structured_follows_a_configured_confusion_map() -> None:
    confusion = {label: [NUM_CLASSES - 1 - label] for label in range(NUM_CLASSES)}  # mirror
    confusion[3] = [0, 5]
    oracle = Oracle(TRUTH, NUM_CLASSES, noise="structured", rate=1.0, confusion=confusion)
    answers = oracle.label(ALL)
    mirrored = TRUTH != 3
    np.testing.assert_array_equal(answers[mirrored], NUM_CLASSES - 1 - TRUTH[mirrored])
    assert set(answers[~mirrored].tolist()) == {0, 5}


def test_structured_default_map_is_cyclic() -> None:
    answers = Oracle(TRUTH, NUM_CLASSES, noise="structured", rate=1.0).label(ALL)
    np.testing.assert_array_equal(answers, (TRUTH + 1) % NUM_CLASSES)
    assert cyclic_confusion(3) == {0: [1], 1: [2], 2: [0]}


def test_superclass_confusion_map() -> None:
    confusion = superclass_confusion([0, 1, 0, 1, 0])
    assert confusion == {0: [2, 4], 1: [3], 2: [0, 4], 3: [1], 4: [0, 2]}


def test_answers_do_not_depend_on_batches_or_order() -> None:
    indices = ALL[:2000]
    oracle = _uniform(0.3, seed=5)
    whole = oracle.label(indices)
    reversed_answers = oracle.label(indices[::-1])[::-1]
    in_batches = np.concatenate([oracle.label(indices[:700]), oracle.label(indices[700:])])
    fresh = _uniform(0.3, seed=5).label(indices)
    for other in (reversed_answers, in_batches, fresh):
        np.testing.assert_array_equal(whole, other)
    assert np.any(_uniform(0.3, seed=6).label(indices) != whole)


def test_counts_queries() -> None:
    oracle = _uniform(0.2)
    assert oracle.num_queries == 0
    oracle.label([1, 2, 3])
    oracle.label(np.array([3]))
    oracle.label([])
    assert oracle.num_queries == 4


def test_refuses_protected_samples() -> None:
    oracle = Oracle(TRUTH, NUM_CLASSES, protected=[17, 4242])
    with pytest.raises(ProtectedSampleError, match="4242") as caught:
        oracle.label([1, 2, 4242, 3])
    assert "protected" in str(caught.value)
    assert isinstance(caught.value, PermissionError)
    assert oracle.num_queries == 0  # a refused request hands out nothing
    np.testing.assert_array_equal(oracle.label([16, 18]), TRUTH[[16, 18]])


@pytest.mark.parametrize(
    ("noise", "rate", "named"),
    [
        ("loud", 0.1, "oracle.noise"),
        ("uniform", 1.5, "oracle.rate"),
        ("uniform", -0.1, "oracle.rate"),
    ],
)
def test_invalid_settings(noise: str, rate: float, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Oracle(TRUTH, NUM_CLASSES, noise=noise, rate=rate)
