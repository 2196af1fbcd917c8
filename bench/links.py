"""Real links for bench.transport: two peers across a veth pair shaped with ``tc ... tbf``.

For each rate (1 Gbit/s and 100 Mbit/s), the answering peer (tests/exchange_peer.py, the
daemon's engine behind its gRPC servicer) runs in a network namespace at the far end of
a veth pair (tests/shaped_link.py), both directions shaped to the rate; this process
starts the exchanges with the daemon's ``GossipEngine`` and ``GossipClient``, with
adaptive deadlines (protocol/deadlines.py) on.

- ``keyframe_over_link``: a forced dense fp32 keyframe each way; the reply's frames are
  timed as they arrive, and (reply bytes after its first frame) / (last frame − first
  frame) over the link rate is what the pull direction achieves on the wire. The partner
  streams its reply while our request still arrives (peer/transport/answering.py: never
  more reply bytes than request bytes until the request is taken, its last frame after),
  so the two directions share the exchange's time.
  ``keyframe_exchange_over_link`` is both packets' bytes over the whole exchange
  (encoding, the partner's decode and encode, and our merge included; the partner merges
  after its reply), over one direction's rate: above 1 when both directions move at once.
- ``delta_exchanges_per_s``: a stream of push-pull exchanges of 1 %-top-k int8 deltas,
  end to end; ``delta_over_link``: their packet bytes (both ways) over their time.

Needs root (namespaces, tc); without it the section is skipped and says so.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

LINK_RATES_MBIT = (1000.0, 100.0)


def _timed_replies(arrivals: list[tuple[float, int]]) -> Callable[[], None]:
    """Record (time, bytes) of each reply frame the gRPC client reads; returns the undo."""
    from peer.transport import grpc_transport

    inner = grpc_transport._watched_reply

    async def watched(call: Any, received: Callable[[], None]) -> AsyncIterator[Any]:
        async for frame in inner(call, received):
            data = frame.data
            arrivals.append((time.perf_counter(), data.nbytes if isinstance(data, memoryview) else len(data)))
            yield frame

    grpc_transport._watched_reply = watched  # type: ignore[assignment]

    def undo() -> None:
        grpc_transport._watched_reply = inner  # type: ignore[assignment]
    return undo


async def _measure(rate_mbit: float, address: str, host_address: str, hidden: int, layers: int,
                   keyframe_reps: int, deltas: int) -> dict[str, Any]:
    from peer.transport.grpc_transport import GossipClient
    from protocol.deadlines import DeadlinePolicy
    from tests.exchange_peer import build_engine

    engine = build_engine(hidden, layers, 1, f"{host_address}:1", codec="topk_int8", deadlines=DeadlinePolicy())
    engine.membership.add_seed(address)
    member = engine.membership.get(address)
    client = GossipClient(max_packet_bytes=engine.limits.max_packet_bytes)
    link_rate = rate_mbit * 1e6 / 8  # bytes/s
    arrivals: list[tuple[float, int]] = []
    undo = _timed_replies(arrivals)

    async def one() -> tuple[float, int]:
        stats = engine.link(address)
        before = stats.bytes_sent + stats.bytes_received
        started = time.perf_counter()
        if not await engine.exchange_with(member, client.exchange):
            raise RuntimeError(f"exchange over the {rate_mbit:g} Mbit/s link did not merge: {engine.stats}")
        return time.perf_counter() - started, stats.bytes_sent + stats.bytes_received - before

    try:
        pulls, whole = [], []
        for _ in range(keyframe_reps):
            engine.sender.invalidate(address)
            engine._want_keyframe.add(address)  # the partner answers with a keyframe too
            arrivals.clear()
            seconds, nbytes = await one()
            (first, _), (last, _) = arrivals[0], arrivals[-1]
            pulled = sum(n for _, n in arrivals[1:])
            pulls.append(pulled / (last - first) / link_rate)
            whole.append(nbytes / seconds / link_rate)
        delta_seconds, delta_bytes = 0.0, 0
        for _ in range(deltas):
            seconds, nbytes = await one()
            delta_seconds += seconds
            delta_bytes += nbytes
    finally:
        undo()
        await client.close()
    return {"rate_mbit": rate_mbit,
            "keyframe_over_link": statistics.median(pulls),
            "keyframe_exchange_over_link": statistics.median(whole),
            "delta_exchanges_per_s": deltas / delta_seconds,
            "delta_over_link": delta_bytes / delta_seconds / link_rate,
            "delta_packet_bytes": delta_bytes / (2 * deltas),
            "keyframe_pull_fractions": pulls}


def bench_links(hidden: int, layers: int, keyframe_reps: int, deltas: int,
                rates: tuple[float, ...] = LINK_RATES_MBIT) -> list[dict[str, Any]]:
    """One result per rate; [] (with a message) when not root."""
    if os.geteuid() != 0:
        print("links: skipped (network namespaces and tc need root)")
        return []
    from tests.exchange_peer import spawn, stop
    from tests.shaped_link import ShapedLink

    results = []
    with ShapedLink(tag="hbl", host_address="10.79.1.1", far_address="10.79.1.2") as link:
        for rate in rates:
            link.shape(rate)
            proc, address = spawn(f"{link.far_address}:0", hidden, layers, link.command([]), codec="topk_int8")
            try:
                results.append(asyncio.run(_measure(rate, address, link.host_address, hidden, layers,
                                                    keyframe_reps, deltas)))
            finally:
                stop(proc)
    return results


def print_links(links: list[dict[str, Any]]) -> None:
    for r in links:
        print(f"tbf {r['rate_mbit']:g} Mbit/s: keyframe {r['keyframe_over_link']:.2f} x link on the wire "
              f"({r['keyframe_exchange_over_link']:.2f} x end to end), top-1% int8 deltas "
              f"{r['delta_exchanges_per_s']:.2f} exch/s ({r['delta_over_link']:.3f} x link, "
              f"{r['delta_packet_bytes'] / 1e3:.0f} kB/packet)")
