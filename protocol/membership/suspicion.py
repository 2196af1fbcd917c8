"""One suspect's Lifeguard timer: the deadline falls as independent accusers confirm."""

from __future__ import annotations

from protocol.membership.config import suspicion_timeout

class Suspicion:
    """One suspect's timer: when it was suspected, by whom, and its current deadline."""

    __slots__ = ("start", "incarnation", "expected", "floor", "ceiling", "accusers", "deadline", "corroborated")

    def __init__(self, accuser: str, incarnation: int, start: float, expected: int,
                 floor: float, ceiling: float) -> None:
        self.start = start
        self.incarnation = incarnation
        self.expected = expected
        self.floor = floor
        self.ceiling = ceiling
        self.accusers = {accuser}
        self.corroborated = False
        self.deadline = start + suspicion_timeout(0, expected, floor, ceiling)

    @property
    def confirmations(self) -> int:
        return len(self.accusers) - 1

    def corroborate(self) -> None:
        """Another member declared the suspect dead: wait no longer than the floor from
        our own first accusation — the time memberlist grants any suspect to refute."""
        self.corroborated = True
        self.deadline = min(self.deadline, self.start + self.floor)

    def confirm(self, accuser: str) -> bool:
        """Count an independent accuser; True if it was new (then it is worth re-gossiping)."""
        if accuser in self.accusers or self.confirmations >= self.expected:
            return False
        self.accusers.add(accuser)
        if not self.corroborated:
            self.deadline = self.start + suspicion_timeout(self.confirmations, self.expected,
                                                           self.floor, self.ceiling)
        return True
