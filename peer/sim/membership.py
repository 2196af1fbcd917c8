"""Many virtual nodes running the SWIM state machine on one virtual clock.

Membership only (no models): N ``protocol.membership.Swim`` instances, one heap of
events (timers and in-flight messages, ordered by virtual time), independent message
loss and a uniform delivery delay, and injected crashes, pauses, leaves and joins.
Time is measured in probe periods (the nodes run with a 1.0 s probe interval and the
clock counts seconds), so results read directly as "periods".

What makes 10,000 nodes fit: every node's member table is two flat arrays indexed
through one shared ``AddressBook`` (5 bytes per node per member, 500 MB for 10,000²),
a formed cluster is preloaded with a C-speed fill instead of 10⁸ join messages, and
the probe order is an O(1) permutation instead of a shuffled list per node.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol.membership import (
    AddressBook,
    Output,
    Send,
    StateCode,
    Swim,
    SwimConfig,
    Timer,
)

_STOP = object()  # sentinel event: a node that left stops running


@dataclass
class SimStats:
    """What happened, counted as it happened (via the nodes' observer hook)."""

    messages_sent: int = 0
    messages_lost: int = 0
    events: int = 0
    suspicions: int = 0        # (observer, subject) transitions into SUSPECT
    false_suspicions: int = 0  # ... of a subject that was running at the time
    deaths: int = 0            # (observer, subject) transitions into DEAD
    false_deaths: int = 0      # ... of a subject that was running (not crashed, paused or gone)
    false_dead_subjects: set[int] = field(default_factory=set)


class MembershipSim:
    """A cluster of ``nodes`` SWIM nodes that already know each other (a formed swarm)."""

    def __init__(self, nodes: int, *, loss: float = 0.01, delay: tuple[float, float] = (0.005, 0.05),
                 seed: int = 0, config: SwimConfig | None = None) -> None:
        self.config = config or SwimConfig()
        self.loss = loss
        self.delay = delay
        self.rng = random.Random(seed)
        self.seed = seed
        self.book = AddressBook()
        self.nodes: list[Swim] = []
        self.now = 0.0
        self.stats = SimStats()
        self.crashed: set[int] = set()       # stopped for good (crash, or after leaving)
        self.paused: dict[int, float] = {}   # node -> virtual time it resumes
        self.left: set[int] = set()
        self.side: dict[int, int] | None = None  # node -> side of a partition (None: whole)
        self._heap: list[tuple[float, int, int, object]] = []
        self._tie = itertools.count()
        addresses = [self._address(i) for i in range(nodes)]
        for a in addresses:
            self.book.intern(a)
        for a in addresses:
            self._make(a).preload_book()
        for i in range(nodes):
            self._dispatch(i, self.nodes[i].start(0.0))

    @staticmethod
    def _address(i: int) -> str:
        return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:7946"

    def _make(self, address: str) -> Swim:
        idx = self.book.intern(address)
        assert idx == len(self.nodes), "book index and node index must agree"
        node = Swim(address, peer_id=f"p{idx}", rng=random.Random(f"{self.seed}:{idx}"),
                    config=self.config, book=self.book, track_contacts=False)
        node.observer = self._observe
        self.nodes.append(node)
        return node

    # --- the event loop ------------------------------------------------------------
    def running(self, i: int) -> bool:
        """Executing right now: not crashed, not paused, not gone after a leave."""
        return i not in self.crashed and i not in self.paused and i not in self.left

    def _observe(self, node: Swim, subject: int, old: int, new: int, now: float) -> None:
        if new == StateCode.SUSPECT:
            self.stats.suspicions += 1
            if self.running(subject):
                self.stats.false_suspicions += 1
        elif new == StateCode.DEAD:
            self.stats.deaths += 1
            if self.running(subject):
                self.stats.false_deaths += 1
                self.stats.false_dead_subjects.add(subject)

    def _dispatch(self, src: int, outs: list[Output]) -> None:
        heap, tie, now = self._heap, self._tie, self.now
        rand, loss = self.rng.random, self.loss
        lo, span = self.delay[0], self.delay[1] - self.delay[0]
        get = self.book.get
        for o in outs:
            if type(o) is Timer:
                heapq.heappush(heap, (o.at, next(tie), src, o))
                continue
            assert type(o) is Send
            self.stats.messages_sent += 1
            if rand() < loss:
                self.stats.messages_lost += 1
                continue
            dst = get(o.to)
            if dst is None or dst >= len(self.nodes) or dst in self.crashed:
                continue
            if self.side is not None and self.side.get(src, 0) != self.side.get(dst, 0):
                continue  # the link between the two halves is cut
            heapq.heappush(heap, (now + lo + span * rand(), next(tie), dst, o.message))

    def run_until(self, t: float) -> None:
        """Process every event up to virtual time ``t``."""
        heap, nodes, crashed, paused = self._heap, self.nodes, self.crashed, self.paused
        pop, stats = heapq.heappop, self.stats
        while heap and heap[0][0] <= t:
            at, _, i, item = pop(heap)
            self.now = at
            if i in crashed:
                continue
            if paused:
                resume = paused.get(i)
                if resume is not None:
                    if at < resume:
                        if type(item) is Timer:  # a stopped process's timers fire on SIGCONT
                            heapq.heappush(heap, (resume, next(self._tie), i, item))
                        continue
                    del paused[i]
            stats.events += 1
            if type(item) is Timer:
                outs = nodes[i].on_timer(item, at)
            elif item is _STOP:
                crashed.add(i)
                continue
            else:
                outs = nodes[i].on_message(item, at)  # type: ignore[arg-type]
            if outs:
                self._dispatch(i, outs)
        self.now = max(self.now, t)

    # --- fault and churn injection -------------------------------------------------
    def crash(self, i: int) -> None:
        """SIGKILL: the node stops now; messages to it are lost, its timers never fire."""
        self.crashed.add(i)

    def pause(self, i: int, duration: float) -> None:
        """SIGSTOP for ``duration``: messages meanwhile are lost, timers wait until resume."""
        self.paused[i] = self.now + duration

    def leave(self, i: int, linger: float = 1.0) -> None:
        """Graceful leave: announce, keep answering for ``linger``, then stop."""
        self._dispatch(i, self.nodes[i].leave(self.now))
        self.left.add(i)
        heapq.heappush(self._heap, (self.now + linger, next(self._tie), i, _STOP))

    def join(self, seeds: list[int]) -> int:
        """A brand-new node that knows only ``seeds`` starts now; returns its index."""
        node = self._make(self._address(len(self.nodes)))
        for s in seeds:
            node.add_seed(self.nodes[s].address)
        self._dispatch(len(self.nodes) - 1, node.start(self.now))
        return len(self.nodes) - 1

    def partition(self, side_b: set[int]) -> None:
        """Cut every link between ``side_b`` and everyone else (both directions)."""
        self.side = {i: 1 for i in side_b}

    def heal(self) -> None:
        self.side = None

    # --- observation ---------------------------------------------------------------
    def known_by_all(self, subject: int, codes: tuple[StateCode, ...]) -> bool:
        """Does every running node (other than ``subject``) hold ``subject`` in ``codes``?"""
        for i, node in enumerate(self.nodes):
            if i != subject and self.running(i) and node.state_code(subject) not in codes:
                return False
        return True

    def periods_until(self, done: Callable[[], bool], limit: float, step: float = 1.0) -> float | None:
        """Advance in ``step``s until ``done()``; the periods it took, or None past ``limit``."""
        start = self.now
        while self.now - start < limit:
            self.run_until(self.now + step)
            if done():
                return round(self.now - start, 6)
        return None


@dataclass
class Dissemination:
    """One measured run: how long a join and a crash took to reach every node."""

    nodes: int
    loss: float
    join_periods: float | None
    crash_periods: float | None
    false_deaths: int
    suspicions: int
    false_suspicions: int
    periods_run: float
    events: int
    messages: int
    wall_s: float
    setup_s: float


def measure(nodes: int, *, loss: float = 0.01, seed: int = 0, warmup: float = 3.0,
            periods: float = 0.0, limit: float = 200.0, config: SwimConfig | None = None,
            step: float = 0.25) -> Dissemination:
    """Join one node, then crash one, in a formed cluster; then run on to ``periods`` total.

    ``join_periods``: from the joiner's start until every running node holds it alive.
    ``crash_periods``: from the crash until every running node holds it dead. The rest
    of the run (up to ``periods`` in all) only counts suspicions and false deaths.
    """
    t0 = time.perf_counter()
    sim = MembershipSim(nodes, loss=loss, seed=seed, config=config)
    setup = time.perf_counter() - t0
    sim.run_until(warmup)
    pick = random.Random(seed + 1)
    joiner = sim.join([pick.randrange(nodes)])
    join_p = sim.periods_until(lambda: sim.known_by_all(joiner, (StateCode.ALIVE,)), limit, step)
    victim = pick.randrange(nodes)
    sim.crash(victim)
    crash_p = sim.periods_until(lambda: sim.known_by_all(victim, (StateCode.DEAD, StateCode.LEFT)), limit, step)
    if periods > sim.now:
        sim.run_until(periods)
    wall = time.perf_counter() - t0
    s = sim.stats
    return Dissemination(nodes=nodes, loss=loss, join_periods=join_p, crash_periods=crash_p,
                         false_deaths=s.false_deaths, suspicions=s.suspicions,
                         false_suspicions=s.false_suspicions, periods_run=round(sim.now, 3),
                         events=s.events, messages=s.messages_sent, wall_s=round(wall, 2),
                         setup_s=round(setup, 2))
