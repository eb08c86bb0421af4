"""Paired comparisons over seeds (fedal.statistics) against scipy computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import t, wilcoxon

from fedal.statistics import paired_comparison


def test_mean_interval_and_p_value_match_their_definitions() -> None:
    a = [0.71, 0.74, 0.69, 0.80, 0.77, 0.73]
    b = [0.70, 0.70, 0.68, 0.72, 0.71, 0.69]
    result = paired_comparison(a, b)
    diff = np.subtract(a, b)
    half = t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff))
    assert result.n == 6
    assert result.mean == pytest.approx(diff.mean())
    assert (result.ci_low, result.ci_high) == pytest.approx(
        (diff.mean() - half, diff.mean() + half)
    )
    assert result.wilcoxon_p == pytest.approx(wilcoxon(diff).pvalue)
    assert result.significant  # six positive differences: exact p = 2 / 64
    assert "n.s." not in result.describe()


def test_five_seeds_cannot_reach_significance_two_sided() -> None:
    result = paired_comparison([1, 2, 3, 4, 5], [0, 0, 0, 0, 0])
    assert result.wilcoxon_p == pytest.approx(0.0625)
    assert not result.significant
    assert result.describe().endswith("n.s.")


def test_identical_runs_show_no_difference() -> None:
    result = paired_comparison([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert (result.mean, result.ci_low, result.ci_high, result.wilcoxon_p) == (0, 0, 0, 1)


def test_unequal_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="equal lengths"):
        paired_comparison([1.0, 2.0], [1.0])
