"""Received models waiting to be merged together: one pure buffer for the daemon and the simulator.

Two things merge several received models at once instead of one per exchange:

- batch rules (``median``, ``trimmed``: ``protocol.merge.base.merge_batch(rule) > 1``) want a
  full batch of *distinct* senders, or one peer could fill it alone;
- Epidemic Learning (``--mode gossip --fanout s``, de Vos et al. 2023) merges every model
  received since the peer's last merge in one variance-corrected merge of K inputs.

Both keep, per sender, only its newest model, and age each model by the receiver's local
steps since it arrived (``Contribution.age``, which the rules discount). The buffer holds
no lock and no clock: the caller (``peer.runtime.defence``) serialises access and says when.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from protocol.merge.base import Contribution


@dataclass
class PendingModels:
    """Sender -> (its newest received model, the receiver's step count when it arrived)."""

    _pending: dict[str, tuple[Contribution, int]] = field(default_factory=dict)

    def add(self, received: Contribution, steps: int) -> None:
        """Keep ``received`` as its sender's newest model (replacing an older one)."""
        self._pending[received.sender] = (received, steps)

    def __len__(self) -> int:
        return len(self._pending)

    def held_bytes(self) -> int:
        """Bytes of the buffered models' tensors (each a snapshot of its own)."""
        return sum(x.nbytes for c, _ in self._pending.values() for x in c.tensors.values())

    def take(self, steps: int) -> list[Contribution]:
        """Every buffered model, sorted by sender, aged by ``steps`` minus its arrival; empties the buffer."""
        batch = [replace(c, age=c.age + max(steps - at, 0)) for _, (c, at) in sorted(self._pending.items())]
        self._pending.clear()
        return batch

    def take_if_full(self, batch: int, steps: int) -> list[Contribution] | None:
        """``take(steps)`` once models from ``batch`` senders are buffered; otherwise None."""
        return self.take(steps) if len(self._pending) >= batch else None
