"""SWIM against a stranger (issue 14): what one message can and cannot do to the view.

Pure state-machine tests on a virtual clock. The attacks run against real peers in
tests/integration/test_membership_attacks.py; here each rule is pinned down alone:
incarnations wrap and are bounded by a window, a Dead from someone else is only an
accusation, hearsay is bounded per sender, every path respects the table bound, the
dead and the left are forgotten, and a huge full state is merged in chunks.
"""

from __future__ import annotations

import random

import pytest

from protocol.membership import (
    GOSSIP_PATH,
    Ack,
    MAX_INCARNATION,
    Alive,
    Dead,
    Gossip,
    Leave,
    MemberEntry,
    MemberState,
    Ping,
    PushPull,
    Send,
    Suspect,
    Swim,
    SwimConfig,
    Timer,
    TimerKind,
    incarnation_ahead,
    suspicion_bounds,
)
from protocol.errors import WireError
from protocol.membership.wire import from_wire, from_wire_in_steps, to_wire
from protocol.sampling import UNCONFIRMED_SHARE, choose_partner
from tests.protocol.test_membership import CFG, Net, deaths_of_live_nodes

STRANGER = "evil:1"


def junk(count: int, start: int = 0) -> tuple[MemberEntry, ...]:
    return tuple(MemberEntry(f"10.66.{i >> 8 & 255}.{i & 255}:{1000 + i // 65536}", f"j{i}", 0, MemberState.ALIVE)
                 for i in range(start, start + count))


def node_with(members: list[str], config: SwimConfig = CFG, address: str = "me") -> Swim:
    node = Swim(address, "id", rng=random.Random(0), config=config)
    node.preload(members)
    node.start(0.0)
    return node


# --- incarnations ------------------------------------------------------------------

def test_incarnations_compare_as_serial_numbers() -> None:
    assert incarnation_ahead(5, 3) == 2 and incarnation_ahead(3, 5) == -2
    assert incarnation_ahead(0, MAX_INCARNATION) == 1  # the successor of the top is 0
    assert incarnation_ahead(MAX_INCARNATION, 0) == -1  # ... so the top is *older* than 0
    assert incarnation_ahead(2**31 - 1, 0) == 2**31 - 1


def test_a_claim_beyond_the_window_is_not_believed() -> None:
    node = node_with(["x"])
    w = CFG.incarnation_window
    node.on_message(Gossip(STRANGER, (Alive("x", "", w + 1),)), 1.0)
    assert node.incarnation_of("x") == 0 and node.implausible == 1
    node.on_message(Gossip(STRANGER, (Suspect("x", w + 1, STRANGER), Dead("x", 2**31 - 1, STRANGER))), 1.0)
    assert node.state_of("x") is MemberState.ALIVE and node.implausible == 3
    node.on_message(Gossip(STRANGER, (Alive("x", "", w),)), 1.0)
    assert node.incarnation_of("x") == w  # within the window: SWIM as usual


def test_a_member_held_at_the_top_incarnation_still_refutes_by_wrapping() -> None:
    node = node_with(["x"])
    node.preload(["x"], incarnation=MAX_INCARNATION)
    node.on_message(Gossip("x", (Suspect("x", MAX_INCARNATION, "me"),)), 1.0)
    node.on_message(Gossip("x", (Alive("x", "", 0),)), 1.5)  # x's refutation, wrapped past the top
    assert node.state_of("x") is MemberState.ALIVE and node.incarnation_of("x") == 0

    me = node_with([], address="b")
    me.on_message(Gossip(STRANGER, (Suspect("b", 3, STRANGER),)), 1.0)
    me.on_message(Gossip(STRANGER, (Suspect("b", 4, STRANGER),)), 1.0)
    assert me.incarnation == 5
    me.on_message(Gossip(STRANGER, (Dead("b", MAX_INCARNATION, STRANGER),)), 2.0)  # older than 5: stale
    assert me.incarnation == 5
    me.on_message(Gossip(STRANGER, (Suspect("b", 5 + 10 * CFG.incarnation_window, STRANGER),)), 3.0)
    assert me.incarnation == 5 and me.implausible == 1  # believed by nobody: nothing to outbid


def test_the_forged_top_incarnation_dead_of_issue_14_buries_nobody() -> None:
    net = Net(6, seed=21)
    net.run(2.0)
    forged = Gossip(STRANGER, (Dead("n3", MAX_INCARNATION, STRANGER), Dead("n3", 1, STRANGER)))
    net.emit(3, [Send("n0", forged), Send("n1", forged)])
    for _ in range(200):  # 20 s in 0.1 s steps: n3 is never dead anywhere
        net.run(net.now + 0.1)
        assert all(s in (MemberState.ALIVE, MemberState.SUSPECT) for s in net.views(3))
    assert all(s is MemberState.ALIVE for s in net.views(3))
    assert 2 <= net.nodes[3].incarnation <= 3 and deaths_of_live_nodes(net) == 0


# --- only the member announces its own leave ------------------------------------------

def test_a_forged_leave_relayed_by_a_stranger_makes_nobody_left() -> None:
    net = Net(6, seed=22)
    net.run(2.0)
    forged = Gossip(STRANGER, (Leave("n3", 0), Leave("n3", 1)))
    net.emit(1, [Send("n0", forged), Send("n2", forged)])
    for _ in range(100):  # 10 s in 0.1 s steps: n3 is never left anywhere
        net.run(net.now + 0.1)
        assert all(s is MemberState.ALIVE for s in net.views(3))
    assert deaths_of_live_nodes(net) == 0


def test_a_relayed_leave_is_checked_with_the_member_unless_messages_are_authenticated() -> None:
    node = node_with(["m1", "m2"])
    outs = node.on_message(Gossip("m1", (Leave("m2", 0),)), 1.0)
    assert node.state_of("m2") is MemberState.ALIVE
    asks = [o for o in outs if isinstance(o, Send) and o.to == "m2" and isinstance(o.message, Ping)]
    assert len(asks) == 1
    again = node.on_message(Gossip("m1", (Leave("m2", 0),)), 1.1)  # asked already this probe interval
    assert not [o for o in again if isinstance(o, Send) and o.to == "m2" and isinstance(o.message, Ping)]
    # The member itself answers that it left: believed.
    node.on_message(Ack(asks[0].message.seq, "m2", (Leave("m2", 0),)), 1.2)
    assert node.state_of("m2") is MemberState.LEFT
    # With every message authenticated (keyring, mTLS), a member's relay is believed at once.
    trusting = node_with(["m1", "m2"], config=SwimConfig(authenticated=True))
    trusting.on_message(Gossip("m1", (Leave("m2", 0),)), 1.0)
    assert trusting.state_of("m2") is MemberState.LEFT


def test_a_member_that_left_says_so_on_every_answer() -> None:
    node = node_with(["m1"])
    node.leave(1.0)
    outs = node.on_message(Ping(7, "m1", "me", ()), 1.5)
    acks = [o.message for o in outs if isinstance(o, Send) and isinstance(o.message, Ack)]
    assert acks and Leave("me", node.incarnation) in acks[0].updates


# --- a Dead from someone else is an accusation ---------------------------------------

def test_a_third_party_dead_is_a_suspicion_cut_to_its_floor_and_our_timer_buries() -> None:
    node = node_with([f"m{i}" for i in range(20)])
    floor, start = suspicion_bounds(node.live_count, CFG)
    outs = node.on_message(Gossip("m1", (Dead("m9", 0, "m1"),)), 10.0)
    assert node.state_of("m9") is MemberState.SUSPECT
    assert node.suspicion_deadline("m9") == pytest.approx(10.0 + floor)
    timers = [o for o in outs if isinstance(o, Timer) and o.kind == TimerKind.SUSPICION]
    assert timers and timers[0].at == pytest.approx(10.0 + floor)
    # Suspected earlier by someone: a Dead then cuts the wait to the floor from that moment.
    node.on_message(Gossip("m1", (Suspect("m4", 0, "m1"),)), 20.0)
    node.on_message(Gossip("m2", (Dead("m4", 0, "m2"),)), 20.0 + floor + 1)
    assert node.suspicion_deadline("m4") == pytest.approx(20.0 + floor)
    node.on_timer(Timer(20.0 + floor + 1, TimerKind.SUSPICION, node.book.get("m4")), 20.0 + floor + 1)
    assert node.state_of("m4") is MemberState.DEAD


def test_made_up_accusers_do_not_confirm_a_suspicion() -> None:
    node = node_with([f"m{i}" for i in range(20)])
    floor, start = suspicion_bounds(node.live_count, CFG)
    node.on_message(Gossip(STRANGER, (Suspect("m9", 0, "ghost0"),)), 10.0)
    for k in range(1, 6):
        node.on_message(Gossip(STRANGER, (Suspect("m9", 0, f"ghost{k}"),)), 10.0)
    assert node.suspicion_deadline("m9") == pytest.approx(10.0 + start)
    node.on_message(Gossip("m1", (Suspect("m9", 0, "m1"),)), 10.0)  # a member we hold live does
    assert node.suspicion_deadline("m9") < 10.0 + start


# --- hearsay and the table bound -----------------------------------------------------

def test_a_stranger_push_pull_of_66000_members_adds_at_most_the_hearsay_quota() -> None:
    node = node_with(["a", "b"])
    node.on_message(PushPull(STRANGER, junk(66_000)), 1.0)
    assert len(node.members()) == 2 + CFG.hearsay_quota
    assert node.refused_hearsay == 66_000 - CFG.hearsay_quota
    # Its own full state, as an honest partner would pull it, carries no more than that.
    outs = node.on_message(PushPull("a", ()), 2.0)
    reply = next(o.message for o in outs if isinstance(o, Send) and isinstance(o.message, PushPull))
    assert len(reply.states) == 3 + CFG.hearsay_quota


def test_hearing_from_a_member_frees_its_introducers_quota() -> None:
    node = node_with(["a"])
    rows = junk(CFG.hearsay_quota + 5)
    node.on_message(Gossip("a", tuple(Alive(r.address, "", 0) for r in rows)), 1.0)
    assert node.refused_hearsay == 5
    first = rows[0].address
    node.on_message(Gossip(first, ()), 2.0)  # naming itself as a source proves nothing ...
    assert node._introduced == {"a": CFG.hearsay_quota}
    outs = node.on_timer(Timer(2.0, TimerKind.PROBE), 2.0)  # ... answering our probe does
    ping = next(o.message for o in outs if isinstance(o, Send) and isinstance(o.message, Ping))
    node.on_message(Ack(ping.seq, ping.target), 2.1)
    assert node._introduced == {"a": CFG.hearsay_quota - 1}
    node.on_message(Gossip("a", (Alive(rows[-1].address, "", 0),)), 3.0)
    assert node.state_of(rows[-1].address) is MemberState.ALIVE


def test_the_answer_to_our_own_join_is_taken_whole() -> None:
    node = Swim("me", "id", rng=random.Random(0), config=CFG)
    node.add_seed("seed")
    node.start(0.0)
    table = junk(500) + (MemberEntry("seed", "s", 0, MemberState.ALIVE),)
    node.on_message(PushPull("seed", table, reply=True), 1.0)
    assert len(node.members()) == 501
    # A reply nobody asked for is hearsay like any other message.
    other = node_with([])
    other.on_message(PushPull("seed", table, reply=True), 1.0)
    assert len(other.members()) == 1 + CFG.hearsay_quota


def test_every_path_into_the_table_respects_its_bound() -> None:
    config = SwimConfig(max_members=10, hearsay_quota=1000)
    node = Swim("me", "id", rng=random.Random(0), config=config)
    node.add_seed("seed")
    node.start(0.0)
    node.on_message(PushPull("seed", junk(50), reply=True), 1.0)  # a join reply
    assert len(node.members()) == 10
    node.on_message(PushPull(STRANGER, junk(50, 100)), 2.0)  # a push-pull request
    node.on_message(Gossip(STRANGER, tuple(Alive(r.address, "", 0) for r in junk(50, 200))), 3.0)
    node.on_message(Gossip("new:1", (Alive("new:1", "", 0),)), 4.0)  # a member about itself
    assert node.note_contact("new:2", "p", 5.0, inbound=True) is None  # the model-exchange path
    assert len(node.members()) == 10 and node.refused_members == 40 + 50 + 50 + 1 + 1


def test_the_model_exchange_path_adds_at_most_the_hearsay_quota_of_claimed_senders() -> None:
    node = node_with(["a"])
    added = [node.note_contact(f"claimed:{i}", f"c{i}", 1.0, inbound=True) for i in range(500)]
    assert sum(m is not None for m in added) == CFG.hearsay_quota
    assert node._introduced == {GOSSIP_PATH: CFG.hearsay_quota}
    node.note_contact("claimed:0", "c0", 2.0)  # an exchange we started reached it: its slot is free
    assert node.note_contact("claimed:999", "c", 3.0, inbound=True) is not None


def test_a_full_table_gives_up_its_longest_dead_member_for_a_newcomer() -> None:
    node = node_with(["a", "b", "c"], SwimConfig(max_members=3))
    for who, t in (("b", 1.0), ("c", 2.0)):
        node.on_message(Gossip("a", (Suspect(who, 0, "a"),)), t)
        deadline = node.suspicion_deadline(who)
        node.on_timer(Timer(deadline, TimerKind.SUSPICION, node.book.get(who)), deadline)
    node.on_message(Gossip("new:1", (Alive("new:1", "", 0),)), 20.0)
    assert node.state_of("b") is None and node.state_of("c") is MemberState.DEAD
    assert node.state_of("new:1") is MemberState.ALIVE and len(node.members()) == 3
    node.on_message(Gossip("new:2", (Alive("new:2", "", 0),)), 21.0)
    node.on_message(Gossip("new:3", (Alive("new:3", "", 0),)), 22.0)  # nobody dead is left to give up
    assert node.state_of("new:3") is None and node.refused_members == 1


# --- forgetting the dead -------------------------------------------------------------

def test_dead_hearsay_and_left_members_are_reaped_and_their_slots_reused() -> None:
    config = SwimConfig()
    node = node_with(["a", "b", "c"], config)
    rows = junk(10)
    node.on_message(PushPull(STRANGER, rows), 1.0)
    reaps: list[Timer] = []
    for r in rows:  # each forged member is accused, nobody refutes, its suspicion runs out
        node.on_message(Gossip("a", (Suspect(r.address, 0, "a"),)), 2.0)
        deadline = node.suspicion_deadline(r.address)
        assert deadline is not None
        outs = node.on_timer(Timer(deadline, TimerKind.SUSPICION, node.book.get(r.address)), deadline)
        reaps += [o for o in outs if isinstance(o, Timer) and o.kind == TimerKind.REAP]
        assert node.state_of(r.address) is MemberState.DEAD
    outs = node.on_message(Gossip("c", (Leave("c", 0),)), 3.0)  # c leaves, in its own words
    reaps += [o for o in outs if isinstance(o, Timer) and o.kind == TimerKind.REAP]
    assert len(reaps) == 11 and reaps[-1].at == pytest.approx(3.0 + config.gossip_to_the_dead_time)
    size = len(node.book)
    for t in reaps:
        node.on_timer(t, t.at - 1.0)  # early: nothing yet
    assert node.state_of("c") is MemberState.LEFT and node.reaped == 0
    for t in reaps:
        node.on_timer(t, t.at)
    assert all(node.state_of(r.address) is None for r in rows) and node.state_of("c") is None
    assert node.reaped == 11 and node._introduced == {} and len(node.members()) == 2
    node.on_message(PushPull(STRANGER, junk(11, 500)), 100.0)
    assert len(node.book) == size  # the forgotten names' slots were reused


def test_a_dead_member_we_heard_from_is_kept_for_reconnects_then_reaped() -> None:
    config = SwimConfig()
    node = node_with(["a", "b"], config)
    node.on_message(Gossip("a", (Suspect("b", 0, "a"),)), 1.0)
    deadline = node.suspicion_deadline("b")
    outs = node.on_timer(Timer(deadline, TimerKind.SUSPICION, node.book.get("b")), deadline)
    reap = next(o for o in outs if isinstance(o, Timer) and o.kind == TimerKind.REAP)
    assert reap.at == pytest.approx(deadline + config.reconnect_timeout)
    node.on_timer(Timer(deadline + config.gossip_to_the_dead_time, TimerKind.REAP, reap.key),
                  deadline + config.gossip_to_the_dead_time)
    assert node.state_of("b") is MemberState.DEAD
    node.on_timer(reap, reap.at)
    assert node.state_of("b") is None


# --- chunked merging ---------------------------------------------------------------

def test_a_full_state_merged_in_chunks_ends_as_one_merged_at_once() -> None:
    rows = junk(3000) + (MemberEntry("b", "", 4, MemberState.SUSPECT),)
    once = node_with(["a", "b", "seed"], address="me")
    once._joins["seed"] = None
    once.on_message(PushPull("seed", rows, reply=True), 1.0)
    chunked = node_with(["a", "b", "seed"], address="me")
    chunked._joins["seed"] = None
    chunked.on_message(PushPull("seed", rows, reply=True), 1.0, max_rows=1000)
    assert chunked.merge_pending and len(chunked.members()) == 3 + 1000
    steps = 0
    while chunked.merge_pending:
        chunked.merge_more(1.0, 1000)
        steps += 1
    assert steps == 3
    assert [(m.address, m.state) for m in chunked.members()] == [(m.address, m.state) for m in once.members()]
    assert chunked.state_of("b") is MemberState.SUSPECT


# --- decoding a large full state in steps -------------------------------------------

def _stepped(data: bytes) -> object:
    steps = from_wire_in_steps(data, rows=100)
    count = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value, count
        count += 1


def test_a_large_full_state_decodes_in_steps_to_what_from_wire_gives() -> None:
    rows = tuple(MemberEntry(f"h{i}:1", "p", i, MemberState.ALIVE) for i in range(5000))
    data = to_wire(PushPull("s", rows, join=True))
    message, steps = _stepped(data)
    assert message == from_wire(data) and steps == 50
    rng = random.Random(14)
    for k in range(200):  # damaged copies: a WireError on both paths, or the same message
        damaged = bytearray(data)
        for _ in range(2):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        cut = bytes(damaged[:rng.randrange(70_000, len(damaged))]) if k % 3 == 0 else bytes(damaged)
        outcomes = []
        for decode in (from_wire, lambda d: _stepped(d)[0]):
            try:
                outcomes.append(decode(cut))
            except WireError:
                outcomes.append("refused")
        assert outcomes[0] == outcomes[1]


def test_flooded_members_are_unconfirmed_until_they_answer_our_probe() -> None:
    """What partner choice reads (``Member.confirmed``): the made-up members of a flood are
    hearsay until they answer us; the honest ones are confirmed; an answer to our probe
    confirms a member (issue 14, attack 2)."""
    node = node_with(["a", "b"])
    node.on_message(PushPull(STRANGER, junk(66_000)), 1.0)
    by_confirmed = {m.address: m.confirmed for m in node.members()}
    assert [a for a, ok in by_confirmed.items() if ok] == ["a", "b"]
    assert sum(not ok for ok in by_confirmed.values()) == CFG.hearsay_quota
    rng = random.Random(9)
    picks = [choose_partner(node.members(), rng, is_live=lambda m: m.state is MemberState.ALIVE,
                            is_confirmed=lambda m: m.confirmed) for _ in range(4000)]
    assert sum(p is not None and p.address in ("a", "b") for p in picks) > (1 - UNCONFIRMED_SHARE) * 4000 - 150
    # One of them answers our probe (a real member introduced by the stranger): confirmed.
    target = None
    for t in range(2, 200):
        outs = node.on_timer(Timer(float(t), TimerKind.PROBE), float(t))
        ping = next((o.message for o in outs if isinstance(o, Send) and isinstance(o.message, Ping)), None)
        if ping is not None and ping.target not in ("a", "b"):
            node.on_message(Ack(ping.seq, ping.target), t + 0.1)
            target = ping.target
            break
    assert target is not None and node.get(target).confirmed
