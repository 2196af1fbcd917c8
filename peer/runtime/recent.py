"""A mapping that keeps only its most recently written entries.

Per-sender side tables (link statistics, the telemetry each partner reported) are
keyed by a sender's claimed address. Anyone can claim ever new addresses, so such a
table must have a bound; the entries worth keeping are the partners we exchange with
now, which are the ones written most recently.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class RecentMap(OrderedDict[K, V]):
    """At most ``capacity`` entries; writing one makes it the newest, the oldest goes first."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        super().__init__()
        self.capacity = capacity

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)

    def setdefault(self, key: K, default: V) -> V:  # type: ignore[override]
        if key in self:
            self.move_to_end(key)
            return self[key]
        self[key] = default
        return default
