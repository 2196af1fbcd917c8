"""SIGTERM and SIGINT stop a peer cleanly: exit code 0, trainer joined, ports released."""

from __future__ import annotations

import signal
import socket

import pytest

from peer.tools.procs import wait_for


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_peer_cleanly(launch, sig: signal.Signals) -> None:
    (peer,) = launch(1, lambda i, seeds: [])
    wait_for(lambda: peer.status().steps > 0, timeout=30, what="training to start")
    peer.signal(sig)
    assert peer.proc is not None and peer.proc.wait(timeout=20) == 0
    assert "stopped after" in peer.log_path.read_text()
    for port in (peer.gossip_port, peer.admin_port):  # the ports are free again
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
