"""The codec interface and the registry that maps wire names to codecs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from protocol.errors import UnknownCodec

# Parameters travel in the packet as a msgpack map; keep them to plain scalars.
Params = dict[str, Any]


@dataclass(frozen=True)
class Encoded:
    """One encoded tensor: the payload bytes and the parameters needed to decode them.

    ``payload`` is a ``memoryview`` only where a sender lends a tensor's own memory
    (``protocol.feedback.Sender`` keyframes of an adopted model); codecs return bytes."""

    payload: bytes | memoryview
    params: Params = field(default_factory=dict)


@dataclass(frozen=True)
class SparseTensor:
    """A tensor that is zero except at ``indices``: a sparse codec's output kept as it came.

    ``indices`` are flat positions (int64, below ``prod(shape)``), ``values`` the entries
    there, already in ``dtype``. A top-k delta of 1 % of a 100M-parameter model is 1M
    entries; decoded dense it would be a 400 MB array of zeros to add to a replica.
    ``protocol.feedback`` adds it in place instead (``add_into``), with the same result,
    bit for bit, as adding ``dense()``.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    indices: np.ndarray
    values: np.ndarray

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dense(self) -> np.ndarray:
        """The whole tensor, zeros included (a later entry wins at a repeated index)."""
        out = np.zeros(self.size, self.dtype)
        out[self.indices] = self.values
        return out.reshape(self.shape)

    def add_into(self, target: np.ndarray) -> None:
        """``target += self.dense()``, in place, without the dense array: the entries are
        added where they are, and every other element gets the ``+ 0.0`` a dense add gives it
        (which turns ``-0.0`` into ``+0.0``; an in-place pass, no allocation), so the result
        is the dense sum's, bit for bit."""
        if not target.flags.c_contiguous:
            np.add(target, self.dense(), out=target)
            return
        flat = target.reshape(-1)
        sums = flat[self.indices] + self.values  # the entries' sums, from the values before the pass
        if sums.dtype != flat.dtype:
            sums = sums.astype(flat.dtype)
        np.add(flat, flat.dtype.type(0), out=flat)
        flat[self.indices] = sums


class SparseCodec(Protocol):
    """A codec whose output is mostly zeros, and that can hand it over as a ``SparseTensor``."""

    name: str

    def decode_sparse(self, payload: bytes | memoryview, shape: tuple[int, ...], dtype: np.dtype,
                      params: Params) -> SparseTensor:
        """``decode``'s result as entries and positions, validated the same way."""
        ...


class Codec(Protocol):
    """Turns a tensor into bytes and back.

    ``decode`` must validate the payload against shape, dtype and params *before*
    allocating anything proportional to a declared size, and raise a
    ``protocol.errors.WireError`` subclass on any inconsistency.
    """

    name: str

    def supports(self, dtype: np.dtype) -> bool:
        """Whether this codec can encode tensors of ``dtype``."""
        ...

    def encode(self, x: np.ndarray) -> Encoded:
        """Encode ``x``; the receiver reconstructs it with ``decode``."""
        ...

    def decode(self, payload: bytes | memoryview, shape: tuple[int, ...], dtype: np.dtype,
               params: Params) -> np.ndarray:
        """Rebuild a tensor of ``shape`` and ``dtype`` from ``payload``."""
        ...


class Policy(Protocol):
    """Chooses the codec for each tensor of a model, by name and content.

    A policy has the shape of ``protocol.wire.CodecChooser``, so it can be handed to
    ``encode_packet`` directly. Only the chosen codec's *name* travels; the receiver
    decodes with its own registered instance of that name, so encode-side options
    (ratio, chunk) must be recoverable from the params, never from the policy.
    """

    def __call__(self, name: str, x: np.ndarray) -> Codec:
        ...


_REGISTRY: dict[str, Codec] = {}


def register(codec: Codec) -> None:
    """Make ``codec`` available under its wire name."""
    _REGISTRY[codec.name] = codec


def get(name: str) -> Codec:
    """The codec registered as ``name``; ``UnknownCodec`` if there is none."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownCodec(f"unknown codec {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def available() -> list[str]:
    """Names of all registered codecs, sorted."""
    return sorted(_REGISTRY)
