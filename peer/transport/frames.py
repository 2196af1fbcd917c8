"""Packets as a stream of frames: slicing, reassembly within a size limit, and the
``Frame`` message's protobuf encoding done by hand, without copies.

On the wire a frame is the ``hearsay.v1.Frame`` protobuf message (``bytes data = 1;
bool end = 2;``) and stays exactly that: any protobuf client or server can talk to
us. But going through the generated class costs four copies of every byte (into the
message, out of ``SerializeToString``; into the parsed message, out of ``.data``),
and the Python protobuf runtime refuses a ``memoryview``. ``serialize_frame`` and
``parse_frame`` write and read the two fields directly: one copy to serialise (gRPC
needs ``bytes``), none to parse (``data`` is a view of the received message).
"""

from __future__ import annotations

import mmap
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from hearsay.v1 import gossip_pb2
from protocol.errors import MalformedPacket, PacketTooLarge, SizeMismatch, TruncatedPacket
from protocol.wire import FRAME_BYTES, Buffer, packet_size  # noqa: F401 - the last two re-exported

# Invocation metadata in which a caller declares the size of the packet it streams: the
# callee refuses an oversize packet before reading it, and one that sends more or fewer.
PACKET_BYTES_KEY = "hearsay-packet-bytes"



@dataclass(frozen=True, slots=True)
class RawFrame:
    """One frame without the protobuf class: ``data`` may be a view of a larger buffer.
    ``error`` is set when the bytes received were not a well-formed ``Frame``."""

    data: Buffer
    end: bool = False
    error: str = ""


_DATA_TAG = b"\x0a"       # field 1, length-delimited
_END_TRUE = b"\x10\x01"   # field 2, varint 1


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def serialize_frame(frame: RawFrame | gossip_pb2.Frame) -> bytes:
    """The protobuf encoding of ``frame``, byte for byte what ``SerializeToString`` gives."""
    if isinstance(frame, gossip_pb2.Frame):
        return frame.SerializeToString()
    n = len(frame.data) if not isinstance(frame.data, memoryview) else frame.data.nbytes
    parts: list[Buffer] = [_DATA_TAG, _varint(n), frame.data] if n else []
    if frame.end:
        parts.append(_END_TRUE)
    return b"".join(parts)


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise ValueError("bad varint")
        b = view[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def parse_frame(message: bytes) -> RawFrame:
    """A ``Frame`` message read without copying ``data``; never raises (a malformed
    message becomes a frame whose ``error`` says why, refused by ``read_packet``)."""
    view = memoryview(message)
    data: Buffer = b""
    end = False
    pos = 0
    try:
        while pos < len(view):
            key, pos = _read_varint(view, pos)
            field, kind = key >> 3, key & 7
            if kind == 0:
                value, pos = _read_varint(view, pos)
                if field == 2:
                    end = value != 0
            elif kind == 2:
                length, pos = _read_varint(view, pos)
                if pos + length > len(view):
                    raise ValueError("length-delimited field runs past the message")
                if field == 1:
                    data = view[pos:pos + length]
                pos += length
            elif kind in (1, 5):
                pos += 8 if kind == 1 else 4
                if pos > len(view):
                    raise ValueError("fixed-width field runs past the message")
            else:
                raise ValueError(f"wire type {kind}")
            if field in (1, 2) and kind != (2 if field == 1 else 0):
                raise ValueError(f"field {field} with wire type {kind}")
    except ValueError as e:
        return RawFrame(b"", False, f"malformed frame message: {e}")
    return RawFrame(data, end)


class _Reassembly:
    """A growing buffer of received bytes in private anonymous memory (``mmap``).

    Why not a ``bytearray``: every byte of a fresh heap buffer is page-faulted in 4 KiB
    pages, and on a virtual machine that costs more than the copy itself (measured: 100 MB
    reassembled into a growing ``bytearray`` 58-77 ms of CPU, into this buffer 15-26 ms;
    bench/RESULTS.md "Transport at gRPC's speed"). Here the pages are advised as huge pages
    (``MADV_HUGEPAGE``, 2 MiB per fault) once the buffer is large, and growth is
    ``mremap`` (``mmap.resize``), which moves page tables instead of copying bytes. Only
    pages written to are resident: the capacity doubles, but a stalled stream still costs
    only what it sent. The mapping is unmapped when the last view of it is dropped.
    """

    _HUGE = 4 << 20  # below this, 4 KiB pages (a delta packet does not fault in 2 MiB)

    def __init__(self, limit: int) -> None:
        self._limit = max(limit, 1)
        self._map: mmap.mmap | None = None
        self.size = 0

    def _reserve(self, needed: int) -> mmap.mmap:
        current = self._map
        capacity = len(current) if current is not None else 0
        if needed <= capacity and current is not None:
            return current
        capacity = min(max(needed, 2 * capacity, FRAME_BYTES), self._limit)
        if current is None:
            current = self._map = mmap.mmap(-1, capacity, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        else:
            current.resize(capacity)
        if capacity >= self._HUGE and _HUGEPAGE is not None:
            current.madvise(_HUGEPAGE)
        return current

    def adopt(self, room: mmap.mmap) -> None:
        """Reassemble into ``room`` (a mapping a past reassembly made, which nothing views any
        more) instead of a fresh one: its pages are already resident, so none is faulted."""
        if self._map is None and self.size == 0:
            self._map = room

    def append(self, data: Buffer) -> None:
        n = data.nbytes if isinstance(data, memoryview) else len(data)
        if n:
            self._reserve(self.size + n)[self.size:self.size + n] = data
            self.size += n

    def packet(self) -> memoryview:
        """The bytes received, as one writable view handed over to the caller."""
        if self._map is None or self.size == 0:
            return memoryview(bytearray(self.size))
        self._map.resize(self.size)
        return memoryview(self._map)


_HUGEPAGE: int | None = getattr(mmap, "MADV_HUGEPAGE", None)


async def read_packet(frames: AsyncIterable[RawFrame | gossip_pb2.Frame], max_bytes: int,
                      declared: int | None = None,
                      on_head: Callable[[Buffer], mmap.mmap | None] | None = None) -> memoryview:
    """Concatenate frames up to the one marked ``end``, into one buffer.

    Every size is checked before the bytes it covers are kept: a ``declared`` packet
    size (``PACKET_BYTES_KEY`` metadata) against ``max_bytes`` before any frame is read,
    each frame against ``FRAME_BYTES``, and the running total against ``max_bytes`` and
    against the declared size before the frame is appended. The buffer grows as data
    arrives, never to the declared size up front: a stream that declares a large packet
    and then stalls costs only what it sent. A stream that ends without an ``end``
    frame, or with fewer bytes than it declared, is a truncated packet. The buffer
    itself is returned as a writable ``memoryview`` that the caller owns (no final copy);
    ``protocol.wire.decode_packet`` reads it in place.

    ``on_head`` is called once with the first frame's bytes, before they are kept and while
    the rest is still to come (the packet's header is in them: ``peer.runtime.keyframe_room``
    drops the copy a keyframe replaces then, so that the two are never held together). It may
    return that copy's buffer, a mapping of a past ``read_packet`` nothing views any more: the
    packet is then reassembled into it, memory already faulted in, instead of a fresh mapping.
    """
    if declared is not None and declared > max_bytes:
        raise PacketTooLarge(f"declared packet of {declared} bytes exceeds the limit of {max_bytes} bytes")
    buf = _Reassembly(declared if declared is not None else max_bytes)
    async for frame in frames:
        error = getattr(frame, "error", "")
        if error:
            raise MalformedPacket(error)
        data = frame.data
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        if size > FRAME_BYTES:
            raise MalformedPacket(f"frame of {size} bytes exceeds {FRAME_BYTES}")
        if buf.size + size > max_bytes:
            raise PacketTooLarge(f"packet exceeds the limit of {max_bytes} bytes")
        if declared is not None and buf.size + size > declared:
            raise SizeMismatch(f"more than the {declared} bytes declared arrived")
        if on_head is not None:
            room = on_head(data)
            if room is not None:
                buf.adopt(room)
            on_head = None
        buf.append(data)
        if frame.end:
            if declared is not None and buf.size < declared:
                raise TruncatedPacket(f"packet ended after {buf.size} of the {declared} bytes declared")
            return buf.packet()
        # Drop the received message now that its bytes are in ``buf``: held across the wait
        # for the next frame, it would double what a stalled stream costs.
        del frame, data
    raise TruncatedPacket(f"stream ended after {buf.size} bytes without an end-of-packet frame")


def parse_declared(value: str | bytes | None) -> int | None:
    """The packet size a caller declared in ``PACKET_BYTES_KEY`` metadata (None: none)."""
    if value is None:
        return None
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if not (0 < len(text) <= 19 and text.isdigit()):
        raise MalformedPacket(f"declared packet size {text[:32]!r} is not a byte count")
    return int(text)


_SMALL = 64 << 10


def _slices(packet: Buffer | Sequence[Buffer], frame_bytes: int) -> Iterator[Buffer]:
    """Chunks of at most ``frame_bytes`` over one buffer or the concatenation of several
    (``protocol.wire.encode_packet_parts``). Large parts are cut into views without
    copying; runs of small parts (msgpack headers, small tensors) are gathered into one
    chunk so that they do not each cost a message."""
    parts: Iterable[Buffer] = [packet] if isinstance(packet, (bytes, bytearray, memoryview)) else packet
    pending = bytearray()
    empty = True
    for part in parts:
        view = memoryview(part).cast("B")
        if view.nbytes < _SMALL:
            if len(pending) + view.nbytes > frame_bytes:
                empty = False
                yield bytes(pending)
                pending = bytearray()
            pending += view
            continue
        if pending:
            # Top the gathered bytes up from this part, so no frame is needlessly small.
            fill = frame_bytes - len(pending)
            pending += view[:fill]
            view = view[fill:]
            empty = False
            yield bytes(pending)
            pending = bytearray()
        for start in range(0, view.nbytes, frame_bytes):
            empty = False
            yield view[start:start + frame_bytes]
    if pending or empty:
        yield bytes(pending)


def to_raw_frames(packet: Buffer | Sequence[Buffer], frame_bytes: int = FRAME_BYTES) -> Iterator[RawFrame]:
    """The packet as frames of at most ``frame_bytes``, views of it; the last is marked ``end``."""
    previous: Buffer | None = None
    for chunk in _slices(packet, frame_bytes):
        if previous is not None:
            yield RawFrame(previous)
        previous = chunk
    assert previous is not None
    yield RawFrame(previous, end=True)


def to_frames(packet: Buffer | Sequence[Buffer]) -> Iterator[gossip_pb2.Frame]:
    """The packet as protobuf ``Frame`` messages (a copy each: protobuf wants ``bytes``)."""
    for frame in to_raw_frames(packet):
        yield gossip_pb2.Frame(data=bytes(frame.data), end=frame.end)
