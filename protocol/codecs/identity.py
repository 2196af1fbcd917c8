"""Lossless codecs: ``raw`` (exact bytes of the tensor's dtype) and ``fp32``.

``fp32`` is the uncompressed baseline every other codec is measured against.
``raw`` carries non-float tensors (integer counters such as BatchNorm's
``num_batches_tracked``) that no lossy codec may touch.
"""

from __future__ import annotations


import numpy as np

from protocol.codecs.base import Encoded, Params
from protocol.codecs.checks import numel
from protocol.errors import MalformedPacket, SizeMismatch, UnknownCodec


def _expect_no_params(name: str, params: Params) -> None:
    if params:
        raise UnknownCodec(f"codec {name!r} takes no parameters, got {sorted(params)!r}")


def _from_bytes(payload: bytes | memoryview, shape: tuple[int, ...], wire_dtype: np.dtype,
                name: str) -> np.ndarray:
    count = numel(shape)
    expected = count * wire_dtype.itemsize
    if len(payload) != expected:
        raise SizeMismatch(
            f"codec {name!r}: tensor of shape {list(shape)} needs {expected} bytes, got {len(payload)}")
    return np.frombuffer(payload, dtype=wire_dtype, count=count).reshape(shape)


class RawCodec:
    """The tensor's own bytes in little-endian order: exact for any supported dtype."""

    name = "raw"

    def supports(self, dtype: np.dtype) -> bool:
        return np.dtype(dtype).kind in "fiub"

    def encode(self, x: np.ndarray) -> Encoded:
        wire = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<"))
        return Encoded(wire.tobytes())

    def decode(self, payload: bytes | memoryview, shape: tuple[int, ...], dtype: np.dtype,
               params: Params) -> np.ndarray:
        _expect_no_params(self.name, params)
        dtype = np.dtype(dtype)
        x = _from_bytes(payload, shape, dtype.newbyteorder("<"), self.name)
        if dtype.kind == "b" and x.size and x.view(np.uint8).max() > 1:
            # numpy would keep the byte as is: a bool that is neither 0 nor 1 behaves oddly downstream.
            raise MalformedPacket("bool tensor holds bytes other than 0 and 1")
        return x.astype(dtype, copy=False)


class Fp32Codec:
    """Floats as little-endian float32: the uncompressed reference codec."""

    name = "fp32"
    _wire = np.dtype("<f4")

    def supports(self, dtype: np.dtype) -> bool:
        return np.dtype(dtype).kind == "f"

    def encode(self, x: np.ndarray) -> Encoded:
        return Encoded(np.ascontiguousarray(x, dtype=self._wire).tobytes())

    def decode(self, payload: bytes | memoryview, shape: tuple[int, ...], dtype: np.dtype,
               params: Params) -> np.ndarray:
        _expect_no_params(self.name, params)
        return _from_bytes(payload, shape, self._wire, self.name).astype(np.dtype(dtype), copy=False)
