"""An in-process transport: ``GossipEngine``s exchange packets by direct calls, on a clock of the caller's.

It stands where ``peer.transport.grpc_transport`` stands, with the same contract, so the
simulator (``peer.sim.swarm``) runs the daemon's whole packet path: ``exchange`` is
``GossipClient.exchange`` (the packet handed over as the reassembled ``bytearray`` the
gRPC transport gives the callee, the reply returned as one ``bytearray``), and a refused
packet surfaces as the error (peer/transport/errors.py) of the status code the gRPC servicer would
have aborted with (``status_for``; a busy link is ABORTED, an unknown address or a
lost message is UNAVAILABLE / DEADLINE_EXCEEDED), after the callee's ``on_rejected``
counted it, as ``GossipServicer`` does.

Time is the caller's: ``sleep`` (an awaitable of virtual seconds) is awaited for each
leg's latency, and for the timeout when a message is lost. With zero latency and no
loss, nothing is awaited and an exchange completes in one call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc

from peer.transport.errors import exchange_error
from peer.transport.grpc_transport import InboundHandler, status_for
from protocol import errors
from protocol.deadlines import Budget
from protocol.wire import Buffer, packet_size


@dataclass
class Endpoint:
    handle: InboundHandler
    on_rejected: Callable[[errors.Refusal], None]
    up: bool = True


# latency(src, dst, packet bytes) -> one-way seconds; lost(src, dst) -> whether this message is lost.
Latency = Callable[[str, str, int], float]
Lost = Callable[[str, str], bool]
# Called for each packet: (src, dst, packet bytes, reply?, event), the event being "sent" or
# "lost" when it is put on the wire, and "arrived" when a sent one reaches dst.
Observer = Callable[[str, str, int, bool, str], None]


class MemoryNetwork:
    """Addresses -> inbound handlers. ``client(address)`` gives a peer its ``exchange`` callable."""

    def __init__(self, *, max_packet_bytes: int, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 latency: Latency | None = None, lost: Lost | None = None) -> None:
        self.max_packet_bytes = max_packet_bytes
        self.sleep = sleep
        self.latency = latency or (lambda _src, _dst, _n: 0.0)
        self.lost = lost or (lambda _src, _dst: False)
        self.observers: list[Observer] = []
        self._endpoints: dict[str, Endpoint] = {}

    def serve(self, address: str, handle: InboundHandler, on_rejected: Callable[[errors.Refusal], None]) -> None:
        self._endpoints[address] = Endpoint(handle, on_rejected)

    def set_up(self, address: str, up: bool) -> None:
        """A peer that is down answers nothing (a crashed process: UNAVAILABLE)."""
        self._endpoints[address].up = up

    def client(self, address: str) -> Callable[[str, Buffer | Sequence[Buffer], float | Budget],
                                                Awaitable[bytearray]]:
        """The ``Exchange`` callable of the peer at ``address`` (``GossipEngine.exchange_with``'s argument)."""
        async def exchange(dst: str, packet: Buffer | Sequence[Buffer], timeout: float | Budget) -> bytearray:
            return await self.exchange(address, dst, packet, timeout)
        return exchange

    async def _leg(self, src: str, dst: str, size: int, reply: bool, timeout: float) -> None:
        """One packet from ``src`` to ``dst``: its latency, or the caller's timeout when it is lost."""
        lost = self.lost(src, dst)
        self._notify(src, dst, size, reply, "lost" if lost else "sent")
        if lost:
            await self.sleep(timeout)
            raise exchange_error(grpc.StatusCode.DEADLINE_EXCEEDED, "message lost")
        delay = self.latency(src, dst, size)
        if delay > 0:
            await self.sleep(delay)
        self._notify(src, dst, size, reply, "arrived")

    def _notify(self, src: str, dst: str, size: int, reply: bool, event: str) -> None:
        for observe in self.observers:
            observe(src, dst, size, reply, event)

    async def exchange(self, src: str, dst: str, packet: Buffer | Sequence[Buffer],
                       timeout: float | Budget) -> bytearray:
        """``timeout`` (seconds, or a ``protocol.deadlines.Budget``): a lost message costs
        its total, as a gRPC deadline would."""
        total = Budget.of(timeout).total
        endpoint = self._endpoints.get(dst)
        size = packet_size(packet)
        if endpoint is None or not endpoint.up:
            raise exchange_error(grpc.StatusCode.UNAVAILABLE, f"{dst} is not reachable")
        if size > self.max_packet_bytes:  # the gRPC callee refuses a declared oversize packet unread
            raise exchange_error(grpc.StatusCode.RESOURCE_EXHAUSTED, f"packet of {size} bytes is too large")
        await self._leg(src, dst, size, False, total)
        if not endpoint.up:  # crashed while the packet was in flight
            raise exchange_error(grpc.StatusCode.UNAVAILABLE, f"{dst} went down")
        try:
            reply = await endpoint.handle(bytearray().join(_parts(packet)), src)
        except errors.Refusal as e:
            if e.reason != "busy":
                endpoint.on_rejected(e)
            code = grpc.StatusCode.ABORTED if e.reason == "busy" else status_for(e)
            raise exchange_error(code, f"packet refused ({e.reason}): {e.message}") from None
        answer = bytearray().join(_parts(reply))
        await self._leg(dst, src, len(answer), True, total)
        return answer


def _parts(packet: Buffer | Sequence[Buffer]) -> Sequence[Buffer]:
    return [packet] if isinstance(packet, (bytes, bytearray, memoryview)) else packet
