"""Drives one ``protocol.membership.Swim`` from the asyncio loop.

The state machine is pure: it returns ``Send`` and ``Timer`` outputs and never touches
a socket or a clock. This runtime is the only place those outputs become I/O:

* every ``Timer`` becomes a ``loop.call_later`` whose callback feeds it back through
  ``on_timer`` (never cancelled: stale timers are ignored by the machine);
* every ``Send`` becomes a task on the gRPC client; a push-pull's reply is fed back
  as a received message; a failed send is simply a lost message;
* messages the servicer decoded are fed through ``receive``; the push-pull reply the
  machine produces for the caller is returned to the servicer instead of being sent
  as a call of its own;
* a full state is merged ``MERGE_CHUNK`` rows at a time, one loop callback each, so a
  push-pull listing tens of thousands of members (honest or forged) never holds the
  loop for more than a few milliseconds at a go.

Time: one clock (``clock``, the node's ``time.monotonic``) for every ``now`` given to
the machine, also by the gossip engine's ``note_contact``. A timer callback passes
``max(clock(), timer.at)``: the loop may wake a fraction of a millisecond early, and a
suspicion timer that fires "before" its deadline would otherwise be ignored for good.

Membership events (suspect, dead, alive again, left) are counted for metrics and
logged in one parseable form: ``member <address> <old> -> <new> incarnation <n>``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from peer.transport.membership_grpc import MembershipClient
from protocol.membership import MemberState, Message, Output, PushPull, Send, Swim, Timer
from protocol.membership.states import STATE_OF

log = logging.getLogger(__name__)

# Rows of a push-pull merged per loop callback: ~1-10 µs a row keeps each to a few ms.
MERGE_CHUNK = 256


@dataclass
class MembershipEvents:
    """State changes of other members as this peer saw them (for metrics and benches)."""

    joins: int = 0        # a member first seen alive
    suspicions: int = 0   # alive -> suspect
    deaths: int = 0       # -> dead (declared here or learned)
    recoveries: int = 0   # suspect or dead -> alive (a refutation or a restart)
    leaves: int = 0       # -> left


def count_event(events: MembershipEvents, old: MemberState | None, new: MemberState | None) -> None:
    """Fold one transition into ``events``; pure so the rules can be tested alone."""
    if new is MemberState.SUSPECT and old is not MemberState.SUSPECT:
        events.suspicions += 1
    elif new is MemberState.DEAD:
        events.deaths += 1
    elif new is MemberState.LEFT:
        events.leaves += 1
    elif new is MemberState.ALIVE and old in (MemberState.SUSPECT, MemberState.DEAD):
        events.recoveries += 1
    elif new is MemberState.ALIVE and old is None:
        events.joins += 1


class MembershipRuntime:
    """Runs ``swim`` on the current event loop, sending through ``client``."""

    def __init__(self, swim: Swim, client: MembershipClient,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.swim = swim
        self.client = client
        self.clock = clock
        self.events = MembershipEvents()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._sends: set[asyncio.Task[None]] = set()
        self._closed = False
        self._left_at: float | None = None
        self._merging = False  # a merge_more callback is scheduled
        swim.observer = self._observe

    @property
    def period(self) -> float:
        return self.swim.config.probe_interval

    # --- entry points ----------------------------------------------------------------
    def start(self) -> None:
        """Begin probing and join the seeds added so far (call on the running loop)."""
        self._loop = asyncio.get_running_loop()
        self._carry(self.swim.start(self.clock()))

    def join(self, address: str) -> None:
        """A newly discovered address (MQTT): push-pull with it now, and keep it as a seed."""
        if self._loop is None:
            self.swim.add_seed(address)
        elif not self._closed:
            self._carry(self.swim.join([address], self.clock()))

    def receive(self, message: Message, more: bool = False) -> Message | None:
        """Feed one received message; returns the push-pull reply owed to its sender, if any.

        ``more``: ``message`` is a further part of the full state its sender just sent
        (the transport hands a large one over as it decodes it); nothing is owed for it.
        """
        if self._closed:
            return None
        if more:
            assert isinstance(message, PushPull)
            self._carry(self.swim.more_states(message.source, message.states, self.clock(), MERGE_CHUNK))
            self._continue_merge()
            return None
        outs = self.swim.on_message(message, self.clock(), max_rows=MERGE_CHUNK)
        reply = None
        if isinstance(message, PushPull) and not message.reply:
            reply = _take_reply(outs, message.source)
        self._carry(outs)
        self._continue_merge()
        return reply

    def announce_leave(self) -> None:
        """Gossip our leave now; probing stops, answering and forwarding go on."""
        if self._loop is None or self._closed or self.swim.has_left:
            return
        self._left_at = self.clock()
        log.info("membership: leaving (incarnation %d)", self.swim.incarnation)
        self._carry(self.swim.leave(self.clock()))

    async def leave(self, linger_periods: float = 2.0) -> None:
        """Announce the leave and keep running until it has gone out (at most ``linger_periods``).

        "Gone out" is: nothing left in the broadcast queue and no send in flight. The
        bound keeps a stop from hanging when nobody is reachable. With no live member
        there is nobody to tell, so nothing lingers (a lone peer stops at once).
        """
        self.announce_leave()
        if self._left_at is None or not self.swim.live():
            return
        deadline = self._left_at + linger_periods * self.period
        step = self.swim.config.gossip_interval / 4
        while self.clock() < deadline and (self.swim.pending_broadcasts or self._sends):
            await asyncio.sleep(step)  # polling two counters under a deadline

    async def close(self) -> None:
        """Stop every timer and send, and close the channels."""
        self._closed = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for task in list(self._sends):
            task.cancel()
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)
        await self.client.close()

    def _continue_merge(self) -> None:
        """Schedule the next chunk of a pending full-state merge behind whatever is ready."""
        if self.swim.merge_pending and not self._merging and not self._closed and self._loop is not None:
            self._merging = True
            self._loop.call_soon(self._merge_chunk)

    def _merge_chunk(self) -> None:
        self._merging = False
        if self._closed:
            return
        self._carry(self.swim.merge_more(self.clock(), MERGE_CHUNK))
        self._continue_merge()

    # --- outputs -----------------------------------------------------------------------
    def _carry(self, outs: Iterable[Output]) -> None:
        assert self._loop is not None
        for out in outs:
            if isinstance(out, Timer):
                self._schedule(out)
            else:
                task = self._loop.create_task(self._send(out))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)

    def _schedule(self, timer: Timer) -> None:
        assert self._loop is not None
        if self._closed:
            return
        delay = max(0.0, timer.at - self.clock())
        holder: list[asyncio.TimerHandle] = []
        handle = self._loop.call_later(delay, self._fire, timer, holder)
        holder.append(handle)
        self._timers.add(handle)

    def _fire(self, timer: Timer, holder: list[asyncio.TimerHandle]) -> None:
        for handle in holder:
            self._timers.discard(handle)
        if self._closed:
            return
        self._carry(self.swim.on_timer(timer, max(self.clock(), timer.at)))

    async def _send(self, send: Send) -> None:
        reply = await self.client.send(send.to, send.message)
        if reply is not None and not self._closed:
            if isinstance(reply, PushPull) and reply.reply:
                self._carry(self.swim.on_message(reply, self.clock(), max_rows=MERGE_CHUNK))
                self._continue_merge()
            else:
                log.warning("membership: %s answered a push-pull with %s", send.to, type(reply).__name__)

    def _fresh_channel(self, address: str) -> None:
        """Drop our channel to a member that has just proven alive after we suspected it or
        held it dead: the connection our messages took to it failed while it was fine.

        Over gRPC that path is one long-lived TCP connection, and nothing closes one that
        merely stopped answering. After a partition heals, a connection whose packets were
        dropped sits in TCP's retransmission backoff (the timeout doubles per loss: 25 s
        into a cut the next try can be 25 s away), so every probe on it times out while
        the member is fine, and it flapped alive -> suspect -> alive each probe cycle
        until that retry fired (issue 15, the partition test). The next message opens a
        fresh connection. The channel is dropped before any send this event causes runs
        (the task takes it out of the pool at its first step, and tasks run in order).
        """
        if self._loop is None or self._closed:
            return
        task = self._loop.create_task(self.client.forget(address))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    # --- events ------------------------------------------------------------------------
    def _observe(self, swim: Swim, idx: int, old_code: int, new_code: int, now: float) -> None:
        if idx == swim.book.get(swim.address):
            return  # our own leave
        old, new = STATE_OF.get(old_code), STATE_OF.get(new_code)  # None: not a member
        count_event(self.events, old, new)
        address = swim.book.addresses[idx]
        if new is MemberState.ALIVE and old in (MemberState.SUSPECT, MemberState.DEAD):
            self._fresh_channel(address)
        level = logging.DEBUG if new is MemberState.ALIVE and old is None else logging.INFO
        if new is MemberState.DEAD:
            level = logging.WARNING
        log.log(level, "member %s %s -> %s incarnation %d peer %s", address,
                old.value if old else "none", new.value if new else "none",
                swim.incarnation_of(address) or 0, swim.book.peer_ids[idx] or "?")


# The event line written by MembershipRuntime._observe (keep the two in step).
_EVENT = re.compile(r"^member (\S+) (\w+) -> (\w+) incarnation (\d+) peer (\S+)$")


@dataclass(frozen=True)
class LoggedEvent:
    """One membership transition read back from a peer's JSON log (``--log-json``)."""

    at: float          # wall-clock time of the log record (time.time())
    observer: str      # peer id of the peer whose view changed
    address: str       # gossip address of the member that changed
    old: str
    new: str
    incarnation: int
    peer_id: str


def parse_event_line(line: str) -> LoggedEvent | None:
    """The membership event in one JSON log line, or None for any other line.

    Benchmarks and tests time detection from these records: they carry the moment the
    view changed inside the peer, free of the delay of polling the admin API.
    """
    if not line.startswith("{"):
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or entry.get("logger") != __name__:
        return None
    m = _EVENT.match(str(entry.get("msg", "")))
    if m is None:
        return None
    return LoggedEvent(float(entry["ts"]), str(entry.get("peer", "-")), m[1], m[2], m[3], int(m[4]), m[5])


def read_events(log_paths: Iterable[Path]) -> list[LoggedEvent]:
    """Every membership event logged in these JSON log files, file by file (a restarted
    peer appends to its log, so all its lives are there)."""
    out = []
    for path in log_paths:
        for line in path.read_text(errors="replace").splitlines():
            event = parse_event_line(line)
            if event is not None:
                out.append(event)
    return out


def _take_reply(outs: list[Output], to: str) -> Message | None:
    """Remove and return the push-pull reply addressed to ``to`` from ``outs``."""
    for i, out in enumerate(outs):
        if isinstance(out, Send) and out.to == to and isinstance(out.message, PushPull) and out.message.reply:
            del outs[i]
            return out.message
    return None
