"""The in-memory shape of a data set every loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from peer.runtime.plugins import PluginError


class DatasetError(PluginError):
    """A data set that cannot be loaded (missing or damaged file, bad option); one line."""


@dataclass(frozen=True)
class Dataset:
    """Arrays (in memory or memory-mapped read-only). ``x`` is float32 shaped
    ``(n, *input_shape)``; ``y`` holds int64 labels."""

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
        """Raise ``DatasetError`` if the arrays cannot be trained on."""
        for part, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if len(x) != len(y) or len(x) == 0:
                raise DatasetError(f"data set {self.name!r}: {part} has {len(x)} inputs and {len(y)} labels")
            if y.min() < 0 or y.max() >= self.num_classes:
                raise DatasetError(f"data set {self.name!r}: {part} labels outside 0..{self.num_classes - 1}")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise DatasetError(f"data set {self.name!r}: train and test inputs differ in shape")
        return self
