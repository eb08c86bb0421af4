"""The central test set's shards (evaluation on nodes, ``federation.evaluation_shards``):
they cover the view exactly on batch boundaries, their sums add up to the whole view's,
and the evaluation exchange survives Flower's records."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from clients.protocol import EvaluationReply, EvaluationTask
from fedal.config import load_config
from fedal.datasets import load_dataset
from fedal.evaluation_set import central_test_shard, central_test_view, evaluate_global_arrays
from fedal.models import build_for_dataset
from fedal.training import EvalSums, evaluation_sums

CPU = torch.device("cpu")


@pytest.mark.parametrize(("count", "batch_size", "shards"), [(300, 64, 3), (10, 4, 5), (7, 8, 2)])
def test_shards_cover_the_view_once_in_order_on_batch_boundaries(
    count: int, batch_size: int, shards: int
) -> None:
    dataset = load_dataset("fashion-mnist")
    view = central_test_view(load_config(None, [f"data.test_subset={count}"]), dataset)
    parts = [central_test_shard(view, k, shards, batch_size) for k in range(shards)]
    assert np.array_equal(np.concatenate([part.positions for part in parts]), view.positions)
    assert all(len(part) % batch_size == 0 for part in parts[:-1])
    sizes = [-(-len(part) // batch_size) for part in parts]  # batches per shard
    assert sum(sizes) == -(-count // batch_size) and max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match=r"shard 3 is not one of 0\.\.2"):
        central_test_shard(view, 3, 3, batch_size)


def test_the_sums_of_the_shards_are_the_whole_views() -> None:
    dataset = load_dataset("fashion-mnist")
    view = central_test_view(load_config(None, ["data.test_subset=500"]), dataset)
    torch.manual_seed(0)
    model = build_for_dataset("cnn", dataset)
    whole = evaluation_sums(model, view, CPU, 64)
    parts = [evaluation_sums(model, central_test_shard(view, k, 3, 64), CPU, 64) for k in range(3)]
    total = parts[0] + parts[1] + parts[2]
    assert (total.correct, total.count) == (whole.correct, whole.count) == (total.correct, 500)
    assert total.loss_sum == pytest.approx(whole.loss_sum, rel=1e-12)
    assert total.stats().accuracy == whole.stats().accuracy == whole.correct / 500
    assert np.isnan(EvalSums(0, 0.0, 0).stats().loss)


def test_the_evaluation_exchange_round_trips_through_flower_records() -> None:
    config = load_config(None, ["federation.evaluation_shards=2"])
    arrays = ArrayRecord({"w": torch.ones(3)})
    content = EvaluationTask(config, shard=1, shards=2).to_content(arrays)
    task = EvaluationTask.from_content(content)
    assert (task.config, task.shard, task.shards) == (config, 1, 2)
    assert torch.equal(content.array_records["arrays"].to_torch_state_dict()["w"], torch.ones(3))
    reply = EvaluationReply(EvalSums(7, 3.25, 10), seconds=0.5)
    assert EvaluationReply.from_content(reply.to_content()) == reply


def test_the_central_evaluation_computes_in_the_configured_layout() -> None:
    """``training.channels_last = "always"``: the evaluated model's convolutions run in
    channels_last on the CPU and give the same predictions up to float rounding."""
    dataset = load_dataset("fashion-mnist")
    torch.manual_seed(0)
    arrays = build_for_dataset("cnn", dataset).state_dict()
    sums = {}
    for layout in ("cuda", "always"):
        config = load_config(None, ["data.test_subset=300", f'training.channels_last="{layout}"'])
        model = build_for_dataset("cnn", dataset)
        view = central_test_view(config, dataset)
        sums[layout] = evaluate_global_arrays(model, arrays, view, config, CPU)
        convs = [p for p in model.parameters() if p.dim() == 4]
        assert any(not p.is_contiguous() for p in convs) == (layout == "always")
    assert sums["always"].correct == sums["cuda"].correct
    assert sums["always"].loss_sum == pytest.approx(sums["cuda"].loss_sum, rel=1e-5)
