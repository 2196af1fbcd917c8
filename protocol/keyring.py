"""A cluster keyring: HMAC-SHA256 on every message, keys rotated without downtime (as Serf does).

Without TLS, anyone who can reach a peer's port can speak for anyone: the sender's
address in a packet header is only a claim. A shared cluster secret makes it proof of
membership: every gossip and membership message, request and reply, carries a tag
``<key id>:<hex HMAC-SHA256>`` over its bytes, and a message whose tag does not verify
is refused before it is decoded. Inside the cluster the header's sender is then as
trustworthy as the members themselves.

Rotation is Serf's: the keyring holds several keys; the first (the *primary*) signs,
every installed key verifies. An operator installs a new key on every peer (as a
secondary), then makes it primary everywhere, then removes the old one; at no step
does a peer refuse another's messages. The key id (the first 8 hex digits of the key's
SHA-256) says which key signed, so verification costs one HMAC, not one per key.

The *purpose* (exchange request, exchange reply, membership request, ...) is part of
what is signed, so a captured reply cannot be replayed as a request, nor a membership
message as a gossip packet. Replays of the same kind are the replay guard's job
(protocol/replay.py) and SWIM's (incarnations).

Pure: no I/O. ``parse_keyring`` reads the text of a keyring file; the daemon
(peer/transport/keyring_file.py) reads the file and notices rotations.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from protocol.errors import Refusal
from protocol.wire import Buffer

# AES-128/192/256 key sizes, as Serf accepts; HMAC-SHA256 takes any, but a short secret is guessable.
KEY_SIZES = (16, 24, 32)
MAX_KEYS = 16
TAG_METADATA_KEY = "hearsay-hmac"

# What a tag signs besides the bytes: one purpose per kind of message and direction.
EXCHANGE_REQUEST = b"hearsay/exchange/request"
EXCHANGE_REPLY = b"hearsay/exchange/reply"
MEMBERSHIP_REQUEST = b"hearsay/membership/request"
MEMBERSHIP_REPLY = b"hearsay/membership/reply"


class Unauthenticated(Refusal):
    """A message without a tag, signed by a key we do not hold, or whose tag does not verify."""

    reason = "unauthenticated"


class KeyringError(ValueError):
    """A keyring file that cannot be used (the message says which line and why)."""


def key_id(key: bytes) -> str:
    """The id a tag names its key by: the first 8 hex digits of the key's SHA-256."""
    return hashlib.sha256(key).hexdigest()[:8]


@dataclass(frozen=True)
class Keyring:
    """Installed keys; ``keys[0]`` is the primary (it signs), all of them verify."""

    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyringError("a keyring needs at least one key")
        if len(self.keys) > MAX_KEYS:
            raise KeyringError(f"a keyring holds at most {MAX_KEYS} keys, got {len(self.keys)}")
        for key in self.keys:
            if len(key) not in KEY_SIZES:
                raise KeyringError(f"keys must be 16, 24 or 32 bytes, got one of {len(key)}")
        ids = [key_id(k) for k in self.keys]
        if len(set(ids)) != len(ids):
            raise KeyringError("the same key is installed twice")

    @property
    def primary_id(self) -> str:
        return key_id(self.keys[0])

    def _by_id(self) -> dict[str, bytes]:
        return {key_id(k): k for k in self.keys}

    def sign(self, purpose: bytes, data: Buffer | Sequence[Buffer]) -> str:
        """The tag of ``data`` (one buffer, or several read as their concatenation)."""
        return f"{self.primary_id}:{_mac(self.keys[0], purpose, data)}"

    def verify(self, purpose: bytes, data: Buffer | Sequence[Buffer], tag: str | bytes | None) -> None:
        """Raise ``Unauthenticated`` unless ``tag`` is a valid tag of ``data`` by an installed key."""
        if tag is None:
            raise Unauthenticated("no HMAC tag: the sender holds no cluster key")
        text = tag.decode("ascii", "replace") if isinstance(tag, bytes) else tag
        kid, _, mac = text.partition(":")
        key = self._by_id().get(kid)
        if key is None:
            raise Unauthenticated(f"signed with key {kid[:8]!r}, which this peer does not hold")
        if not hmac.compare_digest(mac, _mac(key, purpose, data)):
            raise Unauthenticated(f"HMAC by key {kid} does not verify")


def _mac(key: bytes, purpose: bytes, data: Buffer | Sequence[Buffer]) -> str:
    h = hmac.new(key, purpose + b"\0", hashlib.sha256)
    for part in ([data] if isinstance(data, (bytes, bytearray, memoryview)) else data):
        h.update(part)
    return h.hexdigest()


def parse_key(text: str) -> bytes:
    """One key written as base64 (Serf's ``keygen`` format) or hex."""
    text = text.strip()
    for decode in (bytes.fromhex, lambda t: base64.b64decode(t, validate=True)):
        try:
            key = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(key) in KEY_SIZES:
            return key
    raise KeyringError("not a 16-, 24- or 32-byte key in base64 or hex")


def parse_keyring(text: str) -> Keyring:
    """A keyring file: one key per line (base64 or hex), the primary first; ``#`` comments."""
    keys: list[bytes] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            keys.append(parse_key(line))
        except KeyringError as e:
            raise KeyringError(f"line {number}: {e}") from None
    if not keys:
        raise KeyringError("no key in the keyring file")
    return Keyring(tuple(keys))
