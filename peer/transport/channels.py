"""One gRPC channel per peer address, shared by the gossip and membership clients."""

from __future__ import annotations

import grpc

# Frames are 1 MiB: read the socket in large chunks rather than gRPC's default 8 KiB
# minimum, so a frame is not assembled from a hundred small reads.
STREAM_OPTIONS = (
    ("grpc.experimental.tcp_min_read_chunk_size", 256 << 10),
    ("grpc.experimental.tcp_max_read_chunk_size", 4 << 20),
)
# gRPC's default reconnect backoff grows to 120 s: a partner that restarted on the same
# address would look dead for minutes. Peers come and go; retry quickly instead.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
) + STREAM_OPTIONS


class ChannelPool:
    """Channels created on first use; ``forget`` drops one so the next call starts afresh."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            self._channels[address] = channel
        return channel

    async def forget(self, address: str) -> None:
        channel = self._channels.pop(address, None)
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        for address in list(self._channels):
            await self.forget(address)
