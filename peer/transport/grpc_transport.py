"""gRPC transport for gossip: the ``Exchange`` server side and the client side.

The transport moves bytes and maps errors; what the bytes mean is decided by the
exchange handler (``peer.gossip``), so the in-memory transport of the simulator can
drive the same handler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from hearsay.v1 import gossip_pb2, gossip_pb2_grpc
from peer.transport.frames import read_packet, to_frames
from protocol import errors

# What the callee answers for each kind of refused packet.
STATUS_FOR: dict[type[errors.WireError], grpc.StatusCode] = {
    errors.FingerprintMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    errors.UnsupportedVersion: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PacketTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def status_for(error: errors.WireError) -> grpc.StatusCode:
    for kind, code in STATUS_FOR.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INVALID_ARGUMENT


class ExchangeRefused(Exception):
    """The partner refused our packet or failed to answer; ``code`` is the gRPC status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


# handler(packet bytes, caller's transport address) -> reply packet bytes. Raises WireError.
InboundHandler = Callable[[bytes, str], Awaitable[bytes]]


class GossipServicer(gossip_pb2_grpc.GossipServicer):
    def __init__(self, handle: InboundHandler, max_packet_bytes: int,
                 on_rejected: Callable[[errors.WireError], None]) -> None:
        self._handle = handle
        self._max_packet_bytes = max_packet_bytes
        self._on_rejected = on_rejected

    async def Exchange(self, request_iterator: AsyncIterator[gossip_pb2.Frame],
                       context: grpc.aio.ServicerContext) -> AsyncIterator[gossip_pb2.Frame]:
        try:
            packet = await read_packet(request_iterator, self._max_packet_bytes)
            reply = await self._handle(packet, context.peer())
        except errors.WireError as e:
            if e.reason == "busy":
                await context.abort(grpc.StatusCode.ABORTED, e.message)
                return
            self._on_rejected(e)
            await context.abort(status_for(e), f"packet refused ({e.reason}): {e.message}")
            return
        for frame in to_frames(reply):
            yield frame


# gRPC's default reconnect backoff grows to 120 s: a partner that restarted on the same
# address would look dead for minutes. Peers come and go; retry quickly instead.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


class GossipClient:
    """Opens one channel per partner address and runs push-pull exchanges over it."""

    def __init__(self, max_packet_bytes: int) -> None:
        self._max_packet_bytes = max_packet_bytes
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, address: str) -> gossip_pb2_grpc.GossipStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            self._channels[address] = channel
        return gossip_pb2_grpc.GossipStub(channel)

    async def exchange(self, address: str, packet: bytes, timeout: float) -> bytes:
        """Send ``packet`` to ``address`` and return the packet it answers with."""
        call = self._stub(address).Exchange(to_frames(packet), timeout=timeout)
        try:
            return await read_packet(call, self._max_packet_bytes)
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                await self.forget(address)  # a fresh channel next time, not one stuck in backoff
            raise ExchangeRefused(e.code(), e.details() or "") from None
        except errors.WireError:
            call.cancel()
            raise

    async def forget(self, address: str) -> None:
        channel = self._channels.pop(address, None)
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        for address in list(self._channels):
            await self.forget(address)
