"""Exchange deadlines that follow the link (issue 12, item 4), between two real peers.

A 20 MB model sent over a link shaped to 10 Mbit/s takes ~17 s: the old fixed 10 s
timeout cut it, the adaptive deadline lets it complete. A partner SIGSTOPped mid-exchange
moves no frame: it is given up within 3 s at loopback RTT, not after a fixed deadline.
The answering peer is a separate process (tests/exchange_peer.py) so that it can be
stopped, and so that the link between the two is a real socket.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence

import pytest

from peer.transport.grpc_transport import GossipClient
from protocol.deadlines import DeadlinePolicy
from tests.exchange_peer import build_engine, spawn, stop

HIDDEN, LAYERS = 1000, 5  # 5.08M parameters: 20.3 MB in fp32
OLD_FIXED_TIMEOUT = 10.0  # gossip_timeout's default before adaptive deadlines


def start_peer(listen: str, wrap: Sequence[str] = ()) -> tuple[subprocess.Popen[str], str]:
    return spawn(listen, HIDDEN, LAYERS, wrap)


@pytest.fixture
def loopback_peer() -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc, address = start_peer("127.0.0.1:0")
    try:
        yield proc, address
    finally:
        stop(proc)


def test_a_sigstopped_partner_is_given_up_within_3_s_at_loopback_rtt(loopback_peer) -> None:
    proc, address = loopback_peer

    async def scenario() -> tuple[float, float]:
        engine = build_engine(HIDDEN, LAYERS, 1, "127.0.0.1:1", deadlines=DeadlinePolicy())
        engine.membership.add_seed(address)
        member = engine.membership.get(address)
        client = GossipClient(max_packet_bytes=engine.limits.max_packet_bytes)
        try:
            assert await engine.exchange_with(member, client.exchange)  # keyframes both ways: the link is measured
            budget = engine.budget(address, engine.dense_bytes)
            proc.send_signal(signal.SIGSTOP)
            started = time.perf_counter()
            merged = await engine.exchange_with(member, client.exchange)
            elapsed = time.perf_counter() - started
        finally:
            proc.send_signal(signal.SIGCONT)
            await client.close()
        assert not merged
        assert engine.link(address).failures == 1
        return elapsed, budget.idle

    elapsed, idle = asyncio.run(scenario())
    print(f"stopped partner given up after {elapsed:.2f} s (idle limit {idle:.2f} s)")
    assert idle < 3.0
    assert elapsed < 3.0, f"a stopped partner took {elapsed:.2f} s to give up"


def test_a_large_model_on_a_slow_link_completes_where_the_fixed_timeout_cut_it() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root: it shapes a veth pair between network namespaces with tc "
                    "(run the suite as root, or in CI's root container)")
    from tests.shaped_link import ShapedLink

    with ShapedLink() as link:
        link.shape(10, inbound=False)  # what we send goes at 10 Mbit/s; the reply comes back unshaped
        proc, address = start_peer(f"{link.far_address}:0", link.command([]))
        try:
            async def scenario() -> tuple[bool, float, object]:
                engine = build_engine(HIDDEN, LAYERS, 1, f"{link.host_address}:1", deadlines=DeadlinePolicy())
                engine.membership.add_seed(address)
                client = GossipClient(max_packet_bytes=engine.limits.max_packet_bytes)
                try:
                    started = time.perf_counter()
                    merged = await engine.exchange_with(engine.membership.get(address), client.exchange)
                    elapsed = time.perf_counter() - started
                finally:
                    await client.close()
                return merged, elapsed, engine.budget(address, engine.dense_bytes)

            merged, elapsed, budget = asyncio.run(scenario())
            print(f"20 MB at 10 Mbit/s: {elapsed:.1f} s; next deadline {budget.total:.1f} s, idle {budget.idle:.2f} s")
        finally:
            stop(proc)
    assert merged, "the exchange over the 10 Mbit/s link did not complete"
    assert elapsed > OLD_FIXED_TIMEOUT  # the old fixed timeout would have cut it
    # Measured now: the next exchange's deadline covers the time the bytes take, and a
    # silent partner would still be given up within a few seconds.
    assert budget.total > elapsed and budget.idle < 5.0  # type: ignore[attr-defined]
