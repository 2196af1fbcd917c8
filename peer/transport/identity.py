"""Who is speaking: identity from the connection, never from a claim inside the packet.

A packet header names its sender (``sender_addr``), but anyone can write any address
there. Reputation, bans, link state and replay windows must key on something the
sender cannot choose, or a stranger frames an honest peer (three outliers "from" B get
B banned) or rotates addresses to dodge its own ban. What the connection proves:

* **mutual TLS**: the caller's certificate (signed by the cluster CA). The identity is
  the certificate (``cert:<name>/<fingerprint>``); the first certificate heard claiming
  an address owns it, and another certificate claiming that address is refused
  (``AddressOwners``).
* **a cluster keyring** (protocol/keyring.py): the packet's HMAC verified, so its
  header was written by a cluster member; the claimed address is the identity.
* **neither**: the claimed address must be on the host the connection came from
  (``tie_to_host``). Strangers on the same host can still speak for each other, which
  the node warns about once at start.

In-process callers (tests, the simulator) have no connection: their claim stands.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass

from protocol.errors import Refusal


class Impersonation(Refusal):
    """A packet claiming a sender address its connection cannot speak for."""

    reason = "impersonation"


@dataclass(frozen=True)
class Caller:
    """What the transport knows of the other end of one call."""

    connection: str = ""       # gRPC's peer string ("ipv4:1.2.3.4:5") or "in-process"
    host: str = ""             # the source IP, "" when unknown (in-process)
    certificate: str = ""      # mTLS: "cert:<name>/<fingerprint>", from the TLS front
    authenticated: bool = False  # the cluster keyring verified the packet's tag


def host_of_peer(peer: str) -> str:
    """The IP in a gRPC peer string ("ipv4:1.2.3.4:5", "ipv6:[::1]:5"); "" for others (unix)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return _plain_ip(rest.rpartition(":")[0].strip("[]"))
    return ""


def _plain_ip(text: str) -> str:
    """``text`` as a canonical IP (an IPv4-mapped IPv6 address as IPv4); ``text`` if not an IP."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def claimed_host(address: str) -> str:
    """The host part of a ``host:port`` or ``[v6]:port`` address."""
    if address.startswith("["):
        return address[1:].partition("]")[0]
    return address.rpartition(":")[0] if ":" in address else address


class HostResolver:
    """Host names to their IPs, cached (``ttl`` seconds, at most ``size`` names)."""

    def __init__(self, ttl: float = 60.0, size: int = 1024) -> None:
        self.ttl = ttl
        self.size = size
        self._cache: OrderedDict[str, tuple[float, frozenset[str]]] = OrderedDict()

    def ips(self, host: str) -> frozenset[str]:
        """The IPs ``host`` names (blocking on a miss: call it off the event loop)."""
        ip = _plain_ip(host)
        if ip != host or _is_ip(host):
            return frozenset({ip})
        now = time.monotonic()
        hit = self._cache.get(host)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        try:
            found = frozenset(_plain_ip(str(info[4][0])) for info in socket.getaddrinfo(host, None))
        except OSError:
            found = frozenset()
        self._cache[host] = (now, found)
        self._cache.move_to_end(host)
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return found


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def tie_to_host(claimed: str, caller: Caller, resolver: HostResolver) -> None:
    """Raise ``Impersonation`` unless ``claimed``'s host is the host ``caller`` connected from."""
    if not caller.host:
        return
    host = claimed_host(claimed)
    if _plain_ip(caller.host) not in resolver.ips(host):
        raise Impersonation(f"claims to be {claimed} but connected from {caller.host}")


class AddressOwners:
    """Which certificate speaks for which address (first come; bounded, least recent forgotten)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._owner: OrderedDict[str, str] = OrderedDict()

    def claim(self, address: str, identity: str) -> None:
        """``identity`` speaks for ``address``; ``Impersonation`` if another identity already does."""
        owner = self._owner.get(address)
        if owner is not None and owner != identity:
            raise Impersonation(f"{identity} claims {address}, which {owner} speaks for")
        self._owner[address] = identity
        self._owner.move_to_end(address)
        while len(self._owner) > self.size:
            self._owner.popitem(last=False)

    def get(self, address: str) -> str | None:
        return self._owner.get(address)


def needs_lookup(claimed: str, caller: Caller) -> bool:
    """Whether ``resolve_identity`` may block on a name lookup (run it in a thread then)."""
    return bool(caller.host) and not caller.certificate and not caller.authenticated \
        and not _is_ip(claimed_host(claimed))


def resolve_identity(claimed: str, caller: Caller, owners: AddressOwners, resolver: HostResolver) -> str:
    """The key reputation, bans, links and replay windows use for a packet claiming ``claimed``.

    Raises ``Impersonation`` when the connection cannot speak for ``claimed``. Blocking on
    a host-name lookup: call it off the event loop.
    """
    if caller.certificate:
        owners.claim(claimed, caller.certificate)
        return caller.certificate
    if not caller.authenticated:
        tie_to_host(claimed, caller, resolver)
    return claimed
