"""Monte-Carlo dropout predictions (Gal & Ghahramani, ICML 2016), shared by BALD and QBC.

Each stochastic forward pass of a network with dropout kept on at test time is a sample
``theta_t ~ q(theta)`` from an approximate posterior over the weights; ``T`` passes give
``T`` class distributions ``P(y | x, theta_t)`` per input. BALD uses them as posterior
samples, query-by-committee as the committee's members.

The scoring model is deep-copied and put in MC-dropout mode with
:func:`fedal.models.enable_mc_dropout`: its ``nn.Dropout`` layers sample masks, while
BatchNorm stays in eval mode (running statistics used, never updated). A model without
dropout has no stochasticity to sample, so :func:`mc_dropout_probs` raises a
``ValueError`` telling the user to set ``model.dropout > 0``.

Randomness: the dropout masks come from torch's global RNG inside
``torch.random.fork_rng``, seeded from ``ctx.generator``; the caller's RNG state is
left untouched and the same round seed gives the same masks.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from fedal.models import enable_mc_dropout
from strategies.base import RoundContext
from strategies.scoring import inference_pass


@torch.no_grad()
def mc_dropout_probs(ctx: RoundContext, samples: int) -> torch.Tensor:
    """Softmax probabilities of ``samples`` MC-dropout passes, shape ``(T, N, C)``, on CPU.

    When dropout sits only before the head (``head(dropout(embed(x)))``, as in
    :class:`fedal.models.Classifier`), the deterministic trunk ``embed(x)`` is computed
    once per batch and only the stochastic tail is sampled ``T`` times; this has exactly
    the distribution of ``T`` full passes. A model with dropout inside its trunk gets
    ``T`` full passes.
    """
    model = copy.deepcopy(ctx.model)
    _require_dropout(model)
    enable_mc_dropout(model)
    trunk_is_stochastic = any(
        isinstance(module, nn.Dropout) and module is not model.dropout for module in model.modules()
    )
    outputs = []
    with (
        _seeded_torch_rng(_derived_seed(ctx.generator)),
        inference_pass(len(ctx.candidates) * (samples if trunk_is_stochastic else 1)),
    ):
        for batch in ctx.candidates.batches(ctx.batch_size, ctx.device):
            hidden = None if trunk_is_stochastic else model.embed(batch)
            logits = [
                model.head(model.dropout(model.embed(batch) if hidden is None else hidden))
                for _ in range(samples)
            ]
            outputs.append(torch.softmax(torch.stack(logits).float(), dim=2))
        if not outputs:
            return torch.empty(samples, 0, ctx.num_classes)
        return torch.cat(outputs, dim=1).cpu()


def _require_dropout(model: nn.Module) -> None:
    """MC dropout needs a dropout layer with ``p > 0`` in front of the head."""
    dropout = getattr(model, "dropout", None)
    if not (isinstance(dropout, nn.Dropout) and dropout.p > 0):
        raise ValueError(
            "MC-dropout strategies (bald, vote_entropy, consensus_entropy, kl_to_consensus) "
            "need a scoring model with dropout: set model.dropout > 0 in the experiment config"
        )


def _derived_seed(generator: torch.Generator) -> int:
    """A 62-bit seed drawn from the round's generator."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


@contextmanager
def _seeded_torch_rng(seed: int) -> Iterator[None]:
    """Seed torch's global RNGs (CPU and every CUDA device) inside a fork of them."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
