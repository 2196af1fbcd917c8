"""A stranger's share of our model is bounded: capped sample claims, weight earned over time.

A received model's weight rests on two claims its sender makes: how many samples back
it (``weighted`` gives weight in proportion, so one packet claiming 2^64 − 1 samples
replaced the model) and, implicitly, that it is a peer worth listening to at all (the
``vc`` rule moves us halfway towards whatever arrives). Neither claim costs anything.
``Stakes`` bounds both:

* **Sample counts are capped by what the swarm has seen**: ``cap_factor`` × the median
  of the latest count claimed by each *established* sender (and our own). A sender only
  counts towards the median once established, so a stranger rotating identities, each
  claiming a huge count, never moves the cap.
* **A first-contact sender earns its weight**: its ``stake`` starts at ``1 / ramp`` and
  grows by ``1 / ramp`` per contribution the merge rule took (verdict ok), to 1 after
  ``ramp`` of them. A refused contribution earns nothing. The stake scales the share of
  our model the received models take (``protocol.merge.vc_mixing_weights``): a fresh
  identity moves us at most ``(1 − β) / ramp`` per packet (25 % with the defaults).

``ramp`` is 2, not more: in bench/byzantine.py's swarm (16 peers, 40 rounds) a peer
hears from each other peer only about five times. Measured there without an attack
(bristle+loss+rep, while refused models were kept out of its history): ramp 8 ended at
0.756, ramp 2 at 0.806; with the history as it is, ramp 2 ends at 0.938 (0.940 before
stakes existed).

Pure bookkeeping, keyed on the sender's identity (peer/transport/identity.py), bounded
memory (least recently heard forgotten first).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from protocol.merge import Contribution, Verdict


@dataclass(frozen=True)
class StakeConfig:
    cap_factor: float = 2.0   # claimed samples capped at this × the median established claim
    ramp: int = 2             # contributions taken before a new sender counts in full
    max_peers: int = 4096

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cap_factor) and self.cap_factor >= 1):
            raise ValueError(f"cap_factor must be finite and >= 1, got {self.cap_factor}")
        if self.ramp < 1 or self.max_peers < 1:
            raise ValueError("ramp and max_peers must be at least 1")


@dataclass(slots=True)
class _Sender:
    taken: int = 0
    claimed: int = 0


class Stakes:
    """What each sender has earned, and the cap on claimed sample counts."""

    def __init__(self, config: StakeConfig | None = None) -> None:
        self.config = config or StakeConfig()
        self._senders: OrderedDict[str, _Sender] = OrderedDict()

    def _get(self, sender: str) -> _Sender:
        s = self._senders.get(sender)
        if s is None:
            s = self._senders[sender] = _Sender()
            while len(self._senders) > self.config.max_peers:
                self._senders.popitem(last=False)
        self._senders.move_to_end(sender)
        return s

    def stake(self, sender: str) -> float:
        """The share multiplier for ``sender``'s next model, in (0, 1]."""
        s = self._senders.get(sender)
        taken = s.taken if s is not None else 0
        return min(1.0, (taken + 1) / self.config.ramp)

    def cap(self, claimed: int, own: int) -> int:
        """``claimed`` capped at ``cap_factor`` × the median of established claims and ``own``."""
        claims = [s.claimed for s in self._senders.values() if s.taken >= self.config.ramp and s.claimed > 0]
        claims.append(max(own, 1))
        limit = int(self.config.cap_factor * float(np.median(claims)))
        return max(0, min(int(claimed), max(limit, 1)))

    def observe(self, sender: str, claimed: int, taken: bool) -> None:
        """A contribution from ``sender`` claiming ``claimed`` samples was merged (``taken``) or refused."""
        if not sender:
            return
        s = self._get(sender)
        s.claimed = int(claimed)
        if taken:
            s.taken += 1

    def bound(self, received: Contribution, own_samples: int) -> Contribution:
        """``received`` with its claimed samples capped and its stake set: what a merge may use."""
        return Contribution(received.tensors, samples=self.cap(received.samples, own_samples), age=received.age,
                            sender=received.sender, weight=received.weight,
                            stake=min(received.stake, self.stake(received.sender)))

    def observe_verdicts(self, verdicts: Sequence[Verdict], claims: Mapping[str, int]) -> None:
        """A merge's verdicts: every model not refused as an outlier earns its sender stake."""
        for v in verdicts:
            self.observe(v.sender, claims.get(v.sender, 0), taken=v.kind != "outlier")
