"""gRPC transport for gossip: the ``Exchange`` server side and the client side.

The transport moves bytes and maps errors; what the bytes mean is decided by the
exchange handler (``peer.gossip``), so the in-memory transport of the simulator can
drive the same handler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc

from hearsay.v1 import gossip_pb2, gossip_pb2_grpc
from peer.transport.channels import STREAM_OPTIONS, ChannelPool
from peer.transport.frames import Buffer, parse_frame, read_packet, serialize_frame, to_frames, to_raw_frames
from protocol import errors

EXCHANGE_METHOD = "/hearsay.v1.Gossip/Exchange"

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


# handler(packet, caller's transport address) -> reply packet. The packet is the
# reassembly buffer (a bytearray: bytes-like, read in place by protocol.wire); the reply
# is bytes-like, or a sequence of buffers (protocol.wire.encode_packet_parts) sent one
# after the other. Raises WireError.
InboundHandler = Callable[[bytearray, str], Awaitable[Buffer | Sequence[Buffer]]]


class GossipServicer(gossip_pb2_grpc.GossipServicer):
    """The ``Exchange`` method. Registered with ``add_to_server`` it reads and writes
    frames without protobuf copies; registered with the generated
    ``gossip_pb2_grpc.add_GossipServicer_to_server`` it speaks ``gossip_pb2.Frame``
    objects. The bytes on the wire are the same either way."""

    def __init__(self, handle: InboundHandler, max_packet_bytes: int,
                 on_rejected: Callable[[errors.WireError], None]) -> None:
        self._handle = handle
        self._max_packet_bytes = max_packet_bytes
        self._on_rejected = on_rejected
        self.raw_frames = False  # set by add_to_server

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
        for frame in (to_raw_frames(reply) if self.raw_frames else to_frames(reply)):
            yield frame


def add_to_server(servicer: GossipServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` like the generated ``add_GossipServicer_to_server``, but with
    the copy-free frame (de)serialisers of ``peer.transport.frames``."""
    servicer.raw_frames = True
    handlers = {"Exchange": grpc.stream_stream_rpc_method_handler(
        servicer.Exchange, request_deserializer=parse_frame, response_serializer=serialize_frame)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("hearsay.v1.Gossip", handlers),))
    register = getattr(server, "add_registered_method_handlers", None)
    if register is not None:
        register("hearsay.v1.Gossip", handlers)


def server_options() -> list[tuple[str, int]]:
    """Options for the ``grpc.aio.server`` that serves ``Exchange`` (the message limit
    stays gRPC's default 4 MiB: frames are at most 1 MiB)."""
    return list(STREAM_OPTIONS)




class GossipClient:
    """Opens one channel per partner address and runs push-pull exchanges over it."""

    def __init__(self, max_packet_bytes: int) -> None:
        self._max_packet_bytes = max_packet_bytes
        self._pool = ChannelPool()

    def _exchange_method(self, address: str) -> grpc.aio.StreamStreamMultiCallable:
        channel = self._pool.get(address)
        # The generated stub's method, with the copy-free frame (de)serialisers.
        return channel.stream_stream(EXCHANGE_METHOD, request_serializer=serialize_frame,
                                     response_deserializer=parse_frame)

    async def exchange(self, address: str, packet: Buffer | Sequence[Buffer], timeout: float) -> bytearray:
        """Send ``packet`` (bytes-like, or a sequence of buffers sent one after the other)
        to ``address`` and return the packet it answers with, as one buffer."""
        call = self._exchange_method(address)(to_raw_frames(packet), timeout=timeout)
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
        await self._pool.forget(address)

    async def close(self) -> None:
        await self._pool.close()
