"""The query-strategy contract (DESIGN section 5), checked for every registered strategy.

Parametrised over ``strategies.available()`` at collection time: a strategy gets the
whole suite by registering itself. Every run does what the client runtime does: build
the strategy with default options, ``fit(ctx)``, then ``select(ctx, budget)``; only
LHD's training is capped (its defaults train thousands of steps until its EMA settles,
which the contract does not depend on; tests/test_lhd.py runs the defaults).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pytest
import torch
from strategy_context import make_context

from fedal.compute import compute_context
from fedal.config import TrainingSection
from strategies import available, build_strategy, strategy_class
from strategies.base import QueryStrategy, RoundContext

NAMES = available()
SHORTER_TRAINING = {"lhd": {"max_steps": 30}}
SEED_SENSITIVE = ["random", "badge", "kmeans"]
SIZES = {"labelled": 12, "candidates": 24, "protected": 12}
BUDGET = 5


def tiny_context(**overrides: object) -> RoundContext:
    """A small context; ``overrides`` go to :func:`make_context`."""
    return make_context(**{**SIZES, **overrides})


def build(name: str) -> QueryStrategy:
    """The strategy with its default options (shorter training where listed)."""
    return build_strategy(name, SHORTER_TRAINING.get(name))


def run(
    name: str,
    ctx: RoundContext,
    budget: int = BUDGET,
    state: Mapping[str, torch.Tensor] | None = None,
) -> tuple[np.ndarray, QueryStrategy]:
    """One query round as the runtime does it: (load state), fit, select."""
    strategy = build(name)
    if state is not None:
        strategy.load_state_dict(state)
    strategy.fit(ctx)
    return strategy.select(ctx, budget), strategy


def protected_rows(ctx: RoundContext) -> np.ndarray:
    """Rows of the shared array that are neither labelled nor candidates."""
    visible = np.concatenate([ctx.labelled.positions, ctx.candidates.positions])
    return np.setdiff1d(np.arange(len(ctx.candidates.source)), visible)


def assert_valid(picks: np.ndarray, ctx: RoundContext, budget: int) -> None:
    """Exactly min(budget, n) distinct int64 candidate positions, none protected."""
    assert isinstance(picks, np.ndarray)
    assert picks.dtype == np.int64
    assert picks.shape == (min(budget, len(ctx.candidates)),)
    assert len(np.unique(picks)) == len(picks)
    if len(picks):
        assert picks.min() >= 0
        assert picks.max() < len(ctx.candidates)
    chosen_rows = ctx.candidates.positions[picks]
    assert not np.isin(chosen_rows, protected_rows(ctx)).any()


def with_protected_pixels_changed(ctx: RoundContext) -> RoundContext:
    """The same context over a copy of the data whose protected images are inverted."""
    source = ctx.candidates.source.copy()
    protected = protected_rows(ctx)
    source[protected] = 255 - source[protected]
    views = {
        field: dataclasses.replace(getattr(ctx, field), source=source)
        for field in ("labelled", "candidates", "private_unlabelled")
    }
    return dataclasses.replace(ctx, **views)


def assert_states_equal(
    first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor]
) -> None:
    """Same keys and equal tensors."""
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert torch.equal(value, second[key]), key


# ------------------------------------------------------------------------ selection


@pytest.mark.parametrize("name", NAMES)
def test_budgets_give_exactly_min_budget_pool_distinct_positions(name: str) -> None:
    ctx = tiny_context()
    strategy = build(name)
    strategy.fit(ctx)
    pool = len(ctx.candidates)
    for budget in (0, 1, BUDGET, pool, pool + 7):
        assert_valid(strategy.select(ctx, budget), ctx, budget)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_same_selection(name: str) -> None:
    first, _ = run(name, tiny_context(seed=3))
    second, _ = run(name, tiny_context(seed=3))
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("name", NAMES)
def test_fit_and_select_run_on_the_cuda_compute_path(name: str) -> None:
    """The CUDA compute path (fedal.compute), here on the CPU: every strategy trains
    and scores under bf16 autocast with its networks in channels_last and still selects
    validly (client rounds under each switch are checked for reproducibility in
    tests/test_client_round.py)."""
    ctx = tiny_context(seed=5)
    cuda_path = TrainingSection(bf16="always", channels_last="always")
    with compute_context(torch.device("cpu"), cuda_path):
        picks, _ = run(name, ctx)
    assert_valid(picks, ctx, BUDGET)


@pytest.mark.parametrize("name", SEED_SENSITIVE)
def test_different_seeds_change_the_selection(name: str) -> None:
    selections = {tuple(run(name, tiny_context(seed=seed))[0]) for seed in range(4)}
    assert len(selections) > 1


# ------------------------------------------------------------------------ edge cases


@pytest.mark.parametrize("name", NAMES)
def test_pool_of_one(name: str) -> None:
    ctx = tiny_context(candidates=1)
    picks, _ = run(name, ctx)
    assert_valid(picks, ctx, BUDGET)
    np.testing.assert_array_equal(picks, [0])


@pytest.mark.parametrize("name", NAMES)
def test_labelled_set_with_one_class(name: str) -> None:
    ctx = tiny_context(labelled_classes=1)
    assert set(ctx.labelled.labels.tolist()) == {0}
    assert_valid(run(name, ctx)[0], ctx, BUDGET)


@pytest.mark.parametrize("name", NAMES)
def test_identical_candidates(name: str) -> None:
    ctx = tiny_context(identical_candidates=True)
    assert_valid(run(name, ctx)[0], ctx, BUDGET)


@pytest.mark.parametrize("name", NAMES)
def test_empty_labelled_set_selects_or_raises_a_clear_error(name: str) -> None:
    ctx = tiny_context(labelled=0)
    if strategy_class(name).needs_labelled:
        with pytest.raises(ValueError):
            run(name, ctx)
    else:
        assert_valid(run(name, ctx)[0], ctx, BUDGET)


# ------------------------------------------------------------------------ private state


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trips(name: str) -> None:
    _, original = run(name, tiny_context(seed=5))
    state = original.state_dict()
    restored = build(name)
    restored.load_state_dict(state)
    assert_states_equal(restored.state_dict(), state)

    next_round, same_next_round = tiny_context(seed=6), tiny_context(seed=6)
    original.fit(next_round)
    restored.fit(same_next_round)
    np.testing.assert_array_equal(
        original.select(next_round, BUDGET), restored.select(same_next_round, BUDGET)
    )


@pytest.mark.parametrize("name", NAMES)
def test_own_sampling_model_size_is_reported_after_a_round(name: str) -> None:
    _, strategy = run(name, tiny_context(seed=5))
    own = strategy.sampling_parameters()
    assert own is None or (isinstance(own, int) and own > 0)
    if strategy.state_dict():  # a strategy with private networks scores with them
        assert own is not None


# ------------------------------------------------------------------------ protection


@pytest.mark.parametrize("name", NAMES)
def test_selection_ignores_protected_pixels(name: str) -> None:
    ctx = tiny_context(seed=7, private_includes_protected=False)
    changed = with_protected_pixels_changed(tiny_context(seed=7, private_includes_protected=False))
    rows = protected_rows(ctx)
    assert len(rows) > 0
    assert not np.array_equal(ctx.candidates.source[rows], changed.candidates.source[rows])
    np.testing.assert_array_equal(run(name, ctx)[0], run(name, changed)[0])
