"""Data sets: the bundled scikit-learn digits, or a user factory named by import path."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from peer.plugins import PluginError, load_factory


@dataclass(frozen=True)
class Dataset:
    """Arrays in memory. ``x`` is float32 shaped ``(n, *input_shape)``; ``y`` holds int64 labels."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def check(self) -> Dataset:
        """Raise ``PluginError`` if the arrays cannot be trained on."""
        for part, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if len(x) != len(y) or len(x) == 0:
                raise PluginError(f"data set {self.name!r}: {part} has {len(x)} inputs and {len(y)} labels")
            if y.min() < 0 or y.max() >= self.num_classes:
                raise PluginError(f"data set {self.name!r}: {part} labels outside 0..{self.num_classes - 1}")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise PluginError(f"data set {self.name!r}: train and test inputs differ in shape")
        return self


def digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 real images, bundled, no download).

    The test split is stratified and fixed by ``seed``, so every peer evaluates on
    the same held-out images and none of them trains on those.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]  # (n, 1, 8, 8), values in [0, 1]
    y = bunch.target.astype(np.int64)
    tr_x, te_x, tr_y, te_y = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return Dataset("digits", tr_x, tr_y, te_x, te_y, num_classes=10)


def load_dataset(spec: str, seed: int = 0) -> Dataset:
    """``digits`` or ``module:factory`` where ``factory(seed=...)`` returns a ``Dataset``."""
    if spec == "digits":
        return digits(seed)
    factory = load_factory(spec, what="data set")
    try:
        ds = factory(seed=seed)
    except Exception as e:  # noqa: BLE001 - user code: report it in one line
        raise PluginError(f"data set {spec!r} failed: {type(e).__name__}: {e}") from e
    if not isinstance(ds, Dataset):
        raise PluginError(f"data set {spec!r} returned {type(ds).__name__}, not peer.data.Dataset")
    return ds.check()
