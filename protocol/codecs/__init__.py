"""Tensor codecs: how one tensor becomes bytes on the wire and back.

A codec is small and stateless; error feedback and per-link replicas live in
``protocol.feedback``. Codecs are looked up by name, because the name travels in
every packet and the receiver must decode with exactly the sender's codec. Encode
options (a top-k ratio, a chunk length) change only the encoder: every parameter a
decoder needs travels in the params, so the registered default instance of a name
decodes what any configured instance of that name encodes.

- ``raw``, ``fp32``: exact.
- ``fp16``: half precision, 2x.
- ``int8``, ``int4``: chunked scales, unbiased stochastic rounding, ~4x and ~7.5x.
- ``topk``: largest magnitudes (sampled threshold) + zstd-coded index gaps.
- ``topk_int8``: the same with int8 values.
- ``randk``: seed-derived positions, only the seed and values travel.

``make(name, **options)`` builds a configured encoder; ``policy(name, **options)``
wraps it in the size-adaptive per-tensor policy the daemon uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocol.codecs.base import Codec, Encoded, Policy, available, get, register
from protocol.codecs.fp16 import Fp16Codec
from protocol.codecs.identity import Fp32Codec, RawCodec
from protocol.codecs.policy import MIN_ELEMENTS, SizeAdaptive
from protocol.codecs.randk import RandKCodec
from protocol.codecs.stochastic import QuantCodec, int4, int8
from protocol.codecs.topk import TopKCodec, topk, topk_int8

# name -> factory taking encode options (ratio=, chunk=, seed=) as keywords.
_FACTORIES: dict[str, Callable[..., Codec]] = {
    "raw": RawCodec,
    "fp32": Fp32Codec,
    "fp16": Fp16Codec,
    "int8": int8,
    "int4": int4,
    "topk": topk,
    "topk_int8": topk_int8,
    "randk": RandKCodec,
}

for _factory in _FACTORIES.values():
    register(_factory())


def make(name: str, **options: Any) -> Codec:
    """A fresh encoder for codec ``name`` configured with ``options``, e.g.
    ``make("topk_int8", ratio=0.001)``; ``UnknownCodec`` for an unknown name,
    ``TypeError``/``ValueError`` for options the codec does not take."""
    get(name)  # raises UnknownCodec with the list of known names
    return _FACTORIES[name](**options)


def policy(name: str, *, min_elements: int = MIN_ELEMENTS, **options: Any) -> SizeAdaptive:
    """The size-adaptive per-tensor policy around ``make(name, **options)``."""
    return SizeAdaptive(make(name, **options), min_elements=min_elements)


__all__ = [
    "Codec", "Encoded", "Fp16Codec", "Fp32Codec", "MIN_ELEMENTS", "Policy", "QuantCodec", "RandKCodec",
    "RawCodec", "SizeAdaptive", "TopKCodec", "available", "get", "int4", "int8", "make", "policy",
    "register", "topk", "topk_int8",
]
