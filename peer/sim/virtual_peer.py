"""One simulated peer: a real ``Trainer`` and the daemon's own ``GossipEngine``.

Its own module so that the simulator (peer/sim/swarm.py) and the attackers
(peer/sim/attacks.py) can both name it without importing each other.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from peer.runtime.gossip import GossipEngine
from peer.runtime.trainer import Trainer


@dataclass
class VirtualPeer:
    """One simulated peer: a real Trainer and the daemon's GossipEngine."""

    index: int
    trainer: Trainer
    neighbours: list[int]
    speed: float
    rng: random.Random
    bytes_sent: int = 0
    engine: GossipEngine | None = None
    up: bool = True
    name: str = ""   # peer id; default sim-<index>
    addr: str = ""   # gossip address; default sim:<index>

    @property
    def peer_id(self) -> str:
        return self.name or f"sim-{self.index}"

    @property
    def address(self) -> str:
        return self.addr or f"sim:{self.index}"
