"""Heteroskedastic benchmarks (LHD paper section 3) added to every client's pool."""

from __future__ import annotations

import numpy as np
import pytest

from fedal.config import ConfigError, load_config
from fedal.corruptions import DIVERSE_CHOICES, noisy_count
from fedal.shards import load_experiment, open_count


def config(corruption: str, *extra: str):
    return load_config(
        "experiments/configs/demo.toml",
        [
            f'data.corruption="{corruption}"',
            "data.train_subset=3000",
            "data.num_clients=3",
            "data.corruption_share=0.25",
            *extra,
        ],
    )


def test_noisy_count_makes_the_requested_share() -> None:
    assert noisy_count(300, 0.25) == 100  # 100 / (300 + 100) = 0.25
    assert noisy_count(300, 0.0) == 0


@pytest.mark.parametrize("corruption", ["noisy-blank", "noisy-diverse", "noisy-class"])
def test_every_client_pool_gets_its_share_of_noisy_candidates(corruption: str) -> None:
    cfg = config(corruption)
    experiment = load_experiment(cfg)
    noisy = experiment.dataset.train_noisy
    assert noisy is not None and noisy.sum() == sum(len(block) for block in experiment.noisy)
    for client in range(3):
        pool = experiment.new_pool(cfg, client)
        open_clean = open_count(experiment.shards[client], cfg.data.protected_fraction)
        assert noisy[pool.candidates].sum() == noisy_count(open_clean, 0.25) > 0
        assert noisy[pool.shard].sum() / open_clean == pytest.approx(0.25 / 0.75, abs=0.02)
        assert not noisy[pool.protected].any(), "noisy examples are never protected"
        assert not noisy[pool.labelled].any(), "initial labels come from the clean data"
    blocks = np.concatenate(experiment.noisy)
    assert len(np.unique(blocks)) == len(blocks), "each noisy example belongs to one client"


def test_noisy_blank_is_black_with_uniform_random_labels() -> None:
    experiment = load_experiment(config("noisy-blank", "data.corruption_share=0.5"))
    dataset = experiment.dataset
    images, labels = dataset.train_x[dataset.train_noisy], dataset.train_y[dataset.train_noisy]
    assert images.max() == 0
    counts = np.bincount(labels, minlength=10)
    assert counts.min() > 0.5 * counts.mean()


def test_noisy_diverse_has_solid_colours_with_three_labels_each() -> None:
    dataset = load_experiment(config("noisy-diverse", "data.corruption_share=0.5")).dataset
    images, labels = dataset.train_x[dataset.train_noisy], dataset.train_y[dataset.train_noisy]
    flat = images.reshape(len(images), -1)
    assert (flat == flat[:, :1]).all(), "every noisy image is one solid colour"
    for colour in np.unique(flat[:, 0]):
        assert len(np.unique(labels[flat[:, 0] == colour])) <= DIVERSE_CHOICES


def test_noisy_class_repeats_images_of_one_class_with_random_labels() -> None:
    cfg = config("noisy-class", "data.corruption_unique=5", "data.corruption_class=1")
    dataset = load_experiment(cfg).dataset
    clean_count = len(dataset.train_noisy) - dataset.train_noisy.sum()
    images = dataset.train_x[dataset.train_noisy]
    assert len(np.unique(images.reshape(len(images), -1), axis=0)) <= 5
    trousers = dataset.train_x[:clean_count][dataset.train_y[:clean_count] == 1]
    assert any(np.array_equal(images[0], image) for image in trousers)
    assert len(np.unique(dataset.train_y[dataset.train_noisy])) > 5


def test_bad_corruption_settings_fail_early() -> None:
    with pytest.raises(ConfigError, match=r"data\.corruption"):
        config("noisy-everything")
    with pytest.raises(ConfigError, match=r"data\.corruption_share"):
        config("noisy-blank", "data.corruption_share=1.0")
    with pytest.raises(ConfigError, match="needs an image dataset"):
        load_experiment(config("noisy-blank", 'data.dataset="moons"'))
