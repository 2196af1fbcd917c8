"""Admission of inbound exchanges: slots, the byte budget, shedding idle streams, and the
paced reading that ends stalled or too slow streams (peer/transport/admission.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from peer.transport.admission import (
    Admission,
    AdmissionLimits,
    BufferBudget,
    Gate,
    Overloaded,
    Stalled,
    TooManyFromPeer,
    TooSlow,
)
from peer.transport.frames import RawFrame, read_packet


def limits(**kw: float) -> AdmissionLimits:
    base = {"max_streams": 4, "max_per_connection": 2, "buffer_bytes": 1000, "max_processing": 1,
            "idle_timeout": 4.0, "min_rate": 100.0}
    base.update(kw)
    return AdmissionLimits(**base)  # type: ignore[arg-type]


# --- the pure accounting (time is an argument) ------------------------------------------------

def test_per_connection_and_total_caps() -> None:
    a = Admission(limits())
    a.open("ipv4:10.0.0.1:1", 0.0)
    a.open("ipv4:10.0.0.1:1", 0.0)
    with pytest.raises(TooManyFromPeer):
        a.open("ipv4:10.0.0.1:1", 0.0)
    a.open("ipv4:10.0.0.1:2", 0.0)  # another connection from the same host is another partner
    a.open("ipv4:10.0.0.2:1", 0.0)
    with pytest.raises(Overloaded):
        a.open("ipv4:10.0.0.3:1", 0.5)  # nobody idle for shed_after (1 s) yet
    assert a.reading == 4


def test_a_full_peer_sheds_its_longest_idle_stream_for_a_newcomer() -> None:
    a = Admission(limits())
    tickets = [a.open(f"c{i}", 0.0)[0] for i in range(4)]
    for t in tickets[1:]:
        a.arrived(t, 10, 2.0)  # three streams are making progress; c0 has said nothing
    ticket, shed = a.open("honest", 2.5)
    assert shed == [tickets[0]] and isinstance(tickets[0].shed, Overloaded)
    assert a.reading == 4 and ticket.reading
    a.close(tickets[0])  # the shed stream's own exit: idempotent, nothing counted twice
    assert a.reading == 4 and a.buffered == 30


def test_bytes_are_charged_as_they_arrive_and_freed_on_close() -> None:
    a = Admission(limits(buffer_bytes=100))
    t1, _ = a.open("c1", 0.0)
    t2, _ = a.open("c2", 0.0)
    a.arrived(t1, 60, 0.1)
    with pytest.raises(BufferBudget):
        a.arrived(t2, 50, 0.2)  # t1 is not idle long enough to be shed
    assert a.buffered == 60
    a.arrived(t2, 40, 0.2)
    a.done_reading(t1)
    assert a.reading == 1 and a.buffered == 100  # processing keeps its bytes until close
    a.close(t1)
    a.close(t2)
    assert a.buffered == 0 and a.reading == 0


def test_an_idle_stream_is_shed_to_free_the_budget_but_never_the_one_asking() -> None:
    a = Admission(limits(buffer_bytes=100))
    idle, _ = a.open("slowloris", 0.0)
    a.arrived(idle, 90, 0.0)
    honest, _ = a.open("honest", 3.0)
    shed = a.arrived(honest, 50, 3.0)
    assert shed == [idle] and a.buffered == 50 and idle.received == 0
    a.arrived(honest, 50, 3.0)
    with pytest.raises(BufferBudget):
        a.arrived(honest, 10, 9.0)  # idle longest of all, but it is the one asking
    assert a.buffered == 100 and honest.shed is None


def test_a_trusted_connection_sheds_untrusted_streams_however_fresh() -> None:
    a = Admission(limits(max_streams=2, buffer_bytes=100))
    honest, _ = a.open("neighbour", 0.0)
    a.done_reading(honest)
    a.trust("neighbour")  # what Gate.processing does when an exchange completes
    a.close(honest)
    fresh = [a.open(f"attacker{i}", 5.0)[0] for i in range(2)]
    a.arrived(fresh[0], 90, 5.0)
    ticket, shed = a.open("neighbour", 5.0)  # nobody idle at all, but both are untrusted
    assert ticket.trusted and shed == [fresh[0]] and a.buffered == 0
    assert a.arrived(ticket, 100, 5.0) == []
    with pytest.raises(Overloaded):
        a.open("attacker9", 5.0)  # untrusted newcomers get no such priority
    a.close(fresh[1])
    second, _ = a.open("neighbour", 5.0)
    with pytest.raises(BufferBudget):  # nor do trusted streams over each other
        a.arrived(second, 10, 5.0)


def test_deadlines_stalled_first_then_too_slow_for_a_trickle() -> None:
    a = Admission(limits(idle_timeout=4.0, min_rate=100.0))
    t, _ = a.open("c", 0.0)
    when, why = a.deadline(t)
    assert when == 4.0 and isinstance(why, Stalled)  # nothing yet: the idle timeout
    for now in (3.0, 6.0, 9.0):  # one byte every 3 s: never idle for 4 s...
        a.arrived(t, 1, now)
    when, why = a.deadline(t)  # ...but 3 bytes earn 4 + 3/100 s in all
    assert when == pytest.approx(4.03) and isinstance(why, TooSlow)
    fast, _ = a.open("d", 0.0)
    a.arrived(fast, 900, 1.0)
    when, why = a.deadline(fast)  # 900 bytes earn 13 s of pace; the idle limit comes first
    assert when == 5.0 and isinstance(why, Stalled)


def test_no_minimum_rate_leaves_only_the_idle_timeout() -> None:
    a = Admission(limits(min_rate=0))
    t, _ = a.open("c", 0.0)
    a.arrived(t, 1, 100.0)
    assert a.deadline(t)[0] == 104.0


# --- the asyncio side ---------------------------------------------------------------------

class Feed:
    """Frames the test pushes by hand; the reader waits on them (no timing guesses)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[RawFrame | None] = asyncio.Queue()

    async def frames(self) -> AsyncIterator[RawFrame]:
        while (frame := await self.queue.get()) is not None:
            yield frame


async def test_a_stalled_stream_ends_stalled_and_frees_its_slot_and_bytes() -> None:
    gate = Gate(limits(idle_timeout=0.1, min_rate=0))
    feed = Feed()
    feed.queue.put_nowait(RawFrame(b"x" * 10))
    with pytest.raises(Stalled):
        async with gate.stream("c") as ticket:
            await read_packet(gate.paced(ticket, feed.frames()), 1000)
    assert gate.accounts.reading == 0 and gate.accounts.buffered == 0


async def test_a_trickling_stream_ends_too_slow() -> None:
    gate = Gate(limits(idle_timeout=0.2, min_rate=20.0))
    trickled = asyncio.Event()

    async def trickle() -> AsyncIterator[RawFrame]:
        while True:  # one byte per 0.1 s: never idle for 0.2 s, but a byte earns only 1/20 s
            yield RawFrame(b"x")
            trickled.set()
            await asyncio.sleep(0.1)  # the slow sender being simulated, not a synchronisation

    with pytest.raises(TooSlow):
        async with gate.stream("c") as ticket:
            await read_packet(gate.paced(ticket, trickle()), 10_000)
    assert trickled.is_set() and gate.accounts.buffered == 0


async def test_shedding_wakes_the_idle_reader_at_once_and_the_newcomer_completes() -> None:
    gate = Gate(limits(max_streams=1, idle_timeout=0.8, min_rate=0))  # shed_after = 0.2 s
    held = Feed()
    held.queue.put_nowait(RawFrame(b"y" * 10))
    outcome: list[BaseException] = []

    async def slowloris() -> None:
        try:
            async with gate.stream("slowloris") as ticket:
                await read_packet(gate.paced(ticket, held.frames()), 1000)
        except Overloaded as e:
            outcome.append(e)

    task = asyncio.create_task(slowloris())
    while gate.accounts.buffered < 10:  # wait until the slowloris holds its slot and bytes
        await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    # Too early: the held stream has not been idle for shed_after, so the newcomer is refused.
    with pytest.raises(Overloaded):
        async with gate.stream("honest"):
            pass
    (held_ticket,) = gate.accounts._reading
    while loop.time() - held_ticket.last_activity < gate.limits.shed_after:  # until it counts as idle
        await asyncio.sleep(0.01)
    honest = Feed()
    honest.queue.put_nowait(RawFrame(b"z" * 5, end=True))
    async with gate.stream("honest") as ticket:
        packet = await read_packet(gate.paced(ticket, honest.frames()), 1000)
        async with gate.processing(ticket):
            assert bytes(packet) == b"z" * 5
    await task  # a Stalled (its own timeout) would escape here: it was shed, and woken for it
    assert outcome and "shed" in str(outcome[0])
    assert gate.shed == 1 and gate.accounts.reading == 0 and gate.accounts.buffered == 0


async def test_processing_slots_are_separate_from_reading() -> None:
    gate = Gate(limits(max_processing=1))
    async with gate.stream("a") as first:
        async with gate.processing(first):
            assert gate.accounts.reading == 0
            async with gate.stream("b") as second:  # reading is not blocked by processing
                waiting = asyncio.create_task(_process(gate, second))
                await asyncio.sleep(0)
                assert not waiting.done()  # but the second packet queues for the one slot
        await waiting


async def _process(gate: Gate, ticket) -> None:
    async with gate.processing(ticket):
        pass
