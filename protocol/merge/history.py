"""A bounded window of recent observations and its robust scale (median, MAD).

The robust rules keep one of the distances they saw (``clip``, ``bristle``), the loss check
one of the loss rises: what counts as "normal" is what this peer has seen lately.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


class NormHistory:
    """The last ``window`` observed delta norms (or loss rises); their median is a robust scale for "normal".

    A median tolerates just under half of the window being an attacker's: with 4 of 16
    peers attacking, about a quarter of what a peer receives is hostile.
    """

    def __init__(self, window: int = 32, warmup: int = 3) -> None:
        if window < 1 or warmup < 1 or warmup > window:
            raise ValueError(f"need 1 <= warmup <= window, got window={window}, warmup={warmup}")
        self.window = window
        self.warmup = warmup
        self._norms: list[float] = []

    def median(self) -> float | None:
        """The median of the window, or ``None`` while fewer than ``warmup`` norms were seen."""
        if len(self._norms) < self.warmup:
            return None
        return float(np.median(self._norms))

    def mad(self) -> float | None:
        """Median absolute deviation from the median (a spread that < half the window cannot inflate)."""
        median = self.median()
        if median is None:
            return None
        return float(np.median(np.abs(np.asarray(self._norms) - median)))

    def add(self, norms: Sequence[float]) -> None:
        """Record one merge's norms (sorted first, so the order received changes nothing)."""
        self._norms.extend(sorted(n for n in norms if math.isfinite(n)))
        del self._norms[:-self.window]

    def values(self) -> tuple[float, ...]:
        """The window, oldest first."""
        return tuple(self._norms)

    def __len__(self) -> int:
        return len(self._norms)
