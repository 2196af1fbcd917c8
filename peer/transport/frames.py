"""Reassembling a packet from the frames of a gRPC stream, within a size limit."""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterator

from hearsay.v1 import gossip_pb2
from protocol.errors import MalformedPacket, PacketTooLarge, TruncatedPacket
from protocol.wire import FRAME_BYTES, split_frames


async def read_packet(frames: AsyncIterable[gossip_pb2.Frame], max_bytes: int) -> bytes:
    """Concatenate frames up to the one marked ``end``.

    The running total is checked against ``max_bytes`` before each frame is appended,
    so a sender cannot make us buffer more than the limit. A stream that ends without
    an ``end`` frame is a truncated packet.
    """
    buf = bytearray()
    async for frame in frames:
        if len(frame.data) > FRAME_BYTES:
            raise MalformedPacket(f"frame of {len(frame.data)} bytes exceeds {FRAME_BYTES}")
        if len(buf) + len(frame.data) > max_bytes:
            raise PacketTooLarge(f"packet exceeds the limit of {max_bytes} bytes")
        buf += frame.data
        if frame.end:
            return bytes(buf)
    raise TruncatedPacket(f"stream ended after {len(buf)} bytes without an end-of-packet frame")


def to_frames(packet: bytes) -> Iterator[gossip_pb2.Frame]:
    """The packet as frames of at most ``FRAME_BYTES``; the last one is marked ``end``."""
    chunks = list(split_frames(packet))
    for i, chunk in enumerate(chunks):
        yield gossip_pb2.Frame(data=bytes(chunk), end=i == len(chunks) - 1)
