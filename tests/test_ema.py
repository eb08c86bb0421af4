"""The one EMA of fedal (:class:`fedal.ema.EmaModel`): the update rule by hand and its
BatchNorm policy (running statistics averaged, batch counters copied)."""

from __future__ import annotations

import torch
from torch import nn

from fedal.ema import EmaModel


def test_the_average_starts_equal_to_main_and_is_frozen() -> None:
    torch.manual_seed(0)
    main = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)).train()
    ema = EmaModel(main, decay=0.9)
    for key, value in main.state_dict().items():
        assert torch.equal(ema.average.state_dict()[key], value), key
    assert not ema.average.training
    assert not any(p.requires_grad for p in ema.average.parameters())
    assert all(p.requires_grad for p in main.parameters())


def test_update_averages_weights_and_running_statistics_and_copies_counters() -> None:
    torch.manual_seed(0)
    main = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    ema = EmaModel(main, decay=0.9)
    before = {key: value.clone() for key, value in ema.average.state_dict().items()}
    with torch.no_grad():
        main[0].weight.add_(1.0)
        main[1].running_mean.fill_(2.0)
    main[1].num_batches_tracked.fill_(7)
    ema.update()
    after, theta = ema.average.state_dict(), main.state_dict()
    for key in ("0.weight", "0.bias", "1.weight", "1.running_mean", "1.running_var"):
        torch.testing.assert_close(after[key], 0.9 * before[key] + 0.1 * theta[key])
    assert not torch.equal(after["1.running_mean"], theta["1.running_mean"])
    assert int(after["1.num_batches_tracked"]) == 7


def test_state_holds_main_and_average_and_restores_both() -> None:
    torch.manual_seed(0)
    ema = EmaModel(nn.Linear(2, 3), decay=0.5)
    with torch.no_grad():
        ema.main.weight.add_(1.0)
    ema.update()
    state = ema.state_dict()
    assert set(state) == {
        "main.weight",
        "main.bias",
        "ema.module.weight",
        "ema.module.bias",
        "ema.n_averaged",
    }
    restored = EmaModel(nn.Linear(2, 3), decay=0.5)
    restored.load_state_dict(state)
    assert torch.equal(restored.average.weight, ema.average.weight)
    with torch.no_grad():
        restored.main.weight.add_(1.0)
    restored.update()  # continues the average (no fresh copy of main)
    torch.testing.assert_close(
        restored.average.weight, 0.5 * ema.average.weight + 0.5 * restored.main.weight
    )
