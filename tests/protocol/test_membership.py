"""SWIM + Lifeguard state machine: detection, refutation, incarnation rules, Lifeguard
timeouts and local health, dissemination, leave, and the wire codec's hostile-input
contract. Every run is seeded; the little network below is a heap of events on a
virtual clock (no sleeps, no threads)."""

from __future__ import annotations

import heapq
import itertools
import math
import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import MalformedPacket, PacketTooLarge, TruncatedPacket, UnsupportedVersion, WireError
from protocol.membership import (
    Ack,
    Alive,
    BroadcastQueue,
    Dead,
    Gossip,
    Leave,
    MemberEntry,
    MemberState,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Send,
    Source,
    Suspect,
    Swim,
    SwimConfig,
    Timer,
    TimerKind,
    push_pull_scale,
    retransmit_limit,
    suspicion_bounds,
    suspicion_timeout,
)
from protocol.membership.wire import MembershipLimits, from_wire, to_wire

CFG = SwimConfig()  # 1 s period: virtual seconds read as periods


class Net:
    """A few Swim nodes wired through a virtual clock; messages take ``delay`` seconds.

    ``drop(src, dst, msg)`` decides losses; ``down`` nodes neither run nor receive.
    Every message goes through the wire codec, so the codec is exercised end to end.
    """

    def __init__(self, n: int, seed: int = 0, config: SwimConfig = CFG, formed: bool = True,
                 delay: float = 0.01) -> None:
        self.config = config
        self.delay = delay
        self.now = 0.0
        self.heap: list[tuple[float, int, int, object]] = []
        self.tie = itertools.count()
        self.down: set[int] = set()
        self.drop = lambda src, dst, msg: False
        self.sent: list[tuple[int, Send]] = []
        self.nodes = [Swim(f"n{i}", f"id{i}", rng=random.Random(seed * 1000 + i), config=config)
                      for i in range(n)]
        self.index = {node.address: i for i, node in enumerate(self.nodes)}
        if formed:
            for node in self.nodes:
                node.preload(x.address for x in self.nodes)
        for i, node in enumerate(self.nodes):
            self.emit(i, node.start(0.0))

    def add(self, seed_index: int) -> int:
        i = len(self.nodes)
        node = Swim(f"n{i}", f"id{i}", rng=random.Random(10_000 + i), config=self.config)
        node.add_seed(self.nodes[seed_index].address)
        self.nodes.append(node)
        self.index[node.address] = i
        self.emit(i, node.start(self.now))
        return i

    def emit(self, src: int, outs: list) -> None:
        for o in outs:
            if isinstance(o, Timer):
                heapq.heappush(self.heap, (o.at, next(self.tie), src, o))
            else:
                self.sent.append((src, o))
                dst = self.index.get(o.to)
                if dst is None or dst in self.down or self.drop(src, dst, o.message):
                    continue
                wire = to_wire(o.message)
                heapq.heappush(self.heap, (self.now + self.delay, next(self.tie), dst, wire))

    def run(self, until: float) -> None:
        while self.heap and self.heap[0][0] <= until:
            at, _, i, item = heapq.heappop(self.heap)
            self.now = at
            if i in self.down:
                continue
            node = self.nodes[i]
            if isinstance(item, Timer):
                self.emit(i, node.on_timer(item, at))
            else:
                self.emit(i, node.on_message(from_wire(item), at))
        self.now = until

    def views(self, subject: int) -> list[MemberState | None]:
        addr = self.nodes[subject].address
        return [n.state_of(addr) for i, n in enumerate(self.nodes) if i != subject and i not in self.down]


def deaths_of_live_nodes(net: Net) -> int:
    """(observer, subject) pairs where a running node holds a running node dead."""
    return sum(1 for i in range(len(net.nodes)) if i not in net.down
               for s in net.views(i) if s is MemberState.DEAD)


# --- detection --------------------------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(n=st.integers(3, 12), seed=st.integers(0, 2**16), victim=st.integers(0, 11))
def test_a_crashed_node_is_declared_dead_by_every_other_node(n: int, seed: int, victim: int) -> None:
    net = Net(n, seed)
    victim %= n
    net.run(3.0)
    net.down.add(victim)
    floor, start = suspicion_bounds(n, CFG)
    # Bound: a full probe round (every node probes every member once per n−1 periods),
    # the whole start timeout (no confirmations needed), and a few periods to spread.
    net.run(3.0 + (n - 1) + 2 + start + 4)
    assert all(s is MemberState.DEAD for s in net.views(victim))
    assert deaths_of_live_nodes(net) == 0


def test_detection_uses_confirmations_to_beat_the_start_timeout() -> None:
    net = Net(10, seed=3)
    net.run(2.0)
    net.down.add(4)
    floor, start = suspicion_bounds(10, CFG)
    t0 = net.now
    while not all(s is MemberState.DEAD for s in net.views(4)):
        net.run(net.now + 0.25)
        assert net.now - t0 < 60
    # Several nodes probe the crashed one independently; their suspicions confirm each
    # other, so death comes well before first-suspicion + start timeout.
    assert net.now - t0 < start + 3
    assert max(n.suspicions_raised for n in net.nodes) >= 1


def test_a_suspected_live_node_refutes_and_stays_alive() -> None:
    net = Net(8, seed=1)
    net.run(2.0)
    # A false accusation lands on node 0 about node 5 (which is perfectly fine).
    net.emit(5, [Send("n0", Gossip("n5", (Suspect("n5", 0, "n5"),)))])
    net.run(3.0)
    net.run(30.0)
    assert net.nodes[5].incarnation >= 1
    assert all(s is MemberState.ALIVE for s in net.views(5))
    assert net.nodes[5].refutations >= 1
    assert deaths_of_live_nodes(net) == 0


def test_the_accused_node_itself_outbids_the_accusation() -> None:
    node = Swim("me", "id", rng=random.Random(0))
    node.start(0.0)
    node.on_message(Gossip("x", (Suspect("me", 7, "x"),)), 1.0)
    assert node.incarnation == 8 and node.health == 1  # being suspected costs local health
    node.on_message(Gossip("x", (Dead("me", 8, "x"),)), 2.0)
    assert node.incarnation == 9 and node.state_of("me") is MemberState.ALIVE
    node.on_message(Gossip("x", (Suspect("me", 3, "x"),)), 3.0)  # stale: ignored
    assert node.incarnation == 9


# --- incarnation ordering -----------------------------------------------------------

# With only "me" and x live, a suspicion expects no confirmations and lasts its floor.
_FLOOR_2 = suspicion_bounds(2, CFG)[0]


def _reference(cur: tuple[str, int, float] | None, u, t: float) -> tuple[str, int, float] | None:
    """SWIM's precedence rules, written out plainly, for one member: (state, incarnation,
    suspicion deadline). A Dead from another member is an accusation, as a Suspect is:
    only the suspicion running out here buries the member (issue 14)."""
    if cur is not None and cur[0] == "suspect" and cur[2] <= t:
        cur = ("dead", cur[1], math.inf)  # the suspicion timer fired before this message
    if cur is None:
        return ("alive", u.incarnation, math.inf) if isinstance(u, Alive) else None
    state, inc, deadline = cur
    if isinstance(u, Alive):
        return ("alive", u.incarnation, math.inf) if u.incarnation > inc else cur
    if state in ("dead", "left") or u.incarnation < inc:
        return cur
    if isinstance(u, (Suspect, Dead)):
        return cur if state == "suspect" and u.incarnation == inc else ("suspect", u.incarnation, t + _FLOOR_2)
    return ("left", u.incarnation, math.inf)


_updates_about_x = st.lists(st.one_of(
    st.builds(Alive, st.just("x"), st.just("idx"), st.integers(0, 6)),
    st.builds(Suspect, st.just("x"), st.integers(0, 6), st.sampled_from(["a", "b", "c"])),
    st.builds(Dead, st.just("x"), st.integers(0, 6), st.sampled_from(["a", "b"])),
    st.builds(Leave, st.just("x"), st.integers(0, 6)),
), max_size=25)


@settings(max_examples=200, deadline=None)
@given(updates=_updates_about_x)
def test_incarnation_ordering_matches_the_swim_rules(updates: list) -> None:
    # Authenticated messages: a member's relay of x's Leave is believed, as SWIM has it
    # (without a keyring the relay is checked with x first; test_membership_hardening.py).
    node = Swim("me", rng=random.Random(0), config=SwimConfig(authenticated=True))
    node.start(0.0)
    timers: list[tuple[float, int, Timer]] = []
    tie = itertools.count()
    expected = None
    last_inc = -1
    for t, u in enumerate(updates):
        while timers and timers[0][0] <= t:  # the suspicion timers due by now fire first
            _, _, timer = heapq.heappop(timers)
            node.on_timer(timer, timer.at)
        for o in node.on_message(Gossip("a", (u,)), float(t)):
            if isinstance(o, Timer) and o.kind == TimerKind.SUSPICION:
                heapq.heappush(timers, (o.at, next(tie), o))
        expected = _reference(expected, u, float(t))
        got = node.state_of("x")
        assert (got.value if got else None, node.incarnation_of("x")) == \
            ((expected[0], expected[1]) if expected else (None, None))
        inc = node.incarnation_of("x")
        if inc is not None:
            assert inc >= last_inc  # incarnations never go back
            last_inc = inc


def test_dead_is_not_resurrected_by_an_old_alive_but_is_by_a_newer_one() -> None:
    node = Swim("me", rng=random.Random(0))
    node.start(0.0)
    node.on_message(Gossip("a", (Alive("x", "idx", 2), Dead("x", 2, "a"))), 1.0)
    deadline = node.suspicion_deadline("x")  # a Dead from another member: suspected until then
    node.on_timer(Timer(deadline, TimerKind.SUSPICION, node.book.get("x")), deadline)
    node.on_message(Gossip("a", (Alive("x", "idx", 2),)), deadline + 1.0)
    assert node.state_of("x") is MemberState.DEAD
    node.on_message(Gossip("a", (Alive("x", "idx", 3),)), deadline + 2.0)
    assert node.state_of("x") is MemberState.ALIVE and node.get("x").peer_id == "idx"


# --- Lifeguard suspicion timeouts ----------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 100_000), k=st.integers(0, 6), c=st.integers(0, 8))
def test_suspicion_timeout_shrinks_with_confirmations_never_below_its_floor(n: int, k: int, c: int) -> None:
    floor, start = suspicion_bounds(n, CFG)
    assert floor <= start
    t = suspicion_timeout(c, k, floor, start)
    assert floor - 1e-9 <= t <= start + 1e-9
    assert suspicion_timeout(c + 1, k, floor, start) <= t + 1e-9
    if k >= 1 and c >= k:
        assert t == pytest.approx(floor)
    if k >= 1 and c == 0:
        assert t == pytest.approx(start)


def test_suspicion_bounds_are_the_documented_formulas() -> None:
    floor, start = suspicion_bounds(1000, CFG)
    assert floor == pytest.approx(4 * 3.0)  # 4·log10(1000) periods
    assert start == pytest.approx(4 * math.log(1001))  # 4·ln(n+1) periods
    f8, s8 = suspicion_bounds(8, SwimConfig.for_period(0.5))
    assert f8 == pytest.approx(2.0) and s8 == pytest.approx(4 * math.log(9) * 0.5)


def test_confirmations_pull_a_suspects_deadline_in_but_not_below_the_floor() -> None:
    node = Swim("me", rng=random.Random(0))
    node.preload([f"m{i}" for i in range(20)])
    node.start(0.0)
    floor, start = suspicion_bounds(node.live_count, CFG)
    node.on_message(Gossip("m1", (Suspect("m9", 0, "m1"),)), 10.0)
    assert node.suspicion_deadline("m9") == pytest.approx(10.0 + start)
    deadlines = [node.suspicion_deadline("m9")]
    for accuser in ["m1", "m2", "m2", "m3", "m4", "m5"]:  # m1 again and m2 twice: not independent
        node.on_message(Gossip(accuser, (Suspect("m9", 0, accuser),)), 11.0)
        deadlines.append(node.suspicion_deadline("m9"))
    assert deadlines[1] == deadlines[0]  # the first accuser again
    assert deadlines[2] < deadlines[1] and deadlines[3] == deadlines[2]
    assert deadlines[4] == pytest.approx(10.0 + floor)  # k = 2 confirmations reached
    assert min(deadlines) == pytest.approx(10.0 + floor)  # never below it
    node.on_timer(Timer(10.0 + floor, TimerKind.SUSPICION, node.book.get("m9")), 10.0 + floor)
    assert node.state_of("m9") is MemberState.DEAD


def test_a_refutation_cancels_the_suspicion() -> None:
    node = Swim("me", rng=random.Random(0))
    node.preload(["a", "b", "c", "d"])
    node.start(0.0)
    node.on_message(Gossip("a", (Suspect("b", 0, "a"),)), 1.0)
    deadline = node.suspicion_deadline("b")
    node.on_message(Gossip("b", (Alive("b", "", 1),)), 2.0)
    node.on_timer(Timer(deadline, TimerKind.SUSPICION, node.book.get("b")), deadline)
    assert node.state_of("b") is MemberState.ALIVE and node.suspicion_deadline("b") is None


# --- local health (awareness) ------------------------------------------------------

def test_a_node_whose_messages_do_not_get_through_slows_its_own_detector() -> None:
    net = Net(8, seed=2)
    net.drop = lambda src, dst, msg: dst == 0 and isinstance(msg, (Ack, Nack))  # node 0 hears no answers
    net.run(12.0)
    sick = net.nodes[0]
    assert sick.health >= 3
    assert all(n.health == 0 for n in net.nodes[1:])
    # Its probe interval is scaled by health+1: count its pings over a window.
    start = len(net.sent)
    net.run(24.0)
    pings = sum(1 for src, s in net.sent[start:] if src == 0 and isinstance(s.message, Ping))
    assert pings <= 12 / 2


def test_helpers_nack_when_the_target_is_silent() -> None:
    net = Net(6, seed=4)
    net.run(2.0)
    net.down.add(3)
    net.run(12.0)
    nacks = [s for _, s in net.sent if isinstance(s.message, Nack)]
    reqs = [s for _, s in net.sent if isinstance(s.message, PingReq)]
    assert reqs and nacks
    assert all(n.health == 0 for i, n in enumerate(net.nodes) if i != 3)  # nacks keep prober healthy


# --- dissemination, join, leave ------------------------------------------------------

def test_broadcast_queue_sends_each_update_retransmit_limit_times() -> None:
    q = BroadcastQueue()
    limit = retransmit_limit(100, 4)
    assert limit == 4 * 3  # 4·ceil(log10(101))
    q.push(Alive("x", "", 1))
    sends = sum(1 for _ in range(100) if q.take(5, limit))
    assert sends == limit and len(q) == 0


def test_broadcast_queue_prefers_fresh_updates_replaces_stale_ones_and_is_bounded() -> None:
    q = BroadcastQueue(max_size=3)
    q.push(Alive("a", "", 1))
    assert q.take(1, 10) == [Alive("a", "", 1)]
    q.push(Alive("b", "", 1))
    assert q.take(1, 10) == [Alive("b", "", 1)]  # b was sent 0 times, a once
    q.push(Suspect("a", 1, "z"))  # newer news about a replaces the old
    assert q.transmits("a") == 0 and len(q) == 2
    for name in "cdef":
        q.push(Alive(name, "", 1))
    assert len(q) == 3


@pytest.mark.parametrize("n", [10, 40])
def test_each_update_is_retransmitted_about_lambda_log_n_times_by_a_node(n: int) -> None:
    net = Net(n, seed=5)
    net.run(1.0)
    # n1 hears of an old life of itself at incarnation 5 and refutes with 6.
    net.emit(0, [Send("n1", Gossip("n0", (Alive("n1", "id1", 5),)))])
    net.run(40.0)
    news = Alive("n1", "id1", 6)
    carried = sum(1 for src, s in net.sent if src == 1 and news in getattr(s.message, "updates", ()))
    assert carried == retransmit_limit(n, CFG.retransmit_mult)
    assert all(node.incarnation_of("n1") == 6 for node in net.nodes)


def test_a_graceful_leave_is_seen_by_all_within_two_periods_and_is_no_death() -> None:
    net = Net(8, seed=6)
    net.run(3.0)
    net.emit(2, net.nodes[2].leave(net.now))
    net.run(net.now + 2.0)
    net.down.add(2)
    assert all(s is MemberState.LEFT for s in net.views(2))
    net.run(net.now + 25.0)
    assert all(s is MemberState.LEFT for s in net.views(2))
    # ... never dead, and forgotten once gossip_to_the_dead_time has passed (issue 14).
    net.run(net.now + CFG.gossip_to_the_dead_time)
    assert all(s is None for s in net.views(2))
    assert net.nodes[2].live() is not None and net.nodes[2].has_left


def test_a_new_node_joins_through_one_seed() -> None:
    net = Net(6, seed=7)
    net.run(2.0)
    j = net.add(seed_index=3)
    net.run(net.now + 3.0)
    assert all(s is MemberState.ALIVE for s in net.views(j))
    assert {m.address for m in net.nodes[j].live()} == {f"n{i}" for i in range(6)}


def test_a_cluster_forms_from_seeds_alone() -> None:
    net = Net(1, seed=8, formed=False)
    for _ in range(5):
        net.add(0)  # each newcomer knows only node 0
    net.run(10.0)
    for i in range(6):
        assert all(s is MemberState.ALIVE for s in net.views(i))
    assert deaths_of_live_nodes(net) == 0


def test_a_node_that_was_declared_dead_refutes_when_told() -> None:
    net = Net(6, seed=9)
    net.run(2.0)
    net.down.add(1)
    net.run(30.0)
    assert all(s is MemberState.DEAD for s in net.views(1))
    net.down.discard(1)  # it was only paused: it carries on and is told it is dead
    net.run(40.0)
    assert all(s is MemberState.ALIVE for s in net.views(1))
    assert net.nodes[1].incarnation >= 1


def test_push_pull_repairs_what_gossip_missed_and_scales_with_n() -> None:
    # Authenticated messages (a keyring): a member's word on y's leave is believed.
    keyed = SwimConfig(authenticated=True)
    a = Swim("a", "ida", rng=random.Random(0), config=keyed)
    b = Swim("b", "idb", rng=random.Random(1), config=keyed)
    a.preload(["a", "x", "y"])
    b.preload(["b", "y"])
    a.on_message(Gossip("x", (Leave("y", 0),)), 0.0)
    outs = b.on_message(PushPull("a", tuple(_rows(a)), join=True), 1.0)
    assert b.state_of("x") is MemberState.ALIVE and b.state_of("y") is MemberState.LEFT
    reply = [o.message for o in outs if isinstance(o, Send) and isinstance(o.message, PushPull)]
    assert reply and reply[0].reply and {e.address for e in reply[0].states} >= {"b"}
    # Without: the full state's word on y's leave is checked with y itself.
    plain = Swim("b", "idb", rng=random.Random(1))
    plain.preload(["b", "y"])
    outs = plain.on_message(PushPull("a", tuple(_rows(a)), join=True), 1.0)
    assert plain.state_of("y") is MemberState.ALIVE
    assert any(isinstance(o, Send) and o.to == "y" and isinstance(o.message, Ping) for o in outs)
    assert push_pull_scale(30.0, 32) == 30.0 and push_pull_scale(30.0, 1000) == 30.0 * 6


def _rows(node: Swim) -> list[MemberEntry]:
    return [MemberEntry(m.address, m.peer_id, node.incarnation_of(m.address), m.state)
            for m in node.members()] + [MemberEntry(node.address, node.peer_id, node.incarnation, MemberState.ALIVE)]


def test_remote_dead_in_a_push_pull_only_suspects() -> None:
    node = Swim("me", rng=random.Random(0))
    node.preload(["me", "x", "y"])
    node.on_message(PushPull("y", (MemberEntry("x", "", 0, MemberState.DEAD),), reply=True), 1.0)
    assert node.state_of("x") is MemberState.SUSPECT


def test_the_view_is_compatible_with_static_membership() -> None:
    node = Swim("me:1", "me", rng=random.Random(0))
    node.add_seed("me:1")
    node.add_seed("s:2")
    outs = node.start(0.0)
    assert any(isinstance(o, Send) and o.to == "s:2" and isinstance(o.message, PushPull) for o in outs)
    m = node.note_contact("p:3", "p", now=5.0, inbound=True)
    assert m is not None and m.source is Source.INBOUND and m.last_contact == 5.0 and m.live
    assert node.note_contact("me:1", "me", now=5.0) is None
    node.note_failure("p:3", 6.0)
    assert node.get("p:3").consecutive_failures == 1 and node.get("p:3").state is MemberState.ALIVE
    assert [x.address for x in node.live()] == ["p:3"] == [x.address for x in node.members()]


def test_same_seed_same_run() -> None:
    def run() -> list:
        net = Net(7, seed=11)
        net.run(2.0)
        net.down.add(2)
        net.run(25.0)
        return [(s, type(x.message).__name__, x.to) for s, x in net.sent]
    assert run() == run()


# --- the wire codec ----------------------------------------------------------------

_addr = st.text(min_size=1, max_size=20)
_inc = st.integers(0, 2**32 - 1)
_upd = st.one_of(st.builds(Alive, _addr, st.text(max_size=10), _inc),
                 st.builds(Suspect, _addr, _inc, _addr), st.builds(Dead, _addr, _inc, _addr),
                 st.builds(Leave, _addr, _inc))
_ups = st.lists(_upd, max_size=5).map(tuple)
_seq = st.integers(0, 2**32 - 1)
_msg = st.one_of(
    st.builds(Ping, _seq, _addr, _addr, _ups), st.builds(Ack, _seq, _addr, _ups),
    st.builds(Nack, _seq, _addr, _ups),
    st.builds(PingReq, _seq, _addr, _addr, st.floats(0, 3600), _ups),
    st.builds(Gossip, _addr, _ups),
    st.builds(PushPull, _addr,
              st.lists(st.builds(MemberEntry, _addr, st.text(max_size=8), _inc, st.sampled_from(list(MemberState))),
                       max_size=5, unique_by=lambda e: e.address).map(tuple),
              st.booleans(), st.booleans()))


@settings(max_examples=300, deadline=None)
@given(msg=_msg)
def test_every_message_round_trips_through_the_wire(msg) -> None:
    assert from_wire(to_wire(msg)) == msg


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=200))
def test_hostile_bytes_give_a_typed_error_never_another_exception(data: bytes) -> None:
    try:
        from_wire(data)
    except WireError:
        pass


@settings(max_examples=300, deadline=None)
@given(msg=_msg, cut=st.integers(0, 1000), flip=st.integers(0, 1000), byte=st.integers(0, 255))
def test_damaged_messages_give_a_typed_error_or_a_valid_message(msg, cut: int, flip: int, byte: int) -> None:
    data = bytearray(to_wire(msg))
    data[flip % len(data)] = byte
    for variant in (bytes(data), bytes(data[: cut % len(data)])):
        try:
            assert from_wire(variant) is not None
        except WireError:
            pass


@pytest.mark.parametrize(("obj", "error"), [
    ([2, 1, 1, "a", "b", []], UnsupportedVersion),
    ([True, 1, 1, "a", "b", []], UnsupportedVersion),
    ([1, 9, 1, "a"], MalformedPacket),
    ([1, 1, -1, "a", "b", []], MalformedPacket),
    ([1, 1, 2**40, "a", "b", []], MalformedPacket),
    ([1, 1, True, "a", "b", []], MalformedPacket),
    ([1, 1, 1, "", "b", []], MalformedPacket),
    ([1, 1, 1, "a", "b"], MalformedPacket),
    ([1, 1, 1, "a", "b", [[1, "x", 0]]], MalformedPacket),
    ([1, 1, 1, "a", "b", [[4, "x", 0, "extra"]]], MalformedPacket),
    ([1, 1, 1, "a", "b", [[7, "x", 0, "y"]]], MalformedPacket),
    ([1, 4, 1, "a", "b", float("nan"), []], MalformedPacket),
    ([1, 4, 1, "a", "b", 1e9, []], MalformedPacket),
    ([1, 6, "a", False, False, [["x", "", 0, 1], ["x", "", 0, 1]]], MalformedPacket),
    ([1, 6, "a", 0, False, []], MalformedPacket),
    ([1, 6, "a", False, False, [["x", "", 0, 9]]], MalformedPacket),
    ({"v": 1}, MalformedPacket),
    ([1, 1, 1, "a" * 300, "b", []], PacketTooLarge),
    ([1, 5, "a", [[4, "x", 0]] * 300], PacketTooLarge),
])
def test_specific_malformations_map_to_their_error(obj, error) -> None:
    with pytest.raises(error):
        from_wire(msgpack.packb(obj))


def test_size_limits_and_truncation() -> None:
    with pytest.raises(TruncatedPacket):
        from_wire(b"")
    with pytest.raises(TruncatedPacket):
        from_wire(to_wire(Ping(1, "a", "b"))[:-2])
    with pytest.raises(PacketTooLarge):
        from_wire(b"\x00" * 100, MembershipLimits(max_message_bytes=50))
    big = PushPull("a", tuple(MemberEntry(f"m{i}", "", 0, MemberState.ALIVE) for i in range(10)))
    with pytest.raises(PacketTooLarge):
        from_wire(to_wire(big), MembershipLimits(max_states=5))
    with pytest.raises(MalformedPacket):
        from_wire(to_wire(Ping(1, "a", "b")) + b"\x00")
