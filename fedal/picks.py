"""What a run's picks were: the helper's accuracy on them and how their classes spread.

Two numbers per run, read from its ``rounds.jsonl`` (the clients' round reports), for
the mechanism check of the PSL paper (Figure 7's federated half): informative picks are
the ones the helper gets wrong, and picks that crowd into a few classes starve the
others of labels.

- ``helper_accuracy_on_picks``: over every query, the share of newly labelled samples
  the client's helper (as trained that round, before the query) predicted as the oracle
  labelled them (``picked-helper-correct`` over ``new-labels``); None for runs recorded
  before the reports carried the count.
- ``pick_class_entropy``: per client, the Shannon entropy (bits) of the class histogram
  of everything it picked over the run (the initial labels are not picks); the mean over
  clients (``log2(classes)`` when every class got the same number).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from scipy.stats import entropy

HELPER_CORRECT = "picked-helper-correct"


def pick_statistics(rows: Iterable[Mapping[str, Any]]) -> dict[str, float | None]:
    """``helper_accuracy_on_picks`` and ``pick_class_entropy`` of one run's round rows."""
    correct = picked = 0
    recorded = False
    histograms: dict[int, np.ndarray] = {}
    for row in rows:
        for client in row["clients"]:
            histogram = np.asarray(client["selected-class-histogram"], dtype=np.int64)
            known = histograms.get(client["client"])
            histograms[client["client"]] = histogram if known is None else known + histogram
            if HELPER_CORRECT in client:
                recorded = True
                correct += client[HELPER_CORRECT]
                picked += client["new-labels"]
    spreads = [entropy(histogram, base=2) for histogram in histograms.values() if histogram.any()]
    return {
        "helper_accuracy_on_picks": correct / picked if recorded and picked else None,
        "pick_class_entropy": float(np.mean(spreads)) if spreads else None,
    }
