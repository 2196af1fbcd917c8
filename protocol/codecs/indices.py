"""Lossless coding of a sorted index set: gaps, byte planes, zstd.

Sparse deltas spend most of their bytes on *where* the values go. Sorted indices
become gaps (``idx[i] - idx[i-1] - 1``, small numbers when the selection is dense
enough), stored in the narrowest unsigned width that holds the largest gap, split
into byte planes (all low bytes, then all high bytes) so that the nearly constant
high bytes form long runs, and compressed with zstd. Lossless coding only pays on
these index arrays; the values themselves look random and do not compress.
"""

from __future__ import annotations

import numpy as np
import zstandard

from protocol.errors import MalformedPacket, SizeMismatch

WIDTHS = (1, 2, 4)
# Fast levels: the index stream is small, and encode speed is a target.
_LEVEL = 1


def encode(indices: np.ndarray) -> tuple[bytes, int]:
    """Compress strictly increasing non-negative int64 ``indices``; returns the blob and
    the gap width in bytes (a decode parameter)."""
    if indices.size == 0:
        return zstandard.ZstdCompressor(level=_LEVEL).compress(b""), 1
    gaps = np.diff(indices, prepend=-1)
    gaps -= 1
    top = int(gaps.max())
    width = 1 if top < 1 << 8 else 2 if top < 1 << 16 else 4
    planes = gaps.astype(f"<u{width}").view(np.uint8).reshape(-1, width).T
    # A fresh compressor per call: zstd contexts must not be shared between threads.
    return zstandard.ZstdCompressor(level=_LEVEL).compress(np.ascontiguousarray(planes)), width


def decode(blob: bytes | memoryview, count: int, width: int, limit: int) -> np.ndarray:
    """The ``count`` indices in ``blob``, all below ``limit``; raises a ``WireError`` for a
    blob that is not exactly such a set (the declared sizes are checked before zstd is
    allowed to allocate anything)."""
    if width not in WIDTHS:
        raise MalformedPacket(f"index width {width} not one of {WIDTHS}")
    expected = count * width
    try:
        declared = zstandard.frame_content_size(blob)
    except zstandard.ZstdError as e:
        raise MalformedPacket(f"index block is not a zstd frame: {e}") from None
    if declared != expected:
        raise SizeMismatch(f"index block declares {declared} bytes, {count} indices of width "
                           f"{width} need {expected}")
    try:
        raw = zstandard.ZstdDecompressor().decompress(blob, max_output_size=expected,
                                                      allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise MalformedPacket(f"index block does not decompress: {e}") from None
    if len(raw) != expected:
        raise SizeMismatch(f"index block decompressed to {len(raw)} bytes, expected {expected}")
    if count == 0:
        return np.empty(0, np.int64)
    planes = np.frombuffer(raw, np.uint8).reshape(width, count)
    gaps = np.ascontiguousarray(planes.T).view(f"<u{width}").reshape(count)
    indices = gaps.astype(np.int64)
    indices += 1
    np.cumsum(indices, out=indices)
    indices -= 1
    # Gaps are unsigned, so the indices increase strictly; only the last can be too big.
    if indices[-1] >= limit:
        raise MalformedPacket(f"index {int(indices[-1])} out of range for a tensor of {limit} elements")
    return indices
