"""Typed errors for everything that can be wrong with bytes a peer received.

Every failure of validation is one of these, never a bare exception from a parser:
the runtime maps them to gRPC status codes and counts them by ``reason``.
"""

from __future__ import annotations


class WireError(Exception):
    """A packet that must be refused. ``reason`` is a short stable label for metrics."""

    reason = "invalid"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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


class Banned(WireError):
    """A packet from a peer whose reputation fell below the ban threshold (``protocol.reputation``):
    dropped without merging or answering until the ban lifts."""

    reason = "banned"
