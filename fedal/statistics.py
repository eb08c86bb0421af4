"""Paired comparisons over seeds: mean difference, its 95% t interval, Wilcoxon p-value.

Runs of two strategies that share a seed share their data split, initial labels and
model initialisation, so their results are compared seed by seed (paired), with
scipy's ``ttest_rel`` for the confidence interval and ``wilcoxon`` (signed-rank, two
sided) for the p-value. With n paired seeds the smallest two-sided Wilcoxon p-value is
2 / 2^n: 0.0625 for 5 seeds, so at least 6 seeds are needed to reach p < 0.05.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class PairedComparison:
    """``values - reference`` over paired seeds."""

    n: int
    mean: float
    ci_low: float
    ci_high: float
    wilcoxon_p: float

    @property
    def significant(self) -> bool:
        """Wilcoxon p below 0.05."""
        return self.wilcoxon_p < SIGNIFICANCE

    def describe(self, digits: int = 3) -> str:
        """``+0.012 [-0.004, +0.028] p=0.250 n.s.`` (no "n.s." when significant)."""
        verdict = "" if self.significant else " n.s."
        return (
            f"{self.mean:+.{digits}f} [{self.ci_low:+.{digits}f}, {self.ci_high:+.{digits}f}] "
            f"p={self.wilcoxon_p:.3f}{verdict}"
        )


def paired_comparison(
    values: Sequence[float], reference: Sequence[float], confidence: float = 0.95
) -> PairedComparison:
    """Mean paired difference, its t confidence interval and the Wilcoxon p-value.

    Identical pairs give p = 1 (no evidence of a difference); fewer than two pairs give
    an unbounded interval and p = 1.
    """
    from scipy.stats import ttest_rel, wilcoxon

    a, b = np.asarray(values, dtype=float), np.asarray(reference, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs equal lengths, got {len(a)} and {len(b)}")
    diff = a - b
    mean = float(diff.mean()) if diff.size else math.nan
    if diff.size < 2 or not np.any(diff):
        spread = 0.0 if diff.size >= 2 else math.inf
        return PairedComparison(len(diff), mean, mean - spread, mean + spread, 1.0)
    if np.all(diff == diff[0]):
        low = high = mean
    else:
        interval = ttest_rel(a, b).confidence_interval(confidence)
        low, high = float(interval.low), float(interval.high)
    p_value = float(wilcoxon(diff).pvalue)
    return PairedComparison(len(diff), mean, low, high, p_value)
