"""A user data set and a user model, loaded by import path in the tests."""

from __future__ import annotations

import numpy as np
from torch import nn

from peer.data import Dataset


def tiny_dataset(seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((90, 4)).astype(np.float32)
    y = np.argmax(x[:, :3], axis=1).astype(np.int64)  # learnable: label = largest of 3 features
    return Dataset("tiny", x[:60], y[:60], x[60:], y[60:], num_classes=3)


def wrong_type(*_args: object, **_kwargs: object) -> dict:
    return {}


def linear_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_classes))


def wide_mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """~4.3M parameters: checkpoints of ~35 MB take long enough to be killed mid-write."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 2048), nn.ReLU(),
                         nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, num_classes))


def sized_dataset(seed: int = 0, n: str = "90", path: str = "") -> Dataset:
    """A factory that takes the user's --dataset-arg options (as strings) besides seed."""
    base = tiny_dataset(seed)
    keep = int(n)
    name = f"sized:{path}" if path else "sized"
    return Dataset(name, base.train_x[:keep], base.train_y[:keep], base.test_x, base.test_y, num_classes=3)
