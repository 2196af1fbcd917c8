"""The codec interface and the registry that maps wire names to codecs."""

from __future__ import annotations

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
