"""SWIM between real peer processes on loopback: crash, pause, graceful leave.

Probe period 0.5 s. Each behaviour runs on 4 peers by default and on 8 (the issue's
setting) under ``-m slow``. Times are read from the peers' own JSON logs (the moment a
view changed inside a peer), not from how fast the test happens to poll.

The observers (all peers but one) are started once per size and shared by the module's
tests; each test adds its own victim, waits until all of them see each other alive, and
ends with the victim gone (killed, left, or stopped), so the next test finds the same
formed swarm. A peer start costs seconds of CPU (torch, grpc), a swarm per test tripled it.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from peer.runtime.membership import read_events
from peer.tools.procs import PeerProcess, free_ports, wait_for
from tests.conftest import COMMON_PEER_ARGS, running_peers, stop_peers

PERIOD = 0.5
SIZES = [4, pytest.param(8, marks=pytest.mark.slow)]


def swarm_args(i: int, seeds: list[str]) -> list[str]:
    """Light training and slow model gossip: the CPU (2 cores, up to 8 peers) is for the detector."""
    return ["--seeds", ",".join(seeds), "--seed", str(i), "--probe-period", str(PERIOD), "--log-json",
            "--steps-per-second", "2", "--gossip-interval", "2"]


def view(peer: PeerProcess) -> dict[str, tuple[str, int]]:
    """peer id -> (state, incarnation) as ``peer`` sees the swarm."""
    with peer.admin() as client:
        return {m.peer_id: (m.state, m.incarnation) for m in client.list_peers().peers}


def views(peers: list[PeerProcess]) -> list[dict[str, tuple[str, int]]]:
    with ThreadPoolExecutor(len(peers)) as pool:
        return list(pool.map(view, peers))


def all_see(observers: list[PeerProcess], subject: PeerProcess, state: str, min_incarnation: int = 0) -> bool:
    return all(v.get(subject.peer_id, ("", -1))[0] == state and v[subject.peer_id][1] >= min_incarnation
               for v in views(observers))


def formed(peers: list[PeerProcess]) -> bool:
    """Every peer holds every other one alive (and no one else: earlier victims are gone)."""
    want = {p.peer_id for p in peers}
    return all({pid for pid, (state, _) in v.items() if state == "alive"} == want - {p.peer_id}
               for p, v in zip(peers, views(peers)))


@pytest.fixture(scope="module", params=SIZES, ids=lambda count: str(count))
def observers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[PeerProcess]]:
    """All peers of a swarm of ``count`` but the victim, formed, shared by the module's tests."""
    count: int = request.param
    with running_peers(count - 1, tmp_path_factory.mktemp(f"swarm-{count}"), swarm_args) as peers:
        wait_for(lambda: formed(peers), timeout=60, what="every peer to see every other alive")
        yield peers


@pytest.fixture
def swarm(observers: list[PeerProcess], request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[PeerProcess]]:
    """The shared observers plus a victim of this test's own (last), all seeing each other alive.
    The victim is stopped at the end if the test left it running."""
    gossip_port, admin_port = free_ports(2)
    name = request.node.originalname.removeprefix("test_a_").split("_")[0]  # sigkilled, paused, graceful
    seeds = [p.gossip_address for p in observers]
    victim = PeerProcess(f"victim-{name}", gossip_port, admin_port,
                         [*COMMON_PEER_ARGS, *swarm_args(len(observers), seeds)], tmp_path / "victim.log")
    try:
        victim.start().wait_ready(90)
        peers = [*observers, victim]
        wait_for(lambda: formed(peers), timeout=60, what="every peer to see every other alive")
        yield peers
    finally:
        stop_peers([victim])
    # The next test's formed() requires the observers to hold this victim as not alive.
    wait_for(lambda: all(v.get(victim.peer_id, ("left", 0))[0] != "alive" for v in views(observers)),
             timeout=30, what=f"the observers to see {victim.peer_id} gone")


def last_transition(observers: list[PeerProcess], subject: PeerProcess, new: str, since: float) -> float:
    """When the last of ``observers`` logged ``subject`` turning ``new`` (wall clock)."""
    ids = {p.peer_id for p in observers}
    first_per_observer: dict[str, float] = {}
    for e in read_events(p.log_path for p in observers):
        if e.address == subject.gossip_address and e.new == new and e.at >= since and e.observer in ids:
            first_per_observer[e.observer] = min(e.at, first_per_observer.get(e.observer, e.at))
    assert set(first_per_observer) == ids, f"no '{new}' event logged by {ids - set(first_per_observer)}"
    return max(first_per_observer.values())


def test_a_sigkilled_peer_is_marked_dead_by_every_other_peer(swarm: list[PeerProcess]) -> None:
    peers, count = swarm, len(swarm)
    victim, others = peers[-1], peers[:-1]
    killed_at = time.time()
    victim.signal(signal.SIGKILL)
    wait_for(lambda: all_see(others, victim, "dead"), timeout=30, interval=0.1,
             what="every peer to mark the killed one dead")
    detection = last_transition(others, victim, "dead", killed_at) - killed_at
    print(f"{count} peers: SIGKILL detected by all {len(others)} others in {detection:.2f} s")
    assert detection <= 8.0, f"detection took {detection:.2f} s (budget 8 s)"
    assert all(v[p.peer_id][0] == "alive" for v in views(others) for p in others if p.peer_id in v), \
        "a running peer was not alive in someone's view"


def test_a_paused_peer_is_declared_dead_then_refutes_after_sigcont(swarm: list[PeerProcess]) -> None:
    peers, count = swarm, len(swarm)
    victim, others = peers[-1], peers[:-1]
    before = max(v[victim.peer_id][1] for v in views(others))
    victim.signal(signal.SIGSTOP)
    try:
        # Dead everywhere means it was paused longer than the suspicion timeout.
        wait_for(lambda: all_see(others, victim, "dead"), timeout=30, interval=0.1,
                 what="every peer to declare the paused one dead")
    finally:
        victim.signal(signal.SIGCONT)
    resumed_at = time.time()
    wait_for(lambda: all_see(others, victim, "alive", min_incarnation=before + 1), timeout=30, interval=0.1,
             what="the resumed peer to refute (alive at a higher incarnation) everywhere")
    refuted = last_transition(others, victim, "alive", resumed_at) - resumed_at
    print(f"{count} peers: alive everywhere {refuted:.2f} s after SIGCONT")
    wait_for(lambda: formed(peers), timeout=30, what="the resumed peer to see everyone alive again")


def test_a_graceful_leave_is_seen_as_left_by_all_within_two_periods(swarm: list[PeerProcess]) -> None:
    peers, count = swarm, len(swarm)
    leaver, others = peers[-1], peers[:-1]
    asked_at = time.time()
    with leaver.admin() as client:
        client.leave()
    wait_for(lambda: all_see(others, leaver, "left"), timeout=15, interval=0.1, what="every peer to see the leave")
    started = [t for t in _leave_records(leaver) if t >= asked_at]
    assert started, "the leaver did not log its leave"
    spread = last_transition(others, leaver, "left", asked_at) - started[0]
    print(f"{count} peers: leave seen by all {len(others)} others {spread:.2f} s after it was announced")
    assert spread <= 2 * PERIOD, f"the leave took {spread:.2f} s to reach everyone (2 periods = {2 * PERIOD} s)"
    assert leaver.proc is not None and leaver.proc.wait(timeout=30) == 0
    assert not any(e.new == "dead" for e in read_events(p.log_path for p in others)
                   if e.address == leaver.gossip_address), \
        "a peer that left was declared dead"


def _leave_records(peer: PeerProcess) -> list[float]:
    """Wall-clock times at which ``peer`` logged that it was leaving."""
    out = []
    for line in Path(peer.log_path).read_text(errors="replace").splitlines():
        if line.startswith("{") and "membership: leaving" in line:
            out.append(float(json.loads(line)["ts"]))
    return out
