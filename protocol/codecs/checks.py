"""Validation helpers shared by the lossy codecs.

``decode`` runs on bytes from the network, so every parameter is checked for type
and range, and every payload length is computed from the *declared* shape and
parameters and compared with what arrived, before anything proportional to a
declared size is allocated. Failures are typed ``WireError``s: a parameter the
codec does not know (or lacks) is ``UnknownCodec``, a value out of range is
``MalformedPacket``, a length that disagrees is ``SizeMismatch``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from protocol.codecs.base import Params
from protocol.errors import MalformedPacket, SizeMismatch, UnknownCodec

# Seeds are unsigned 63-bit so that they survive msgpack and Python ints alike.
SEED_LIMIT = 1 << 63


def expect_keys(codec: str, params: Params, keys: Iterable[str]) -> None:
    """Refuse params with missing or unknown keys: both mean a codec we do not speak."""
    want = set(keys)
    got = set(params)
    if got != want:
        raise UnknownCodec(f"codec {codec!r} expects parameters {sorted(want)}, got {sorted(got)}")


def int_param(codec: str, params: Params, key: str, lo: int, hi: int) -> int:
    """``params[key]`` as an int in ``[lo, hi]``; bools and floats are refused."""
    value = params[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedPacket(f"codec {codec!r}: parameter {key!r} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise MalformedPacket(f"codec {codec!r}: parameter {key!r}={value} outside [{lo}, {hi}]")
    return value


def expect_length(codec: str, payload: bytes | memoryview, expected: int, shape: tuple[int, ...]) -> None:
    """Refuse a payload whose length is not the one the declared shape and params imply."""
    if len(payload) != expected:
        raise SizeMismatch(f"codec {codec!r}: tensor of shape {list(shape)} with these parameters "
                           f"needs {expected} payload bytes, got {len(payload)}")


# No real tensor has a dimension or a non-zero extent beyond this; numpy itself refuses
# shapes whose non-zero dimensions overflow its index type, even when one dimension is 0.
MAX_EXTENT = 1 << 48


def numel(shape: tuple[int, ...]) -> int:
    """Element count of ``shape``; ``MalformedPacket`` for a shape no array can have."""
    extent = math.prod(d for d in shape if d)
    if any(d < 0 for d in shape) or extent > MAX_EXTENT:
        raise MalformedPacket(f"shape {list(shape)} cannot be allocated")
    return math.prod(shape)


def float_dtype(codec: str, dtype: np.dtype) -> np.dtype:
    """The requested output dtype, which must be a float type for every lossy codec."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise MalformedPacket(f"codec {codec!r} cannot produce {dtype.name} tensors")
    return dtype
