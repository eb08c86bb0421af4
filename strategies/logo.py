"""LoGo (Kim et al., CVPR 2023, "Re-thinking Federated Active Learning based on
Inter-class Diversity"): the two-step selection of the method section, a macro step with
the *local-only* model, then a micro step with the *global* model.

- *Local-only model*: a network trained from scratch on the client's labelled data only,
  every query round (:meth:`LoGo.fit`; a private network, never uploaded). Training stops
  after ``epochs`` or once its accuracy on the labelled set reaches ``stop_accuracy``
  (the reference code's rule).
- *Macro step* (k-means with the local-only model): every candidate is mapped to its
  hallucinated gradient embedding, the gradient of the cross entropy at the predicted
  label ``y_hat = argmax p`` with respect to the last layer's weights, restricted to the
  row of ``y_hat``: ``g_x = (p_{y_hat} - 1) h_x`` (:func:`hallucinated_gradients`; BADGE's
  embedding, Ash et al. 2020, on that row only, as the reference code does). The
  candidates are clustered into ``K = budget`` clusters with k-means (k-means++ seeding
  and Lloyd steps, :func:`kmeans_assignment`).
- *Micro step* (cluster-wise sampling with the global model as received): in each cluster
  the candidate of largest predictive entropy ``H(p^g(x)) = -sum_c p^g_c log p^g_c``
  under the global model (:func:`cluster_round_robin`).
- *Empty clusters* (k-means keeps fewer than ``K`` non-empty clusters, e.g. for duplicate
  candidates): the paper and its code then take further candidates cluster by cluster,
  each cluster's next most uncertain one, until the budget is met; here round by round in
  cluster order (round 1 = each cluster's most uncertain, round 2 = each cluster's second,
  ...). *Ties* of entropy go to the lower candidate position.

Which models: the global model as received is ``ctx.global_model`` under
``query.scoring_model = "both"`` and ``ctx.model`` under ``"global"``; ``"helper"`` (the
helper after local training, which is neither model of the paper) is refused before a
run starts. Deviations from the paper: experiments/README.md, "LoGo, KAFAL, FEAL".
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from fedal.choices import ModelName
from fedal.models import Classifier
from fedal.training import evaluate
from strategies.base import QueryStrategy, RoundContext
from strategies.distances import (
    DEFAULT_CHUNK_SIZE,
    ChunkSize,
    EuclideanSpace,
    as_float64,
    kmeans_plus_plus,
    nearest_centres,
)
from strategies.kmeans import lloyd
from strategies.private_training import (
    Epochs,
    PrivateNetwork,
    SGDOptions,
    labelled_batches,
    step,
)
from strategies.registry import register
from strategies.scoring import entropy, predict_embeddings, predict_probs


class LoGoOptions(SGDOptions):
    """``[query.options]`` of ``logo``; the reference code's values in brackets.

    - ``backbone``: architecture of the local-only model [the global model's; set it to
      ``model.helper`` for that].
    - ``epochs``: at most this many epochs of local-only training per query [50];
      ``stop_accuracy``: stop once the labelled accuracy reaches it [0.99].
    - ``lr``, ``momentum``, ``weight_decay``, ``batch_size``, ``augment``: its SGD
      [0.01, 0.9, 1e-5, the local batch size].
    - ``iterations``: Lloyd steps of the macro step's k-means [scikit-learn's, up to 300];
      ``chunk_size``: rows per block of distance computations.

    The default of 10 epochs keeps ``fit`` cheap on a CPU.
    """

    backbone: ModelName = "resnet8"
    epochs: Epochs = 10
    stop_accuracy: float = Field(0.99, gt=0, le=1)
    weight_decay: float = Field(1e-5, ge=0)
    iterations: int = Field(10, ge=1)
    chunk_size: ChunkSize = DEFAULT_CHUNK_SIZE


@register
class LoGo(QueryStrategy):
    """k-means over the local-only model's gradient embeddings, then in each cluster the
    candidate the global model is least certain about."""

    name = "logo"
    Options = LoGoOptions
    options: LoGoOptions
    needs_labelled = True
    scoring_models = ("global", "both")

    def __init__(self, options: Mapping[str, object] | None = None) -> None:
        super().__init__(options)
        self.local_only: PrivateNetwork[Classifier] = PrivateNetwork(self._build)

    def _build(self, ctx: RoundContext) -> Classifier:
        return ctx.build_model(self.options.backbone)

    def fit(self, ctx: RoundContext) -> None:
        """Train the local-only model from new initial weights on ``ctx.labelled``."""
        if len(ctx.labelled) == 0:
            raise ValueError("logo: the local-only model needs labelled samples")
        opts = self.options
        network = self.local_only.get(ctx, fresh=True)
        optimizer = opts.optimizer(network)
        for _ in range(opts.epochs):
            network.train()
            for inputs, targets in labelled_batches(ctx, opts.batch_size, opts.augment):
                step(optimizer, network, F.cross_entropy(network(inputs), targets))
            with torch.no_grad():
                accuracy = evaluate(network, ctx.labelled, ctx.device, ctx.batch_size).accuracy
            if accuracy >= opts.stop_accuracy:
                break
        network.eval()

    def select(self, ctx: RoundContext, budget: int) -> np.ndarray:
        """Macro step (k-means, ``K = budget``), then the micro step in each cluster."""
        count = min(budget, len(ctx.candidates))
        if count <= 0:
            return np.empty(0, dtype=np.int64)
        network = self.local_only.get(ctx)
        hidden, logits = predict_embeddings(network, ctx.candidates, ctx.device, ctx.batch_size)
        gradients = hallucinated_gradients(hidden, logits)
        clusters = kmeans_assignment(gradients, count, ctx, self.options)
        received = ctx.global_model if ctx.global_model is not None else ctx.model
        probs = predict_probs(received, ctx.candidates, ctx.device, ctx.batch_size)
        return cluster_round_robin(clusters, entropy(probs.double()).numpy(), count)

    def sampling_parameters(self) -> int:
        """Trainable parameters of the local-only model."""
        return self.local_only.parameter_count()


def hallucinated_gradients(hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Macro step's embedding: ``dCE(x, y_hat)/dW_{y_hat} = (p_{y_hat} - 1) h_x`` per row,
    the last layer's gradient at the predicted label, on that label's weight row."""
    confidence = torch.softmax(logits.double(), dim=1).max(dim=1).values
    return (confidence - 1).unsqueeze(1) * hidden.double()


def kmeans_assignment(
    points: torch.Tensor, clusters: int, ctx: RoundContext, options: LoGoOptions
) -> np.ndarray:
    """Macro step's k-means: the cluster of every point, ``clusters`` centres seeded with
    k-means++ from a random first point (``ctx.rng``), then ``options.iterations`` Lloyd
    steps; a cluster may end up empty."""
    space = EuclideanSpace(as_float64(points, ctx.device))
    first = int(ctx.rng.integers(len(space)))
    seeds = kmeans_plus_plus(space, clusters, first, ctx.rng, options.chunk_size)
    centroids = lloyd(
        space, space.points[torch.from_numpy(seeds)], options.iterations, options.chunk_size
    )
    return nearest_centres(space, EuclideanSpace(centroids), options.chunk_size)[1].cpu().numpy()


def cluster_round_robin(clusters: np.ndarray, uncertainty: np.ndarray, count: int) -> np.ndarray:
    """Micro step: each non-empty cluster's most uncertain point, cluster by cluster; while
    fewer than ``count`` are chosen (empty clusters), each cluster's next most uncertain,
    round after round. Ties of uncertainty go to the lower position."""
    positions = np.arange(len(clusters))
    by_cluster = np.lexsort((positions, -uncertainty, clusters))
    sorted_clusters = clusters[by_cluster]
    rank = positions - np.searchsorted(sorted_clusters, sorted_clusters)
    order = np.lexsort((sorted_clusters, rank))
    return by_cluster[order][:count].astype(np.int64)
