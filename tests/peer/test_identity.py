"""Identity from the connection (peer/transport/identity.py) and the reply bounds (peer/transport/admission.py)."""

from __future__ import annotations

import asyncio

import pytest

from peer.transport.admission import AdmissionLimits, Gate, Overloaded, ReplyUnread
from peer.transport.identity import (AddressOwners, Caller, HostResolver, Impersonation, host_of_peer,
                                     resolve_identity)


def test_the_source_host_is_read_from_grpc_peer_strings() -> None:
    assert host_of_peer("ipv4:10.0.0.7:51234") == "10.0.0.7"
    assert host_of_peer("ipv6:[::1]:51234") == "::1"
    assert host_of_peer("ipv6:[::ffff:127.0.0.1]:9") == "127.0.0.1"
    assert host_of_peer("unix:/tmp/x/c1.sock") == ""


def test_without_tls_or_keyring_a_claim_must_be_on_the_connections_host() -> None:
    owners, resolver = AddressOwners(), HostResolver()
    caller = Caller("ipv4:10.0.0.7:5", host="10.0.0.7")
    assert resolve_identity("10.0.0.7:7070", caller, owners, resolver) == "10.0.0.7:7070"
    assert resolve_identity("localhost:7070", Caller("ipv4:127.0.0.1:5", host="127.0.0.1"), owners,
                            resolver) == "localhost:7070"
    with pytest.raises(Impersonation):
        resolve_identity("10.0.0.8:7070", caller, owners, resolver)
    # Keyed packets (a cluster member wrote the header) and in-process callers: the claim stands.
    assert resolve_identity("10.0.0.8:7070", Caller(host="10.0.0.7", authenticated=True), owners, resolver)
    assert resolve_identity("10.0.0.8:7070", Caller("in-process"), owners, resolver) == "10.0.0.8:7070"


def test_under_tls_the_first_certificate_owns_an_address_and_is_the_identity() -> None:
    owners, resolver = AddressOwners(size=2), HostResolver()
    b, mallory = Caller(certificate="cert:peer-1/aa"), Caller(certificate="cert:mallory/bb")
    assert resolve_identity("10.0.0.2:7070", b, owners, resolver) == "cert:peer-1/aa"
    with pytest.raises(Impersonation):
        resolve_identity("10.0.0.2:7070", mallory, owners, resolver)
    assert resolve_identity("10.0.0.9:7070", mallory, owners, resolver) == "cert:mallory/bb"
    assert owners.get("10.0.0.2:7070") == "cert:peer-1/aa"


def test_reply_slots_are_bounded_and_held_until_released() -> None:
    async def main() -> None:
        gate = Gate(AdmissionLimits(max_replies=2))
        first, _second = gate.reply_slot(), gate.reply_slot()
        with pytest.raises(Overloaded):
            gate.reply_slot()
        first()
        first()  # idempotent
        gate.reply_slot()
        assert gate.replying == 2

    asyncio.run(main())


def test_a_reply_the_caller_does_not_read_ends_at_its_deadline() -> None:
    async def main() -> None:
        gate = Gate(AdmissionLimits(idle_timeout=0.2, min_rate=1 << 20))
        never = asyncio.Event()

        async def stuck_write(_frame: bytes) -> None:
            await never.wait()  # flow control never opens

        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ReplyUnread):
            await gate.write_reply([b"x" * 1000], stuck_write, 1 << 20)
        assert 1.1 <= loop.time() - started < 5  # idle_timeout + 1 MiB at 1 MiB/s
        written: list[bytes] = []

        async def write(frame: bytes) -> None:
            written.append(frame)

        await gate.write_reply([b"a", b"b"], write, 2)
        assert written == [b"a", b"b"]

    asyncio.run(main())
