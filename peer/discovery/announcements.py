"""What hearsay peers announce on an MQTT broker, and how they read it: topics, the
announcement payload (checked before use), broker addresses and reconnection backoff.

The discovery task that publishes and subscribes is peer/discovery/mqtt.py.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

FORMAT_VERSION = 1
DEFAULT_BROKER_PORT = 1883
DEFAULT_TLS_BROKER_PORT = 8883  # IANA's secure-mqtt
TOPIC_ROOT = "hearsay"
# An announcement is a few dozen bytes; anything much larger is not one of ours.
MAX_PAYLOAD_BYTES = 1024
MAX_ID_CHARS = 256
# Characters that would change a topic's meaning (levels, wildcards) or that MQTT forbids.
_TOPIC_UNSAFE = frozenset("/+#\x00")


class AnnouncementError(ValueError):
    """A message on the peers topic that is not a valid announcement; the text says why."""


@dataclass(frozen=True)
class Announcement:
    """What one peer says about itself on the broker.

    ``instance`` is a random token chosen at every start of a peer process: it tells a
    restarted peer (same id, possibly same address) from the previous run, and lets a
    peer recognise its own announcement when it comes back from the broker.
    """

    peer_id: str
    address: str
    instance: str
    version: int = FORMAT_VERSION

    def encode(self) -> bytes:
        body = {"v": self.version, "id": self.peer_id, "addr": self.address, "inst": self.instance}
        return json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode("ascii")


# --- pure helpers: validation and parsing ------------------------------------------------------

def check_topic_level(value: str, what: str) -> str:
    """Return ``value`` if it can be one level of a topic name, else raise ``ValueError``.

    Peer ids and the cluster name become topic levels; a '/' or a wildcard in them
    would make us publish to, or subscribe to, topics that are not ours.
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    if len(value) > MAX_ID_CHARS:
        raise ValueError(f"{what} is longer than {MAX_ID_CHARS} characters")
    bad = sorted({c for c in value if c in _TOPIC_UNSAFE or not c.isprintable()})
    if bad:
        raise ValueError(f"{what} {value!r} contains characters not allowed in a topic level: {bad!r}")
    return value


def split_host_port(value: str, default_port: int | None = None) -> tuple[str, int]:
    """Parse ``host:port`` (``[v6]:port`` for IPv6); ``ValueError`` with the reason.

    With ``default_port`` the port may be omitted (``host`` alone, or ``[v6]``).
    """
    if not isinstance(value, str) or not value or len(value) > 300:
        raise ValueError(f"{value!r} is not host:port")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{value!r} contains whitespace or control characters")
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not host or ":" not in host:
            raise ValueError(f"{value!r}: a bracketed host must be an IPv6 address")
        if not rest:
            port_text = None
        elif rest.startswith(":"):
            port_text = rest[1:]
        else:
            raise ValueError(f"{value!r} is not [host]:port")
    else:
        host, sep, port_text_or_host = value.rpartition(":")
        if not sep:
            host, port_text = value, None
        else:
            port_text = port_text_or_host
        if ":" in host:
            raise ValueError(f"{value!r}: write an IPv6 host in brackets, [addr]:port")
        if not host:
            raise ValueError(f"{value!r} has no host")
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{value!r} has no port")
        return host, default_port
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError(f"{value!r}: port must be a number in 1..65535")
    return host, int(port_text)


def peers_topic(cluster: str, peer_id: str) -> str:
    """The topic a peer's announcement lives on."""
    return f"{TOPIC_ROOT}/{cluster}/peers/{peer_id}"


def peers_filter(cluster: str) -> str:
    """The subscription that sees every announcement of a cluster (one level, not deeper)."""
    return f"{TOPIC_ROOT}/{cluster}/peers/+"


def decode_announcement(topic_peer_id: str, payload: bytes) -> Announcement:
    """Validate one non-empty payload received on ``.../peers/<topic_peer_id>``.

    Strict on purpose: the topic is writable by anyone who can reach the broker, and
    whatever passes here becomes a gossip partner. Unknown extra keys are tolerated so
    a later minor revision can add fields without breaking older peers; a different
    ``v`` is rejected, because its fields may mean something else.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise AnnouncementError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise AnnouncementError(f"not JSON: {e}") from None
    if not isinstance(body, dict):
        raise AnnouncementError(f"expected a JSON object, got {type(body).__name__}")
    version = body.get("v")
    if type(version) is not int:  # bool is an int subclass; reject it too
        raise AnnouncementError("missing or non-integer format version 'v'")
    if version != FORMAT_VERSION:
        raise AnnouncementError(f"unsupported format version {version} (this peer speaks {FORMAT_VERSION})")
    fields: dict[str, str] = {}
    for key in ("id", "addr", "inst"):
        value = body.get(key)
        if not isinstance(value, str) or not value:
            raise AnnouncementError(f"field {key!r} missing or not a non-empty string")
        fields[key] = value
    if fields["id"] != topic_peer_id:
        raise AnnouncementError(f"id {fields['id']!r} does not match the topic's {topic_peer_id!r}")
    try:
        split_host_port(fields["addr"])
    except ValueError as e:
        raise AnnouncementError(f"bad address: {e}") from None
    if len(fields["inst"]) > 64 or not fields["inst"].isascii() or not fields["inst"].isalnum():
        raise AnnouncementError("field 'inst' must be at most 64 ASCII letters or digits")
    return Announcement(peer_id=fields["id"], address=fields["addr"], instance=fields["inst"], version=version)


def backoff_delays(initial: float, cap: float, rng: random.Random) -> Callable[[], float]:
    """A generator of retry delays: doubling from ``initial`` up to ``cap``, with ±25 % jitter.

    The jitter keeps a whole swarm from reconnecting in lock-step when a shared broker
    comes back.
    """
    attempt = 0

    def next_delay() -> float:
        nonlocal attempt
        base = min(cap, initial * (2 ** min(attempt, 30)))
        attempt += 1
        return base * rng.uniform(0.75, 1.25)

    return next_delay
