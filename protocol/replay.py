"""The replay guard: refusing replayed and stale packets, by the link updates a peer has already taken.

Every packet on a link carries a link update's ``(epoch, seq)`` (protocol.feedback) and the
sender's model version. Within one epoch an honest sender only moves forward: ``seq`` grows by
one per update the receiver applied, and the model version never falls (it bumps on
every training step and merge). So a packet whose ``(sender, epoch, seq)`` was already
taken is a replay (a duplicate from the network, or someone resending captured
bytes), and one whose model version falls within the same epoch is stale. Both are
refused before the link replica or the model is touched: ``feedback.Receiver`` would
otherwise reset the link on an old keyframe, or answer a replayed delta with our next
update and knock the real link out of sequence.

A restarted sender draws a new epoch (epochs are random 63-bit numbers), so it is
accepted at once even though its versions may start again from zero. A few epochs are
remembered per sender, so an old keyframe replayed after the link moved on is caught
too. Memory is bounded: an LRU over senders, and over epochs within each sender.

Pure bookkeeping: no clock, no I/O; the caller passes what the packet says.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from protocol.errors import Refusal


class Replayed(Refusal):
    """A link update ``(sender, epoch, seq)`` this peer has already taken."""

    reason = "replayed"


class Stale(Refusal):
    """A model version older than one this sender already sent on the same link epoch."""

    reason = "stale"


@dataclass(slots=True)
class _Seen:
    """The furthest a sender got within one epoch."""

    seq: int
    version: int


class ReplayGuard:
    """What each sender has sent us, per epoch; ``admit`` refuses what goes backwards.

    ``max_senders`` bounds the senders remembered (least recently heard from forgotten
    first: a forgotten sender's next packet is taken as fresh, which is what the
    receiver's own LRU of link replicas does anyway); ``max_epochs`` bounds the epochs
    kept per sender.
    """

    def __init__(self, max_senders: int = 256, max_epochs: int = 4) -> None:
        if max_senders < 1 or max_epochs < 1:
            raise ValueError("max_senders and max_epochs must be at least 1")
        self.max_senders = max_senders
        self.max_epochs = max_epochs
        self._senders: OrderedDict[str, OrderedDict[int, _Seen]] = OrderedDict()

    def check(self, sender: str, epoch: int, seq: int, version: int) -> None:
        """Raise ``Replayed`` or ``Stale`` if the update goes backwards; change nothing."""
        epochs = self._senders.get(sender)
        seen = epochs.get(epoch) if epochs is not None else None
        if seen is None:
            return
        if seq <= seen.seq:
            raise Replayed(f"{sender} already sent frame {seq} of link epoch {epoch:#x} (we are at {seen.seq})")
        if version < seen.version:
            raise Stale(f"{sender} sent model version {version} after {seen.version} on link epoch {epoch:#x}")

    def admit(self, sender: str, epoch: int, seq: int, version: int) -> None:
        """``check``, then remember the update as taken. Call it once the update will be
        applied (the caller holds the link, so nothing else moves it meanwhile)."""
        self.check(sender, epoch, seq, version)
        self.note(sender, epoch, seq, version)

    def note(self, sender: str, epoch: int, seq: int, version: int) -> None:
        """Remember an update taken without ``check`` (e.g. a reply to an exchange we
        started: its link advances too, so a later replay of it must be caught)."""
        epochs = self._senders.get(sender)
        if epochs is None:
            epochs = self._senders[sender] = OrderedDict()
            while len(self._senders) > self.max_senders:
                self._senders.popitem(last=False)
        self._senders.move_to_end(sender)
        seen = epochs.get(epoch)
        if seen is None:
            epochs[epoch] = _Seen(seq, version)
            while len(epochs) > self.max_epochs:
                epochs.popitem(last=False)
        else:
            seen.seq = max(seen.seq, seq)
            seen.version = max(seen.version, version)
        epochs.move_to_end(epoch)

    def forget(self, sender: str) -> None:
        self._senders.pop(sender, None)

    def __len__(self) -> int:
        return len(self._senders)
