"""Classification models used by clients and query strategies.

Every model is a :class:`Classifier`: a feature extractor that maps an input batch to a
flat embedding, an optional dropout layer and a linear head. Query strategies use the
embedding (``Classifier.embed``) for diversity-based selection and MC-dropout
(:func:`enable_mc_dropout`) for Bayesian uncertainty estimates such as BALD.

Models are built by name through :func:`build_model`; :func:`available_models` lists the
registered names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedal.pooling import MaxPool2d

if TYPE_CHECKING:
    from fedal.datasets import LoadedDataset

FeatureBuilder = Callable[[int, tuple[int, int] | None], tuple[nn.Module, int]]
"""Builds ``(features, embedding_dim)`` from ``(in_channels, image_size)``."""


class Classifier(nn.Module):
    """Every model: features -> (dropout) -> linear head."""

    def __init__(
        self, features: nn.Module, embedding_dim: int, num_classes: int, dropout: float
    ) -> None:
        super().__init__()
        self.features = features
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(embedding_dim, num_classes)
        self.embedding_dim = embedding_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Return the penultimate embedding of shape ``(N, embedding_dim)``."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits of shape ``(N, num_classes)``."""
        return self.head(self.dropout(self.features(x)))


# ---------------------------------------------------------------------------- ResNets


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with an identity or 1x1-conv projection shortcut.

    The residual block of He et al., "Deep Residual Learning for Image Recognition"
    (CVPR 2016); the projection (option B) is used only where the shape changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    """A stride-1 3x3 convolution followed by BatchNorm and ReLU."""
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def _resnet_features(
    in_channels: int, widths: tuple[int, ...], blocks_per_stage: int
) -> tuple[nn.Module, int]:
    """A CIFAR-style ResNet trunk: 3x3 stem, residual stages, global average pooling.

    The stem has ``widths[0]`` channels; stage ``i`` has ``blocks_per_stage`` BasicBlocks
    of ``widths[i]`` channels and downsamples by 2 on entry, except the first stage.
    """
    layers = _conv_bn_relu(in_channels, widths[0])
    previous = widths[0]
    for stage, width in enumerate(widths):
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(previous, width, stride))
            previous = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    features = nn.Sequential(*layers)
    _init_kaiming(features)
    return features, previous


def _init_kaiming(module: nn.Module) -> None:
    """He et al. (2015) normal initialisation of every convolution in ``module``."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")


def _cifar_resnet(blocks_per_stage: int) -> FeatureBuilder:
    """Builder for the CIFAR ResNet of depth ``6n + 2`` (He et al. 2016, section 4.2).

    Three 16/32/64-channel stages of ``n = blocks_per_stage`` BasicBlocks each:
    resnet8 has n=1, resnet14 n=2.
    """

    def build(in_channels: int, image_size: tuple[int, int] | None) -> tuple[nn.Module, int]:
        return _resnet_features(in_channels, (16, 32, 64), blocks_per_stage)

    return build


def _resnet18(in_channels: int, image_size: tuple[int, int] | None) -> tuple[nn.Module, int]:
    """CIFAR-style ResNet-18: the ImageNet ResNet-18 of He et al. 2016 with a 3x3 stem.

    64/128/256/512-channel stages of two BasicBlocks each and no stem max-pool, as
    commonly used for 32x32 images.
    """
    return _resnet_features(in_channels, (64, 128, 256, 512), 2)


# ---------------------------------------------------------------------------- small models

CNN_EMBEDDING_DIM = 128
MLP_HIDDEN = 64


def _cnn(in_channels: int, image_size: tuple[int, int] | None) -> tuple[nn.Module, int]:
    """A small, fast CNN for 28x28 / 32x32 images.

    Two (3x3 conv, BatchNorm, ReLU, 2x2 max-pool) blocks with 32 and 64 channels, then a
    fully connected layer to a 128-d embedding, in the spirit of the LeNet-style CNNs of
    McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
    Data" (AISTATS 2017). ``image_size`` fixes the size of the flattened feature map.
    """
    if image_size is None:
        raise ValueError("the cnn model needs image_size (height, width)")
    height, width = image_size
    flat = 64 * (height // 4) * (width // 4)
    features = nn.Sequential(
        *_conv_bn_relu(in_channels, 32),
        MaxPool2d(2),
        *_conv_bn_relu(32, 64),
        MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, CNN_EMBEDDING_DIM),
        nn.ReLU(inplace=True),
    )
    return features, CNN_EMBEDDING_DIM


def _mlp(in_channels: int, image_size: tuple[int, int] | None) -> tuple[nn.Module, int]:
    """A two-hidden-layer perceptron (64 ReLU units each) for low-dimensional features.

    ``in_channels`` is the number of input features (2 for the 2-D toy data sets); the
    embedding is the second hidden layer.
    """
    features = nn.Sequential(
        nn.Linear(in_channels, MLP_HIDDEN),
        nn.ReLU(inplace=True),
        nn.Linear(MLP_HIDDEN, MLP_HIDDEN),
        nn.ReLU(inplace=True),
    )
    return features, MLP_HIDDEN


_REGISTRY: dict[str, FeatureBuilder] = {
    "cnn": _cnn,
    "mlp": _mlp,
    "resnet8": _cifar_resnet(1),
    "resnet14": _cifar_resnet(2),
    "resnet18": _resnet18,
}


# ---------------------------------------------------------------------------- public API


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(_REGISTRY)


def build_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int] | None = None,
    dropout: float = 0.0,
) -> Classifier:
    """Build the registered model ``name`` with a ``num_classes``-way linear head.

    ``dropout`` in [0, 1) is applied to the embedding before the head (0 disables it).
    Initial weights depend only on the global torch seed.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    features, embedding_dim = _REGISTRY[name](in_channels, image_size)
    return Classifier(features, embedding_dim, num_classes, dropout)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def enable_mc_dropout(model: nn.Module) -> None:
    """Put ``model`` in eval mode except its ``nn.Dropout`` layers (MC-dropout).

    BatchNorm keeps using (and not updating) its running statistics, so repeated
    forward passes differ only through the dropout masks.
    """
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train()


def build_for_dataset(name: str, dataset: LoadedDataset, dropout: float = 0.0) -> Classifier:
    """Build model ``name`` for a loaded dataset's input shape and class count.

    Images give ``in_channels`` = channels; 2-D toys give the feature count.
    """
    meta = dataset.meta
    in_channels = meta.channels if meta.image_size is not None else dataset.train_x.shape[1]
    return build_model(
        name,
        in_channels=in_channels,
        num_classes=meta.num_classes,
        image_size=meta.image_size,
        dropout=dropout,
    )
