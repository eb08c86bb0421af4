"""Tests for fedal.models: sizes, shapes, embeddings, MC-dropout and errors."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from fedal.models import (
    Classifier,
    available_models,
    build_model,
    count_parameters,
    enable_mc_dropout,
)

IMAGE_MODELS = ["cnn", "resnet8", "resnet14", "resnet18"]
IMAGE_SHAPES = [(1, 28, 28), (3, 32, 32)]


def _image_model(name: str, shape: tuple[int, int, int], dropout: float = 0.0) -> Classifier:
    """Build ``name`` for inputs of per-sample ``shape`` (C, H, W) and 10 classes."""
    channels, height, width = shape
    return build_model(
        name,
        in_channels=channels,
        num_classes=10,
        image_size=(height, width),
        dropout=dropout,
    )


def _batch_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    """All BatchNorm layers of ``model``."""
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_available_models() -> None:
    assert available_models() == ["cnn", "mlp", "resnet14", "resnet18", "resnet8"]


@pytest.mark.parametrize(
    ("name", "paper_count"),
    [("resnet8", 0.078e6), ("resnet14", 0.18e6), ("resnet18", 11.17e6)],
)
def test_resnet_parameter_counts_match_psl_paper(name: str, paper_count: float) -> None:
    model = build_model(name, in_channels=3, num_classes=10)
    assert count_parameters(model) == pytest.approx(paper_count, rel=0.05)


def test_count_parameters_skips_frozen() -> None:
    model = build_model("mlp", in_channels=2, num_classes=3)
    total = count_parameters(model)
    model.head.requires_grad_(False)
    assert count_parameters(model) == total - (64 * 3 + 3)


@pytest.mark.parametrize("shape", IMAGE_SHAPES)
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_model_shapes_and_embedding(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = _image_model(name, shape).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        logits = model(x)
        embedding = model.embed(x)
        assert logits.shape == (2, 10)
        assert embedding.shape == (2, model.embedding_dim)
        torch.testing.assert_close(model.head(embedding), logits)


def test_mlp_shapes_and_embedding() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", in_channels=2, num_classes=3).eval()
    x = torch.randn(5, 2)
    with torch.no_grad():
        logits = model(x)
        embedding = model.embed(x)
    assert logits.shape == (5, 3)
    assert embedding.shape == (5, model.embedding_dim)
    torch.testing.assert_close(model.head(embedding), logits)


def test_dropout_layer_only_when_requested() -> None:
    assert isinstance(build_model("mlp", in_channels=2, num_classes=2).dropout, nn.Identity)
    with_dropout = build_model("mlp", in_channels=2, num_classes=2, dropout=0.3)
    assert isinstance(with_dropout.dropout, nn.Dropout)
    assert with_dropout.dropout.p == 0.3


@pytest.mark.parametrize("name", ["cnn", "resnet8"])
def test_mc_dropout_is_stochastic_and_keeps_batchnorm_frozen(name: str) -> None:
    torch.manual_seed(0)
    model = _image_model(name, (1, 28, 28), dropout=0.5)
    x = torch.randn(4, 1, 28, 28)
    model.train()
    model(x)  # move running statistics away from their initial values
    enable_mc_dropout(model)
    norms = _batch_norms(model)
    assert norms
    assert not any(bn.training for bn in norms)
    assert model.dropout.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        first, second = model(x), model(x)
    assert not torch.equal(first, second)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_eval_mode_is_deterministic_with_dropout() -> None:
    torch.manual_seed(0)
    model = _image_model("cnn", (1, 28, 28), dropout=0.5).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_unknown_model_lists_available_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'vgg'.*resnet8"):
        build_model("vgg", in_channels=3, num_classes=10)


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_bad_dropout_is_rejected(dropout: float) -> None:
    with pytest.raises(ValueError, match=re.escape(str(dropout))):
        build_model("mlp", in_channels=2, num_classes=2, dropout=dropout)


def test_cnn_requires_image_size() -> None:
    with pytest.raises(ValueError, match="image_size"):
        build_model("cnn", in_channels=1, num_classes=10)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "cnn", "in_channels": 3, "image_size": (32, 32)},
        {"name": "mlp", "in_channels": 2},
        {"name": "resnet8", "in_channels": 3},
    ],
)
def test_same_seed_gives_identical_initial_weights(kwargs: dict) -> None:
    def initial_weights() -> dict[str, torch.Tensor]:
        torch.manual_seed(123)
        return build_model(num_classes=4, **kwargs).state_dict()

    first, second = initial_weights(), initial_weights()
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


# ------------------------------------------------------------------ the CPU max-pool path


def _tied_activations(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """ReLU-like activations with flat regions (ties within windows), as on a plain
    background."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(shape, generator=generator).relu()
    values[:, :, : shape[2] // 3] = 0.5
    return values.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(58, 32, 28, 28), (3, 64, 14, 14), (2, 8, 7, 9)])
def test_fedal_max_pool_matches_torch_in_values_and_gradients(
    shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    from fedal.pooling import MaxPool2d

    ours_in = _tied_activations(shape, dtype).requires_grad_()
    torch_in = ours_in.detach().clone().requires_grad_()
    ours, reference = MaxPool2d(2)(ours_in), nn.MaxPool2d(2)(torch_in)
    assert type(ours.grad_fn).__name__ == "_ChannelsLastMaxPoolBackward"  # the fast path
    assert ours.is_contiguous() and ours.dtype == dtype
    assert torch.equal(ours, reference)
    upstream = torch.randn(reference.shape, generator=torch.Generator().manual_seed(1))
    ours.backward(upstream.to(dtype))
    reference.backward(upstream.to(dtype))
    assert torch.equal(ours_in.grad, torch_in.grad)
    with torch.no_grad():
        assert torch.equal(MaxPool2d(2)(torch_in), reference)
    layout = torch_in.detach().contiguous(memory_format=torch.channels_last)
    assert torch.equal(MaxPool2d(2)(layout), reference)  # channels_last: torch's own


def test_the_cnn_trains_bit_for_bit_as_with_torchs_max_pool() -> None:
    """The demo CNN with fedal's pooling and with torch's: same logits and gradients."""
    from fedal.pooling import MaxPool2d

    torch.manual_seed(0)
    ours = _image_model("cnn", (1, 28, 28))
    reference = _image_model("cnn", (1, 28, 28))
    reference.load_state_dict(ours.state_dict())
    pools = [name for name, m in reference.features.named_children() if isinstance(m, MaxPool2d)]
    assert len(pools) == 2
    for name in pools:
        setattr(reference.features, name, nn.MaxPool2d(2))
    inputs = torch.zeros(16, 1, 28, 28)
    inputs[:, :, 6:22, 8:20] = torch.rand(16, 1, 16, 12, generator=torch.Generator().manual_seed(2))
    for model in (ours, reference):
        model(inputs).logsumexp(1).sum().backward()
    for (name, weight), twin in zip(ours.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(weight.grad, twin.grad), name
