"""The membership simulator: SWIM at swarm scale on a virtual clock, with loss and delay.

Small and seeded by default (CI has 2 cores); the long runs are marked slow.
"""

from __future__ import annotations

import math

import pytest

from peer.sim.membership import MembershipSim, measure
from protocol.membership import MemberState, StateCode, SwimConfig, suspicion_bounds

ALIVE, DEAD_OR_LEFT = (StateCode.ALIVE,), (StateCode.DEAD, StateCode.LEFT)


def test_fifty_nodes_with_one_percent_loss_agree_on_a_crash_within_a_log_n_bound() -> None:
    n = 50
    sim = MembershipSim(n, loss=0.01, seed=1)
    sim.run_until(5.0)
    sim.crash(17)
    took = sim.periods_until(lambda: sim.known_by_all(17, DEAD_OR_LEFT), limit=100)
    floor, start = suspicion_bounds(n, SwimConfig())
    # First probe (~1 period) + the Lifeguard timeout (start shrinking to its floor
    # as confirmations arrive) + dissemination, all of which scale with log n.
    assert took is not None and took <= start + 3 * math.log(n + 1)
    assert took >= floor  # nobody may declare it before the floor
    assert sim.stats.false_deaths == 0


def test_fifty_nodes_with_one_percent_loss_have_no_false_deaths_over_300_periods() -> None:
    sim = MembershipSim(50, loss=0.01, seed=2)
    sim.run_until(300.0)
    assert sim.stats.false_deaths == 0
    assert sim.stats.messages_lost > 0  # the loss really happened
    assert all(sim.known_by_all(i, ALIVE) for i in range(50))


def test_heavy_loss_causes_suspicions_that_are_refuted_not_deaths() -> None:
    sim = MembershipSim(40, loss=0.05, seed=3)
    sim.run_until(200.0)
    assert sim.stats.false_suspicions > 0  # 5 % loss makes some probes fail on all paths
    assert sim.stats.false_deaths == 0
    assert sum(n.refutations for n in sim.nodes) > 0


def test_even_a_false_death_under_extreme_loss_is_repaired() -> None:
    sim = MembershipSim(40, loss=0.15, seed=3)
    sim.run_until(200.0)
    assert sim.stats.false_deaths > 0  # 15 % loss: gossip misses a refutation now and then
    sim.loss = 0.0
    sim.run_until(260.0)
    assert all(sim.known_by_all(i, ALIVE) for i in range(40))


def test_a_join_reaches_every_node_within_a_few_periods() -> None:
    sim = MembershipSim(80, loss=0.01, seed=4)
    sim.run_until(3.0)
    j = sim.join([5])
    took = sim.periods_until(lambda: sim.known_by_all(j, ALIVE), limit=50)
    assert took is not None and took <= 2 * math.log(81)
    assert {m.address for m in sim.nodes[j].live()} == {n.address for n in sim.nodes[:80]}


def test_dissemination_time_grows_like_log_n() -> None:
    small = measure(20, loss=0.01, seed=5)
    large = measure(300, loss=0.01, seed=5)
    for r in (small, large):
        assert r.join_periods is not None and r.crash_periods is not None and r.false_deaths == 0
    # 15x the nodes: a log-n protocol takes at most ~log(301)/log(21) ≈ 1.9x as long
    # (we allow 2.5x), a linear one would take 15x.
    assert large.crash_periods <= 2.5 * small.crash_periods
    assert large.join_periods <= small.join_periods + 2 * math.log(301)


def test_a_paused_node_is_declared_dead_then_refutes_when_it_resumes() -> None:
    n = 30
    sim = MembershipSim(n, loss=0.01, seed=6)
    sim.run_until(3.0)
    floor, start = suspicion_bounds(n, SwimConfig())
    sim.pause(9, duration=start + 15)
    assert sim.periods_until(lambda: sim.known_by_all(9, DEAD_OR_LEFT), limit=start + 14) is not None
    sim.run_until(sim.paused[9] + 0.01)  # SIGCONT
    took = sim.periods_until(lambda: sim.known_by_all(9, ALIVE), limit=30)
    assert took is not None and took <= 10
    assert sim.nodes[9].incarnation >= 1


def test_a_short_pause_is_no_death() -> None:
    n = 30
    sim = MembershipSim(n, loss=0.01, seed=7)
    sim.run_until(3.0)
    floor, _ = suspicion_bounds(n, SwimConfig())
    sim.pause(4, duration=floor / 2)
    sim.run_until(60.0)
    assert sim.stats.deaths == 0 and sim.known_by_all(4, ALIVE)


def test_a_graceful_leave_reaches_everyone_within_two_periods() -> None:
    # Messages authenticated (a keyring): every member's relay of the leave is believed.
    sim = MembershipSim(40, loss=0.01, seed=8, config=SwimConfig(authenticated=True))
    sim.run_until(4.0)
    sim.leave(11)
    took = sim.periods_until(lambda: sim.known_by_all(11, (StateCode.LEFT,)), limit=10, step=0.5)
    assert took is not None and took <= 2
    sim.run_until(60.0)
    assert sim.stats.deaths == 0  # a leave is never mistaken for a death


def test_without_a_keyring_the_leaver_tells_everyone_itself_within_two_periods() -> None:
    """Unauthenticated, a relayed leave is only a hint, so the leaver sends its Leave to
    every live member itself: the same two periods as with a keyring."""
    sim = MembershipSim(40, loss=0.01, seed=8)
    sim.run_until(4.0)
    sim.leave(11)
    took = sim.periods_until(lambda: sim.known_by_all(11, (StateCode.LEFT,)), limit=10, step=0.5)
    assert took is not None and took <= 2
    sim.run_until(60.0)
    assert sim.stats.deaths == 0


def test_without_a_keyring_a_relayed_leave_is_checked_and_is_still_no_death() -> None:
    """Only the leaver's own word counts: a relay makes us ask it; whoever asked too late
    (it has gone) buries it as left, not dead, when its own suspicion runs out."""
    sim = MembershipSim(40, loss=0.01, seed=8)
    sim.run_until(4.0)
    sim.leave(11)
    leaver = sim.nodes[11].address
    sim.run_until(6.0)  # two periods: the leaver answered nearly everyone who asked
    views = [n.state_of(leaver) for i, n in enumerate(sim.nodes) if i != 11]
    assert sum(v is MemberState.LEFT for v in views) >= 0.9 * len(views)  # measured: 38 of 39
    for _ in range(170):  # to 90 s: left (or forgotten after that), never dead
        sim.run_until(sim.now + 0.5)
        assert all(n.state_of(leaver) in (MemberState.ALIVE, MemberState.SUSPECT, MemberState.LEFT, None)
                   for n in sim.nodes)
    assert sim.stats.deaths == 0
    assert all(n.state_of(leaver) in (MemberState.LEFT, None) for i, n in enumerate(sim.nodes) if i != 11)


def test_a_partition_is_seen_as_deaths_and_heals_through_reconnects() -> None:
    sim = MembershipSim(24, loss=0.0, seed=9)
    sim.run_until(3.0)
    side_b = set(range(16, 24))
    sim.partition(side_b)
    sim.run_until(60.0)
    a = sim.nodes[0]
    assert all(a.state_of(sim.nodes[i].address) is MemberState.DEAD for i in side_b)
    sim.heal()
    took = sim.periods_until(lambda: all(sim.known_by_all(i, ALIVE) for i in range(24)), limit=60)
    assert took is not None and took <= 30


def test_the_simulation_is_deterministic() -> None:
    a = measure(30, loss=0.02, seed=10)
    b = measure(30, loss=0.02, seed=10)
    assert (a.join_periods, a.crash_periods, a.events, a.messages) == \
        (b.join_periods, b.crash_periods, b.events, b.messages)


@pytest.mark.slow
def test_a_thousand_nodes_with_one_percent_loss_have_no_false_deaths_over_2000_periods() -> None:
    r = measure(1000, loss=0.01, seed=11, periods=2000.0)
    assert r.false_deaths == 0
    assert r.crash_periods is not None and r.crash_periods <= 4 * math.log(1001) + 10
