"""One federated active-learning round on one client (DESIGN section 3), without Flower.

1. Load the global task-model weights into the helper.
2. Train the helper on the labelled set (non-protected data only).
3. On query rounds: ``strategy.fit`` then ``strategy.select``; the oracle labels the
   picks; the pool and ledger grow. With a person as the oracle
   (:mod:`fedal.human_oracle`) the answers given since the last round join the pool first
   (before training), images still waiting for an answer are not candidates, and the
   picks answered by query time join the pool in this round.
4. Return the helper's weights (trained *before* this round's query) and metrics.

With SCAFFOLD (Karimireddy et al. 2020, Algorithm 1) step 2 corrects every gradient by
c - c_i and step 4 also returns the control update delta c_i (option II, line 12).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from clients.protocol import RoundReply
from fedal.compute import place
from fedal.config import ExperimentConfig
from fedal.datasets import LoadedDataset
from fedal.ema import EmaModel
from fedal.finetune import finetune_on_confident
from fedal.kcfu import frozen_copy
from fedal.models import build_for_dataset
from fedal.oracle import Annotator
from fedal.pool import ClientPool
from fedal.reports import ClientCost, ClientReport
from fedal.shards import ROUND_STREAM, client_rng, make_oracle
from fedal.training import (
    EvalStats,
    Objective,
    TrainStats,
    cross_entropy,
    evaluate,
    helper_objective,
    train_supervised,
)
from fedal.views import SampleView
from strategies import QueryStrategy, RoundContext
from strategies.scoring import InferenceClock, inference_clock


class SelectionError(RuntimeError):
    """A query strategy broke the selection contract."""


def round_seed(config: ExperimentConfig, client: int, server_round: int) -> int:
    """Seed of everything random on ``client`` in ``server_round``."""
    rng = client_rng(config.experiment.seed, client, ROUND_STREAM, server_round)
    return int(rng.integers(0, 2**62))


def query_budget(
    config: ExperimentConfig, pool: ClientPool, server_round: int, waiting: int = 0
) -> int:
    """Labels to ask for this round: 0 off query rounds, capped by max_labels_per_client
    (which the ``waiting`` labels asked for but not answered yet count against)."""
    query = config.query
    if server_round % query.query_every != 0:
        return 0
    budget = query.budget_per_query
    if query.max_labels_per_client > 0:
        budget = min(budget, max(0, query.max_labels_per_client - len(pool.labelled) - waiting))
    return budget


def check_selection(picks: np.ndarray, budget: int, pool_size: int, name: str) -> np.ndarray:
    """Enforce the contract: exactly min(budget, pool) distinct valid positions."""
    picks = np.asarray(picks, dtype=np.int64).reshape(-1)
    expected = min(budget, pool_size)
    if len(picks) != expected or len(np.unique(picks)) != len(picks):
        raise SelectionError(
            f"strategy '{name}' returned {len(picks)} positions ({len(np.unique(picks))} "
            f"distinct), expected {expected} distinct"
        )
    if len(picks) and (picks.min() < 0 or picks.max() >= pool_size):
        raise SelectionError(f"strategy '{name}' returned a position outside the candidates")
    return picks


@dataclass(frozen=True)
class ControlVariates:
    """SCAFFOLD's control variates for one client round, by trainable weight name: the
    server's c (as received) and this client's c_i (zeros before its first round)."""

    server: dict[str, torch.Tensor]
    client: dict[str, torch.Tensor]

    def correction(self, model: torch.nn.Module) -> list[torch.Tensor]:
        """c - c_i for each trainable parameter of ``model``, in ``parameters()`` order
        (Algorithm 1, line 10)."""
        return [
            self.server[name] - self.client[name]
            for name, parameter in model.named_parameters()
            if parameter.requires_grad
        ]


def zero_control(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A control variate of zeros for every trainable weight of ``model`` (on the CPU)."""
    return {
        name: torch.zeros_like(parameter, device="cpu")
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }


def control_delta(
    control: ControlVariates,
    start: dict[str, torch.Tensor],
    trained: dict[str, torch.Tensor],
    steps: int,
    lr: float,
) -> dict[str, torch.Tensor]:
    """delta c_i = c_i+ - c_i with option II of Algorithm 1 (line 12),
    c_i+ = c_i - c + (x - y_i) / (K eta_l), i.e. delta c_i = (x - y_i) / (K eta_l) - c:
    ``start`` is x (the global weights received), ``trained`` is y_i after ``steps`` = K
    optimiser steps at learning rate ``lr`` = eta_l. Without a step (K = 0) y_i = x
    and c_i stays as it was (delta c_i = 0)."""
    if steps == 0:
        return {name: torch.zeros_like(value) for name, value in control.client.items()}
    return {
        name: (start[name] - trained[name]) / (steps * lr) - c for name, c in control.server.items()
    }


def next_client_control(
    client: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """c_i+ = c_i + delta c_i: what the client keeps for its next round (line 12)."""
    return {name: value + delta[name] for name, value in client.items()}


@dataclass(frozen=True)
class HelperTraining:
    """The trained helper and what training it took."""

    model: torch.nn.Module
    stats: TrainStats
    confident: int


@dataclass(frozen=True)
class QueryOutcome:
    """The positions picked in the candidate view, and the strategy's timings."""

    picks: np.ndarray
    fit_seconds: float
    select_seconds: float
    inference: InferenceClock = field(default_factory=InferenceClock)


def train_helper(
    config: ExperimentConfig,
    helper: torch.nn.Module,
    labelled: SampleView,
    candidates: SampleView,
    device: torch.device,
    generator: torch.Generator,
    control: ControlVariates | None = None,
    objective: Objective = cross_entropy,
) -> HelperTraining:
    """Steps 2-3: supervised training on labelled data with ``objective`` (FedProx term
    if configured, SCAFFOLD's gradient correction c - c_i with ``control``), then the
    optional confident-pseudo-label fine-tuning on candidates (never protected data)."""
    proximal_mu = (
        config.federation.proximal_mu if config.federation.aggregation == "fedprox" else 0.0
    )
    ema = EmaModel(helper, config.training.finetune_ema_decay) if config.training.finetune else None
    stats = train_supervised(
        helper,
        labelled,
        config.training,
        device,
        generator,
        proximal_mu=proximal_mu,
        after_step=ema.update if ema else None,
        gradient_correction=control.correction(helper) if control is not None else None,
        objective=objective,
    )
    confident = 0
    if ema is not None:
        confident = finetune_on_confident(
            helper, ema, candidates, config.training, device, generator
        ).confident
    return HelperTraining(model=helper, stats=stats, confident=confident)


def query(strategy: QueryStrategy, context: RoundContext, budget: int) -> QueryOutcome:
    """Step 4: ``strategy.fit`` then ``strategy.select``, timed and contract-checked."""
    started = time.perf_counter()
    strategy.fit(context)
    fitted = time.perf_counter()
    with inference_clock() as clock:
        picks = check_selection(
            strategy.select(context, budget), budget, len(context.candidates), strategy.name
        )
    return QueryOutcome(picks, fitted - started, time.perf_counter() - fitted, clock)


def round_report(
    dataset: LoadedDataset,
    pool: ClientPool,
    training: HelperTraining,
    outcome: QueryOutcome,
    budget: int,
    candidates_before: int,
    ledger_from: int,
    labelled_before: int,
    trained_on: int,
    on_new_labels: EvalStats,
) -> ClientReport:
    """Step 5: counts, timings, selection statistics and the ledger rows not yet reported.

    The round's new labels are the pool's labels after its first ``labelled_before``;
    ``trained_on`` is the labelled-set size the helper trained on (FedAvg's weight);
    ``on_new_labels``: the trained helper evaluated on the new labels."""
    new_labels = pool.labels[labelled_before:]
    new_indices = pool.labelled[labelled_before:]
    count = len(new_indices)
    noisy_marks = dataset.train_noisy
    unreported = pool.ledger_array()[ledger_from:, 1:]
    return ClientReport(
        client=pool.client,
        num_examples=trained_on,
        labels_used=len(pool.labelled),
        new_labels=count,
        new_noisy=int(noisy_marks[new_indices].sum()) if noisy_marks is not None else 0,
        candidates_left=len(pool.candidates),
        budget_short=budget > candidates_before,
        train_loss=training.stats.loss,
        train_seconds=training.stats.seconds,
        finetune_confident=training.confident,
        fit_seconds=outcome.fit_seconds,
        select_seconds=outcome.select_seconds,
        selected_class_histogram=tuple(
            np.bincount(new_labels, minlength=dataset.meta.num_classes).tolist()
        ),
        picked_helper_correct=round(on_new_labels.accuracy * count) if count else 0,
        ledger=tuple(tuple(row) for row in unreported.tolist()),
        cost=ClientCost(
            inference_seconds=outcome.inference.seconds,
            scored_images=outcome.inference.images,
            train_images=training.stats.samples,
        ),
    )


def run_client_round(
    config: ExperimentConfig,
    dataset: LoadedDataset,
    pool: ClientPool,
    strategy: QueryStrategy,
    global_state: dict[str, torch.Tensor],
    server_round: int,
    device: torch.device,
    ledger_from: int = 0,
    control: ControlVariates | None = None,
    annotator: Annotator | None = None,
) -> RoundReply:
    """Train the helper, then (on query rounds) select, label and grow the pool.

    The report carries the ledger entries from position ``ledger_from`` on (those not yet
    reported, e.g. the initial labels of round 0 plus this round's). With SCAFFOLD's
    ``control`` the helper trains with the corrected gradients and the reply carries
    delta c_i (:func:`control_delta`, from the labelled data's training only). The
    ``annotator`` is the benchmark's simulated oracle unless one is given (a person:
    :class:`fedal.human_oracle.HumanOracle`).
    """
    if annotator is None:
        annotator = make_oracle(config, dataset, pool)
    labelled_before = len(pool.labelled)
    late = annotator.answers(pool.labelled)
    pool.add_labels(late.indices, late.labels, server_round)
    waiting = annotator.outstanding(pool.labelled)
    seed = round_seed(config, pool.client, server_round)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    spec = dataset.input_spec
    helper = place(build_for_dataset(config.model.helper, dataset, config.model.dropout), device)
    helper.load_state_dict(global_state)
    scoring = config.query.scoring_model
    global_model = copy.deepcopy(helper) if scoring != "helper" else None
    labelled = SampleView(dataset.train_x, pool.labelled, spec, pool.labels)
    candidates = SampleView(dataset.train_x, np.setdiff1d(pool.candidates, waiting), spec)

    teacher = frozen_copy(helper) if config.training.kcfu else None
    objective = helper_objective(
        config.training, pool.labels, dataset.meta.num_classes, server_round, teacher, generator
    )
    training = train_helper(
        config, helper, labelled, candidates, device, generator, control, objective
    )
    helper_state = {
        name: value.detach().cpu().clone() for name, value in helper.state_dict().items()
    }
    delta = None
    if control is not None:
        delta = control_delta(
            control, global_state, helper_state, training.stats.steps, config.training.lr
        )

    budget = query_budget(config, pool, server_round, len(waiting))
    outcome = QueryOutcome(np.empty(0, dtype=np.int64), 0.0, 0.0)
    if budget > 0 and len(candidates) > 0:
        private = pool.unlabelled if config.query.private_data == "all" else candidates.positions
        context = RoundContext(
            model=global_model if global_model is not None and scoring == "global" else helper,
            labelled=labelled,
            candidates=candidates,
            private_unlabelled=SampleView(dataset.train_x, private, spec),
            num_classes=dataset.meta.num_classes,
            device=device,
            generator=generator,
            rng=np.random.default_rng(seed),
            round=server_round,
            batch_size=config.training.eval_batch_size,
            build_model=lambda name, dropout=0.0: build_for_dataset(name, dataset, dropout),
            global_model=global_model if scoring == "both" else None,
        )
        outcome = query(strategy, context, budget)
        answered = annotator.ask(candidates.positions[outcome.picks], server_round)
        pool.add_labels(answered.indices, answered.labels, server_round)

    new_labels = SampleView(
        dataset.train_x, pool.labelled[labelled_before:], spec, pool.labels[labelled_before:]
    )
    report = round_report(
        dataset,
        pool,
        training,
        outcome,
        budget,
        len(candidates),
        ledger_from,
        labelled_before,
        len(labelled),
        evaluate(helper, new_labels, device, config.training.eval_batch_size),
    )
    return RoundReply(helper_state=helper_state, report=report, control_delta=delta)
