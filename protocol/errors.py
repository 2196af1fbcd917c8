"""Typed refusals: every reason a peer will not take a packet.

``Refusal`` is the base of them all: the runtime maps refusals to gRPC status codes and
counts them by ``reason``. ``WireError`` is the family of bytes that are wrong in
themselves (not msgpack, wrong schema, too large, another model): every failure of
validation is one of these, never a bare exception from a parser. Refusals for other
reasons (a banned sender, an overloaded peer, a failed authentication) derive from
``Refusal`` directly, next to their cause.
"""

from __future__ import annotations


class Refusal(Exception):
    """A packet this peer will not take. ``reason`` is a short stable label for metrics."""

    reason = "refused"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class WireError(Refusal):
    """A packet whose bytes are wrong: it fails decoding or validation."""

    reason = "invalid"


class MalformedPacket(WireError):
    """Bytes that are not a well-formed packet (not msgpack, wrong schema, bad types)."""

    reason = "malformed"


class TruncatedPacket(WireError):
    """The packet ended before its declared contents did."""

    reason = "truncated"


class PacketTooLarge(WireError):
    """A packet, tensor or field larger than the configured limits."""

    reason = "too_large"


class UnsupportedVersion(WireError):
    """A packet written in a wire format version this peer does not speak."""

    reason = "version"


class FingerprintMismatch(WireError):
    """A model of another architecture (tensor names, shapes or dtypes differ)."""

    reason = "fingerprint"


class SizeMismatch(WireError):
    """A payload whose length disagrees with the shape, dtype and codec it declares."""

    reason = "size"


class NonFiniteValues(WireError):
    """A tensor containing NaN or infinity."""

    reason = "non_finite"


class UnknownCodec(WireError):
    """A codec name (or parameters) this peer does not know."""

    reason = "codec"


class Banned(Refusal):
    """A packet from a peer whose reputation fell below the ban threshold (``protocol.reputation``):
    dropped without merging or answering until the ban lifts."""

    reason = "banned"
