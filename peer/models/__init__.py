"""The model zoo (an MLP and small CNNs) and user models by import path."""

from __future__ import annotations

import math

import torch
from torch import nn

from peer.runtime.plugins import PluginError, load_factory


class MLP(nn.Module):
    """Two hidden layers; flattens any input shape."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two 3x3 conv layers and a linear head, sized for small images (8x8 digits, 28x28 MNIST)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise PluginError(f"cnn needs (channels, height, width) inputs, got {input_shape}")
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * (h // 2) * (w // 2), num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class PooledCNN(nn.Module):
    """For 28x28 images (MNIST, Fashion-MNIST): two 3x3 conv layers, each followed by 2x2
    max-pooling, and a linear head (~21k parameters for 28x28x1).

    Pooling after the first layer quarters the second layer's work: a step costs about a
    third of SmallCNN's on 28x28, which matters when several peers share a CPU, and it
    reaches ~0.88 on Fashion-MNIST within a few hundred steps per peer.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> None:
        super().__init__()
        if len(input_shape) != 3 or min(input_shape[1:]) < 4:
            raise PluginError(f"cnn needs (channels, height, width) inputs of at least 4x4, got {input_shape}")
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * (h // 4) * (w // 4), num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# Images at least this many pixels on each side get the pooled CNN under the name 'cnn'.
POOLED_CNN_MIN_SIDE = 16


def CNN(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:  # noqa: N802 - a zoo constructor
    """'cnn': SmallCNN for small images (8x8 digits: every figure measured on digits stays as
    it was), PooledCNN for images of 16 pixels a side and more (28x28 MNIST, Fashion-MNIST)."""
    if len(input_shape) == 3 and min(input_shape[1:]) >= POOLED_CNN_MIN_SIDE:
        return PooledCNN(input_shape, num_classes)
    return SmallCNN(input_shape, num_classes)


def WideCNN(input_shape: tuple[int, ...], num_classes: int) -> SmallCNN:  # noqa: N802 - a zoo constructor
    """The same CNN four times wider (~95k parameters): big enough that per-packet overheads
    stop dominating compressed deltas (bench/compression_learning.py)."""
    return SmallCNN(input_shape, num_classes, width=64)


ZOO = {"mlp": MLP, "cnn": CNN, "cnn-small": SmallCNN, "cnn-pooled": PooledCNN, "cnn-wide": WideCNN}


def build_model(spec: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A zoo model by name, or ``module:factory`` called with ``(input_shape, num_classes)``."""
    if spec in ZOO:
        return ZOO[spec](input_shape, num_classes)
    factory = load_factory(spec, what="model")
    try:
        model = factory(input_shape, num_classes)
    except Exception as e:  # noqa: BLE001 - user code: report it in one line
        raise PluginError(f"model {spec!r} failed: {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise PluginError(f"model {spec!r} returned {type(model).__name__}, not torch.nn.Module")
    return model
