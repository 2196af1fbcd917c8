"""Shared fixtures: real peer processes on loopback, stopped at the end of each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from peer.tools.procs import PeerProcess, launch_peers

# Every peer in the tests trains with one thread and a bounded step rate: the suite runs
# on 2 cores, and several peers share them.
COMMON_PEER_ARGS = ["--threads", "1", "--log-level", "info"]

LaunchPeers = Callable[..., list[PeerProcess]]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[LaunchPeers]:
    """``launch(n, args_for)`` starts ``n`` real `hearsay run` processes and waits until they answer."""
    started: list[PeerProcess] = []

    def _launch(count: int, args_for: Callable[[int, list[str]], Sequence[str]],
                ready_timeout: float = 90.0) -> list[PeerProcess]:
        peers = launch_peers(count, tmp_path / f"logs-{len(started)}",
                             lambda i, seeds: [*COMMON_PEER_ARGS, *args_for(i, seeds)])
        started.extend(peers)
        for p in peers:
            p.wait_ready(ready_timeout)
        return peers

    yield _launch
    for p in started:
        p.stop(timeout=15)
