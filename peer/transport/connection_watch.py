"""Counting the silent connections gRPC closes on the plaintext gossip port.

gRPC's core closes a caller that never opens HTTP/2 within
``grpc.server_handshake_timeout_ms`` (peer/transport/grpc_transport.py), which keeps
idle sockets from taking every descriptor. But it does so inside its C core: Python
never learns that anyone connected, so a flood of silent connections showed up in no
metric. (The TLS front accepts connections itself and counts them as ``tls_timeout``.)

gRPC's channelz does know: it lists every open connection of a server, with an id that
is never reused. ``ConnectionWatch`` lists the gossip server's connections every
``period`` seconds and notices the ones that disappear. One that lived for the
handshake timeout, no less and at most a second more (within the resolution of the
polls), was closed by gRPC for saying nothing: it is counted as a ``silent_connection`` refusal. An honest
gRPC client sends its preface at once and keeps its channel open for minutes, so it
does not end exactly at that deadline; a caller that hangs up by itself sooner (a TCP
health check, a port scan) is not counted, as the TLS front does not count it.

Listing costs ~7 ms per 1,000 open connections (C core, one JSON page per 1,000), done in
a thread; the per-connection detail (``channelz_get_socket``, ~0.8 ms each) is never asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from grpc._cython import cygrpc  # channelz: the C core's own record of servers and connections

from protocol.errors import Refusal

log = logging.getLogger(__name__)

PERIOD_SECONDS = 0.5
PAGE = 1000


class SilentConnection(Refusal):
    """A connection that sent nothing until gRPC's handshake deadline closed it."""

    reason = "silent_connection"


def server_ids() -> set[int]:
    """The channelz ids of every gRPC server of this process."""
    ids: set[int] = set()
    start = 0
    while True:
        page = json.loads(cygrpc.channelz_get_servers(start))
        servers = page.get("server", [])
        ids.update(int(s["ref"]["serverId"]) for s in servers)
        if page.get("end", False) or not servers:
            return ids
        start = max(ids) + 1


def open_connections(server_id: int) -> dict[int, str]:
    """socket id -> name ("chttp2 ipv4:1.2.3.4:5") of every open connection of a server."""
    sockets: dict[int, str] = {}
    start = 0
    while True:
        page = json.loads(cygrpc.channelz_get_server_sockets(server_id, start, PAGE))
        refs = page.get("socketRef", [])
        sockets.update((int(r["socketId"]), r.get("name", "")) for r in refs)
        if page.get("end", False) or not refs:
            return sockets
        start = max(sockets) + 1


@dataclass
class _Seen:
    name: str
    after: float   # the poll before the one that first listed it: it opened after this
    first: float   # the first poll that listed it
    last: float    # the latest poll that listed it


class Lifetimes:
    """Pure bookkeeping over polls: which connections disappeared, and could each have
    lived ``deadline`` seconds, or up to ``late`` more (gRPC's timer fires late on a
    loaded machine)? (``now`` comes in as an argument.)"""

    def __init__(self, deadline: float, late: float = 1.0) -> None:
        self.deadline = deadline
        self.late = late
        self._seen: dict[int, _Seen] = {}
        self._previous: float | None = None

    def poll(self, now: float, listed: dict[int, str]) -> list[tuple[str, float]]:
        """Record one listing; (name, shortest possible lifetime) of each connection gone
        since the last poll whose lifetime bounds contain the deadline."""
        after = self._previous if self._previous is not None else now
        silent = []
        for sid in [s for s in self._seen if s not in listed]:
            seen = self._seen.pop(sid)
            shortest, longest = seen.last - seen.first, now - seen.after
            if shortest <= self.deadline + self.late and self.deadline <= longest:
                silent.append((seen.name, shortest))
        for sid, name in listed.items():
            seen = self._seen.get(sid)
            if seen is None:
                self._seen[sid] = _Seen(name, after, now, now)
            else:
                seen.last = now
        self._previous = now
        return silent


class ConnectionWatch:
    """Polls one gRPC server's connections and reports each silent one gRPC closed."""

    def __init__(self, server_id: int, handshake_timeout: float, on_refused: Callable[[Refusal], None],
                 period: float = PERIOD_SECONDS) -> None:
        self.server_id = server_id
        self.lifetimes = Lifetimes(handshake_timeout)
        self.on_refused = on_refused
        self.period = period
        self.closed_silent = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                # In a thread: a flood of 100,000 connections takes ~0.7 s to list, which the
                # loop must not be held for (the GIL still switches every 5 ms).
                listed = await asyncio.to_thread(open_connections, self.server_id)
            except (ValueError, KeyError) as e:  # a channelz answer we cannot read: say so once, stop
                log.error("connection watch: cannot read gRPC's channelz (%s); silent connections go uncounted", e)
                return
            for name, lived in self.lifetimes.poll(loop.time(), listed):
                self.closed_silent += 1
                self.on_refused(SilentConnection(
                    f"{name.removeprefix('chttp2 ')} sent nothing for {lived:.1f}+ s: closed at the handshake deadline"))
            await asyncio.sleep(self.period)
