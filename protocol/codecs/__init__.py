"""Tensor codecs: how one tensor becomes bytes on the wire and back.

A codec is small and stateless; error feedback and per-link replicas live in
``protocol.feedback``. Codecs are looked up by name, because the name travels in
every packet and the receiver must decode with exactly the sender's codec.
"""

from protocol.codecs.base import Codec, Encoded, available, get, register
from protocol.codecs.identity import Fp32Codec, RawCodec

register(RawCodec())
register(Fp32Codec())

__all__ = ["Codec", "Encoded", "Fp32Codec", "RawCodec", "available", "get", "register"]
