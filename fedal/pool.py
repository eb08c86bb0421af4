"""One client's sample pools: protected, candidate and labelled, plus the label ledger.

Invariants (DESIGN section 4), enforced on every change:
- the three sets are disjoint and together form the client's shard;
- candidates never include a protected sample; protected samples are never labelled;
- the labelled set never shrinks, and the labels given are kept as returned (noise too).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class PoolInvariantError(RuntimeError):
    """An operation would break a pool invariant."""


@dataclass(frozen=True)
class LedgerEntry:
    """One labelling: which client asked for which sample in which round, and the answer."""

    client: int
    round: int
    index: int
    label: int


def split_protected(
    shard: np.ndarray, protected_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Boolean mask over ``shard`` marking ``round(protected_fraction * len)`` samples."""
    count = round(protected_fraction * len(shard))
    mask = np.zeros(len(shard), dtype=bool)
    mask[rng.choice(len(shard), size=count, replace=False)] = True
    return mask


@dataclass
class ClientPool:
    """Labelled / candidate / protected global indices of one client's shard."""

    client: int
    shard: np.ndarray
    protected_mask: np.ndarray
    labelled: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    labels: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    ledger: list[LedgerEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.shard = np.asarray(self.shard, dtype=np.int64)
        self.protected_mask = np.asarray(self.protected_mask, dtype=bool)
        self.labelled = np.asarray(self.labelled, dtype=np.int64)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.shard) != len(self.protected_mask):
            raise PoolInvariantError("protected mask and shard differ in length")
        if len(np.unique(self.shard)) != len(self.shard):
            raise PoolInvariantError("shard holds a sample twice")
        self._check_labelled(self.labelled)

    @property
    def protected(self) -> np.ndarray:
        """Global indices that may never be labelled or leave the client."""
        return self.shard[self.protected_mask]

    @property
    def candidates(self) -> np.ndarray:
        """Non-protected, not yet labelled global indices (sorted)."""
        open_samples = self.shard[~self.protected_mask]
        return np.setdiff1d(open_samples, self.labelled, assume_unique=True)

    @property
    def unlabelled(self) -> np.ndarray:
        """All unlabelled global indices, protected included (sorted)."""
        return np.setdiff1d(self.shard, self.labelled, assume_unique=True)

    def _check_labelled(self, indices: np.ndarray) -> None:
        if len(np.unique(indices)) != len(indices):
            raise PoolInvariantError("a sample would be labelled twice")
        protected = np.intersect1d(indices, self.protected)
        if len(protected):
            raise PoolInvariantError(f"protected sample {int(protected[0])} cannot be labelled")
        outside = np.setdiff1d(indices, self.shard)
        if len(outside):
            raise PoolInvariantError(
                f"sample {int(outside[0])} is not in client {self.client}'s shard"
            )

    def add_labels(self, indices: np.ndarray, labels: np.ndarray, round_number: int) -> None:
        """Add oracle answers for candidate ``indices``; records each in the ledger."""
        indices = np.asarray(indices, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        if len(indices) != len(labels):
            raise PoolInvariantError("indices and labels differ in length")
        # In the shard, not protected, not labelled before (or twice): that is a candidate.
        self._check_labelled(np.concatenate([self.labelled, indices]))
        self.labelled = np.concatenate([self.labelled, indices])
        self.labels = np.concatenate([self.labels, labels])
        self.ledger.extend(
            LedgerEntry(self.client, round_number, int(index), int(label))
            for index, label in zip(indices, labels, strict=True)
        )

    def ledger_array(self) -> np.ndarray:
        """The ledger as an int64 array of rows (client, round, index, label)."""
        rows = [(e.client, e.round, e.index, e.label) for e in self.ledger]
        return np.asarray(rows, dtype=np.int64).reshape(-1, 4)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to restore this pool (for Flower state or a checkpoint)."""
        return {
            "shard": self.shard,
            "protected_mask": self.protected_mask.astype(np.uint8),
            "labelled": self.labelled,
            "labels": self.labels,
            "ledger": self.ledger_array(),
        }

    @classmethod
    def from_arrays(cls, client: int, arrays: dict[str, np.ndarray]) -> ClientPool:
        """Inverse of :meth:`to_arrays`."""
        ledger = [LedgerEntry(*(int(v) for v in row)) for row in arrays["ledger"].reshape(-1, 4)]
        return cls(
            client=client,
            shard=arrays["shard"],
            protected_mask=arrays["protected_mask"].astype(bool),
            labelled=arrays["labelled"],
            labels=arrays["labels"],
            ledger=ledger,
        )
