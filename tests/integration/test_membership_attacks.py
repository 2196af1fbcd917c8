"""Issue 14's membership attacks, replayed against real peers on loopback.

A hand-made gRPC caller plays the stranger: it sends well-formed membership messages
whose *meaning* is hostile, and model packets claiming ever new sender addresses. Each
test asserts the property the attack used to break:

1. a forged ``Dead(B)`` (top incarnation, or B's current one, by Ping or PushPull)
   evicts nobody: B is alive or suspect at every peer throughout, and alive after;
2. one PushPull listing 66,000 made-up members: Status answers within 1 s
   throughout, the peer takes at most its hearsay quota of them, the honest partners
   at most one quota per neighbour, the made-up members draw at most their capped
   share of the flooded peer's partner picks, and model exchanges between them go on;
3. forged members die and are forgotten everywhere;
4. model packets claiming ever new sender addresses add at most the quota to the view.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc
import pytest
import torch

from hearsay.v1 import gossip_pb2, gossip_pb2_grpc, membership_pb2, membership_pb2_grpc
from peer.models import build_model
from peer.tools.procs import PeerProcess, wait_for
from protocol import codecs
from protocol.membership import MAX_INCARNATION, Dead, MemberEntry, MemberState, Message, Ping, PushPull, SwimConfig
from protocol.membership.wire import to_wire
from protocol.sampling import UNCONFIRMED_SHARE
from protocol.wire import PacketHeader, encode_packet, fingerprint, specs_of

STRANGER = "127.0.0.1:9"  # nobody listens there
QUOTA = SwimConfig().hearsay_quota
BIG = [("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 16 << 20)]


def swarm_args(period: float) -> Callable[[int, list[str]], list[str]]:
    def args(i: int, seeds: list[str]) -> list[str]:
        return ["--seeds", ",".join(seeds), "--seed", str(i), "--probe-period", str(period),
                "--steps-per-second", "2", "--gossip-interval", "1"]
    return args


def view(peer: PeerProcess) -> dict[str, tuple[str, int]]:
    """address -> (state, incarnation) as ``peer`` sees the swarm."""
    with peer.admin() as client:
        return {m.address: (m.state, m.incarnation) for m in client.list_peers().peers}


def start_swarm(launch, count: int, period: float) -> list[PeerProcess]:  # noqa: ANN001 - conftest fixture
    peers = launch(count, swarm_args(period))

    def formed() -> bool:
        return all({a for a, (s, _) in view(p).items() if s == "alive"} >= {q.gossip_address for q in peers} -
                   {p.gossip_address} for p in peers)
    wait_for(formed, timeout=60, what="every peer to see every other alive")
    return peers


def send(address: str, method: str, message: Message) -> bytes:
    """One membership RPC from the stranger; the reply's bytes (push-pull) or b""."""
    with grpc.insecure_channel(address, options=BIG) as channel:
        stub = membership_pb2_grpc.MembershipStub(channel)
        reply = getattr(stub, method)(membership_pb2.Packet(data=to_wire(message)), timeout=30)
    return getattr(reply, "data", b"")


@contextmanager
def watching(check: Callable[[], str | None], every: float = 0.2) -> Iterator[list[str]]:
    """Run ``check`` in the background until the block ends; yields the problems it found."""
    problems: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            found = check()
            if found:
                problems.append(found)
            stop.wait(every)
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield problems
    finally:
        stop.set()
        thread.join(timeout=10)


# --- 1. eviction by a forged Dead --------------------------------------------------------

@pytest.mark.parametrize("vector", ["ping", pytest.param("push-pull", marks=pytest.mark.slow)])
def test_a_forged_dead_evicts_nobody(launch, vector: str) -> None:  # noqa: ANN001
    a, b, c = start_swarm(launch, 3, period=1.0)
    target = b.gossip_address

    def b_not_buried() -> str | None:
        with ThreadPoolExecutor(2) as pool:
            views = list(pool.map(view, (a, c)))
        bad = [f"{v.get(target, ('missing', 0))[0]}" for v in views
               if v.get(target, ("missing", 0))[0] not in ("alive", "suspect")]
        return f"B held {bad} at {time.monotonic():.1f}" if bad else None

    def forge(incarnation: int, to: PeerProcess) -> None:
        if vector == "ping":  # the exact attack: one Ping piggybacking Dead(B)
            send(to.gossip_address, "Ping",
                 Ping(7, STRANGER, to.gossip_address, (Dead(target, incarnation, STRANGER),)))
        else:  # a forged full state that lists B dead
            send(to.gossip_address, "PushPull",
                 PushPull(STRANGER, (MemberEntry(target, b.peer_id, incarnation, MemberState.DEAD),)))

    with watching(b_not_buried) as problems:
        forge(MAX_INCARNATION, a)
        # The stranger adapts: it learns B's incarnation and accuses B at exactly that, five
        # times; B must refute each time (the incarnation it ends at shows it did).
        for _ in range(5):
            inc = view(a)[target][1]
            forge(inc, a)
            forge(inc, c)
            wait_for(lambda inc=inc: all(view(p)[target][0] == "alive" and view(p)[target][1] > inc
                                         for p in (a, c)),
                     timeout=30, what="B to refute the forged Dead at every peer")
    assert problems == [], problems[:5]
    assert all(view(p)[target][0] == "alive" for p in (a, c))
    with b.admin() as client:
        assert client.status().known_peers == 2  # and B itself never lost anyone


# --- 2. a flood of made-up members ----------------------------------------------------

def made_up(count: int) -> tuple[MemberEntry, ...]:
    return tuple(MemberEntry(f"10.{66 + (i >> 16)}.{i >> 8 & 255}.{i & 255}:7946", f"x{i}", 0, MemberState.ALIVE)
                 for i in range(count))


def junk_at(peer: PeerProcess) -> int:
    return sum(1 for address in view(peer) if address.startswith(("10.66.", "10.67.")))


PICKS = 24  # partner picks of the flooded peer observed after the flood


def picks(peer: PeerProcess) -> dict[str, int]:
    """The peer's partner picks so far, all and those of unconfirmed members (its metrics)."""
    with peer.admin() as client:
        text = client.metrics().prometheus_text
    found = {m.group(1): int(float(m.group(2)))
             for m in re.finditer(r'^hearsay_partner_picks_total\{evidence="(\w+)"\} (\S+)$', text, re.M)}
    return {"all": found["confirmed"] + found["unconfirmed"], "unconfirmed": found["unconfirmed"]}


def unconfirmed_pick_bound(n: int, p: float = UNCONFIRMED_SHARE, miss: float = 1e-6) -> int:
    """The least k with P(Binomial(n, p) > k) < ``miss``: more picks of unconfirmed members
    than this would mean the cap does not hold (by chance: less than once in a million)."""
    tail = 1.0
    for k in range(n + 1):
        tail -= math.comb(n, k) * p ** k * (1 - p) ** (n - k)
        if tail < miss:
            return k
    return n


def test_a_flood_of_66000_made_up_members_neither_stalls_the_peer_nor_spreads(launch) -> None:  # noqa: ANN001
    a, b, c = start_swarm(launch, 3, period=1.0)
    slow: list[float] = []
    admin = a.admin(timeout=1.0)

    def status_within_a_second() -> str | None:
        started = time.monotonic()
        try:
            admin.status()
        except Exception as e:  # noqa: BLE001 - any failure to answer in time is the finding
            return f"Status failed after {time.monotonic() - started:.2f} s: {type(e).__name__}"
        slow.append(time.monotonic() - started)
        return None

    def exchanges_a_b() -> int:
        with a.admin() as client:
            return next(p.exchanges for p in client.list_peers().peers if p.address == b.gossip_address)

    before = exchanges_a_b()
    with admin, watching(status_within_a_second, every=0.1) as problems:
        flood_started = time.monotonic()
        reply = send(a.gossip_address, "PushPull", PushPull(STRANGER, made_up(66_000)))
        took = time.monotonic() - flood_started
        assert reply, "the flooded peer still answers the push-pull with its own state"
        wait_for(lambda: junk_at(a) == QUOTA, timeout=30, what="the flood to be merged")
        # Partner choice gives the made-up members (unconfirmed: none ever answered A) at most
        # UNCONFIRMED_SHARE of A's picks together, where uniform choice gave them 64 of 66
        # and A picked B about once a minute. Waiting on A's own picks, not on a clock,
        # makes the bounds below hold whatever the load: over PICKS picks the made-up
        # members draw at most Binomial(PICKS, 1/8), and A picks B about 7/16 of the time.
        start = picks(a)
        wait_for(lambda: picks(a)["all"] >= start["all"] + PICKS, timeout=120, what=f"A to pick {PICKS} partners")
        end = picks(a)
        made = end["all"] - start["all"]
        to_unconfirmed = end["unconfirmed"] - start["unconfirmed"]
        assert to_unconfirmed <= unconfirmed_pick_bound(made), (to_unconfirmed, made)
        # Model exchanges between A and B go on (the issue saw them fall to 0): A alone
        # picked B fewer than 3 times in PICKS with probability < 2e-4 (and B picks A too).
        assert exchanges_a_b() >= before + 3
        # A gossips what it took; an honest peer takes at most one quota per neighbour.
        wait_for(lambda: time.monotonic() - flood_started >= 15, timeout=60, what="a 15 s observation window")
    assert problems == [], problems[:5]
    assert len(slow) >= 50 and max(slow) < 1.0
    # At most the quota: A took exactly its quota above, and since then may have reaped some of
    # it (made-up members never answer a probe, die and are forgotten: attack 3's fix), so
    # asserting it still holds all of them failed whenever the window ran long (CI: 62 of 64).
    assert junk_at(a) <= QUOTA
    for honest in (b, c):
        assert junk_at(honest) <= 2 * QUOTA, "an honest partner copied the flood"
    with a.admin() as client:
        assert len(client.list_peers().peers) <= 2 + QUOTA  # ListPeers stays small and usable
    print(f"\nflood of 66,000 members: push-pull answered in {took:.2f} s; Status answered {len(slow)} "
          f"times, slowest {max(slow) * 1000:.0f} ms; junk held: A {junk_at(a)}, B {junk_at(b)}, C {junk_at(c)}; "
          f"A's picks after the flood: {to_unconfirmed} of {made} to unconfirmed members "
          f"(bound {unconfirmed_pick_bound(made)}); A-B exchanges +{exchanges_a_b() - before}")


# --- 3. forged members are reaped ---------------------------------------------------

@pytest.mark.slow  # the default run covers it in tests/protocol/test_membership_hardening.py
def test_forged_members_die_and_are_forgotten_everywhere(launch) -> None:  # noqa: ANN001
    peers = start_swarm(launch, 3, period=0.5)
    send(peers[0].gossip_address, "PushPull", PushPull(STRANGER, made_up(10)))
    assert junk_at(peers[0]) == 10
    wait_for(lambda: all(junk_at(p) == 0 for p in peers), timeout=150,
             what="the forged members to be declared dead and forgotten by every peer")
    for p in peers:
        assert all(s == "alive" for s, _ in view(p).values()), view(p)


# --- 4. the newcomer path ---------------------------------------------------------

def newcomer_packet(sender: str) -> bytes:
    """A first-contact packet (no samples: "send me your model") from ``sender``."""
    torch.manual_seed(5)
    state = {k: v.numpy().copy() for k, v in build_model("mlp", (1, 8, 8), 10).state_dict().items()}
    header = PacketHeader(sender_id=f"n-{sender}", sender_addr=sender, fingerprint=fingerprint(specs_of(state)),
                          model_version=0, age=0, samples=0, link_epoch=1, link_seq=1, keyframe=True)
    return encode_packet(header, state, lambda _n, x: codecs.get("fp32" if x.dtype.kind == "f" else "raw"))


@pytest.mark.slow  # the default run covers it in tests/peer/test_membership_side_tables.py
def test_packets_from_ever_new_sender_addresses_add_at_most_the_quota(launch) -> None:  # noqa: ANN001
    (peer,) = launch(1, swarm_args(1.0))
    with grpc.insecure_channel(peer.gossip_address, options=BIG) as channel:
        stub = gossip_pb2_grpc.GossipStub(channel)
        # Claimed addresses on the host the calls come from: without TLS or a keyring the peer
        # ties a claim to the connection's host (peer/transport/identity.py), so a claim of
        # another host is refused before membership sees it; ever new ports pass that check.
        forged = {f"127.0.0.1:{50000 + i}" for i in range(3 * QUOTA)}
        for address in sorted(forged):
            frames = iter([gossip_pb2.Frame(data=newcomer_packet(address), end=True)])
            assert list(stub.Exchange(frames, timeout=10)), "a newcomer is still answered with a model"
    claimed = [address for address in view(peer) if address in forged]
    assert len(claimed) == QUOTA
    assert peer.status(timeout=1.0).known_peers <= QUOTA
