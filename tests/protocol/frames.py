"""Test helpers for framing (only tests need them; the transport frames packets with
``peer.transport.frames``)."""

from __future__ import annotations

from collections.abc import Iterator

from protocol.wire import FRAME_BYTES


def split_frames(data: bytes, frame_bytes: int = FRAME_BYTES) -> Iterator[memoryview]:
    """Slices of ``data`` of at most ``frame_bytes`` each, without copying."""
    view = memoryview(data)
    for start in range(0, max(len(view), 1), frame_bytes):
        yield view[start:start + frame_bytes]
