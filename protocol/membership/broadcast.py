"""The queue of updates waiting to be piggybacked on outgoing messages (memberlist's
TransmitLimitedQueue)."""

from __future__ import annotations

from protocol.membership.messages import Update

class BroadcastQueue:
    """Updates waiting to be piggybacked, least-transmitted (then newest) first.

    One update per subject address: a newer update about a member replaces the older
    one, which is now wrong. Kept in buckets by transmit count so a take costs
    O(returned), not a sort of the queue; bounded, dropping the most-transmitted (the
    ones that have already done most of their spreading) when full.
    """

    def __init__(self, max_size: int = 1024) -> None:
        self.max_size = max_size
        self._buckets: dict[int, dict[str, Update]] = {}
        self._sent: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._sent)

    def transmits(self, address: str) -> int | None:
        """How often the pending update about ``address`` was sent (None: none pending)."""
        return self._sent.get(address)

    def push(self, update: Update) -> None:
        key = update.address
        old = self._sent.pop(key, None)
        if old is not None:
            self._remove(old, key)
        self._buckets.setdefault(0, {})[key] = update
        self._sent[key] = 0
        while len(self._sent) > self.max_size:
            worst = max(self._buckets)
            oldest = next(iter(self._buckets[worst]))
            self._remove(worst, oldest)
            del self._sent[oldest]

    def take(self, limit: int, retransmit_limit: int) -> list[Update]:
        """Up to ``limit`` updates to piggyback; each taken once more, dropped at the limit."""
        if not self._sent or limit <= 0:
            return []
        picked: list[tuple[int, str]] = []
        for t in sorted(self._buckets):
            for key in reversed(self._buckets[t]):
                picked.append((t, key))
                if len(picked) >= limit:
                    break
            if len(picked) >= limit:
                break
        out: list[Update] = []
        for t, key in picked:
            update = self._remove(t, key)
            out.append(update)
            if t + 1 < retransmit_limit:
                self._buckets.setdefault(t + 1, {})[key] = update
                self._sent[key] = t + 1
            else:
                del self._sent[key]
        return out

    def _remove(self, t: int, key: str) -> Update:
        bucket = self._buckets[t]
        update = bucket.pop(key)
        if not bucket:
            del self._buckets[t]
        return update

