"""Chunked squared distances and k-means++ seeding shared by the diversity strategies.

Core-set, BADGE and k-means all need squared Euclidean distances between many points
and some centres. They are computed from inner products with the expansion

    ||a - b||^2 = ||a||^2 + ||b||^2 - 2 <a, b>,

in blocks of about ``chunk_size^2`` distances, so no ``N x N`` (or ``N x k`` for large
``k``) matrix is ever held; adding one centre costs one pass over the points. The
points live in an :class:`EmbeddingSpace`, which only has to provide squared norms and
inner products: plain vectors (:class:`EuclideanSpace`) or BADGE's factorised gradient
embeddings (``strategies.badge.GradientSpace``); other strategies (LHD) reuse them.

Distances are computed in float64 and values below ``SNAP_TOLERANCE * (||a||^2 +
||b||^2)`` (the expansion's cancellation error) are set to exactly zero, so identical
points are at distance 0 and ties are decided by position, not by rounding noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Protocol, TypeVar

import numpy as np
import torch
from pydantic import Field

SNAP_TOLERANCE = 1e-9
DEFAULT_CHUNK_SIZE = 2048
ChunkSize = Annotated[int, Field(ge=1)]
"""The ``chunk_size`` option of the strategies that compute distances: rows (and centres)
per block of distance computations."""

SpaceT = TypeVar("SpaceT", bound="EmbeddingSpace")


class EmbeddingSpace(Protocol):
    """A set of points known through their squared norms and pairwise inner products."""

    def __len__(self) -> int:
        """Number of points."""
        ...

    @property
    def sq_norms(self) -> torch.Tensor:
        """``||x_i||^2`` for every point, shape ``(N,)`` (computed once)."""
        ...

    def inner(self: SpaceT, rows: slice, other: SpaceT) -> torch.Tensor:
        """``<x_i, y_j>`` for ``i`` in ``rows`` and every ``y_j`` of ``other``: a new tensor
        (callers modify it in place)."""
        ...

    def take(self: SpaceT, index: torch.Tensor) -> SpaceT:
        """The sub-space of the points at ``index``."""
        ...


@dataclass(frozen=True)
class EuclideanSpace:
    """Plain vectors, one per row of ``points`` (``N x d``)."""

    points: torch.Tensor

    def __len__(self) -> int:
        return len(self.points)

    @cached_property
    def sq_norms(self) -> torch.Tensor:
        return (self.points * self.points).sum(dim=1)

    def inner(self, rows: slice, other: EuclideanSpace) -> torch.Tensor:
        return self.points[rows] @ other.points.T

    def take(self, index: torch.Tensor) -> EuclideanSpace:
        return EuclideanSpace(self.points[index])


def as_float64(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device`` in the precision distances are computed in."""
    return tensor.to(device=device, dtype=torch.float64)


def nearest_centres(
    space: SpaceT, centres: SpaceT, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every point: the squared distance to its nearest centre and that centre's index.

    Centres are taken ``chunk_size`` at a time and points in blocks of about
    ``chunk_size^2`` distances; ties go to the lower centre index. Returns
    ``(min_sq_distance, argmin)``, each of shape ``(N,)``.
    """
    norms = space.sq_norms
    best = torch.full((len(space),), float("inf"), dtype=norms.dtype, device=norms.device)
    arg = torch.zeros(len(space), dtype=torch.long, device=norms.device)
    for start in range(0, len(centres), chunk_size):
        block = centres.take(torch.arange(start, min(start + chunk_size, len(centres))))
        step = max(chunk_size, chunk_size * chunk_size // len(block))
        for row in range(0, len(space), step):
            rows = slice(row, row + step)
            value, index = sq_distances(space, block, rows).min(dim=1)
            better = value < best[rows]
            best[rows] = torch.where(better, value, best[rows])
            arg[rows] = torch.where(better, index + start, arg[rows])
    return best, arg


def sq_distances(space: SpaceT, centres: SpaceT, rows: slice = slice(None)) -> torch.Tensor:
    """All squared distances from the points at ``rows`` to ``centres``, one block.

    Shape ``(len(rows), len(centres))``: callers keep the block small (few centres, or
    few rows). Cancellation noise is snapped to zero (see the module docstring).
    """
    scale = space.sq_norms[rows, None] + centres.sq_norms[None, :]
    sq = space.inner(rows, centres).mul_(-2.0).add_(scale)
    return sq.masked_fill_(sq <= scale.mul_(SNAP_TOLERANCE), 0.0)


def sq_distances_to(
    space: SpaceT, point: int | torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> torch.Tensor:
    """Squared distances from every point of ``space`` to its point ``point`` (an index,
    or a one-element index tensor that may stay on the device), ``(N,)``.

    The running-minimum update of farthest-first traversal and k-means++: one pass over
    the points in blocks of ``chunk_size^2`` rows.
    """
    index = point.reshape(1) if isinstance(point, torch.Tensor) else torch.tensor([point])
    centre = space.take(index)
    step = chunk_size * chunk_size
    if len(space) <= step:
        return sq_distances(space, centre)[:, 0]
    blocks = [
        sq_distances(space, centre, slice(row, row + step))[:, 0]
        for row in range(0, len(space), step)
    ]
    return torch.cat(blocks)


def kmeans_plus_plus(
    space: EmbeddingSpace,
    count: int,
    first: int,
    rng: np.random.Generator,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): ``count`` distinct point indices.

    Starts from ``first``; each next centre is drawn with probability proportional to
    ``D^2(x)``, the squared distance to the nearest centre chosen so far, kept as a
    running minimum updated with one new centre at a time. Chosen points have
    ``D^2 = 0`` and are never drawn again. Once every remaining ``D^2`` is zero (only
    duplicates of chosen points are left) the rest is filled uniformly at random from
    the unchosen points.

    The draws stay on the points' device: the ``count - 1`` uniforms are taken from
    ``rng`` up front (the same numbers, in the same order, as one draw per centre) and
    each centre is found by a search in the cumulative ``D^2``, so no value returns to
    the host until the end (on a GPU a round trip per centre costs more than the
    distances). The fill, when needed, draws from ``rng`` after those uniforms.
    """
    count = min(count, len(space))
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    min_sq = sq_distances_to(space, first, chunk_size)
    device, dtype = min_sq.device, min_sq.dtype
    uniforms = torch.from_numpy(rng.random(count - 1)).to(device=device, dtype=dtype)
    chosen = torch.full((count,), first, dtype=torch.long, device=device)
    totals = torch.empty(count - 1, dtype=dtype, device=device)
    for step in range(1, count):
        # exactly zero, whatever the rounding: never drawn again
        min_sq.index_fill_(0, chosen[step - 1 : step], 0.0)
        cumulative = torch.cumsum(min_sq, dim=0)
        totals[step - 1] = cumulative[-1]
        target = uniforms[step - 1 : step] * cumulative[-1:]
        pick = torch.searchsorted(cumulative, target, right=True).clamp_(max=len(space) - 1)
        chosen[step : step + 1] = pick
        min_sq = torch.minimum(min_sq, sq_distances_to(space, pick, chunk_size))
    picks = chosen.cpu().numpy()
    exhausted = np.flatnonzero(totals.cpu().numpy() <= 0.0)
    if len(exhausted):  # the draws from the first exhausted step on are void
        return _fill_at_random(picks[: exhausted[0] + 1], len(space), count, rng)
    return picks


def _fill_at_random(
    chosen: np.ndarray, size: int, count: int, rng: np.random.Generator
) -> np.ndarray:
    """``chosen`` followed by ``count - len(chosen)`` random distinct unchosen indices."""
    rest = np.setdiff1d(np.arange(size), chosen)
    extra = rng.choice(rest, size=count - len(chosen), replace=False)
    return np.concatenate([chosen, extra]).astype(np.int64)
