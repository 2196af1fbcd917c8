"""The membership benchmark's slow peer (tests/stalling_peer.py): SIGUSR1 toggles a stall of
its event loop, and a bad setting is refused at start. The shipped CLI has no such hook."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from peer.tools.procs import PeerProcess, free_ports, wait_for
from tests.stalling_peer import STALL_ENV, STALLING_PEER

ARGS = ["--threads", "1", "--steps-per-second", "2"]


def test_sigusr1_stalls_and_unstalls_the_loop(tmp_path: Path) -> None:
    gossip, admin = free_ports(2)
    peer = PeerProcess("slow", gossip, admin, ARGS, tmp_path / "slow.log", env={STALL_ENV: "0.5@0.2"},
                       module=STALLING_PEER).start()
    try:
        peer.wait_ready(120)
        log = peer.log_path
        peer.proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: "debug loop stall on: 0.500 s every 0.200 s" in log.read_text(), 30, what="the stall")
        # Blocked 0.5 s in every 0.7 s: calls made back to back for 1.5 s always have one
        # in flight when a block starts, and that one waits for the block to end.
        with peer.admin(timeout=10.0) as client:
            slowest, until = 0.0, time.monotonic() + 1.5
            while time.monotonic() < until:
                started = time.monotonic()
                client.status()
                slowest = max(slowest, time.monotonic() - started)
        assert slowest >= 0.25, f"no Status call waited for a stall (slowest {slowest:.3f} s)"
        peer.proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: "debug loop stall off" in log.read_text(), 30, what="the stall to end")
    finally:
        peer.stop(timeout=60)


def test_the_wrapper_refuses_a_bad_setting_and_the_shipped_code_has_no_stall() -> None:
    bad = subprocess.run([sys.executable, "-m", STALLING_PEER, "run", "--help"], env={**os.environ, STALL_ENV: "ten"},
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and STALL_ENV in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    shipped = Path(__file__).resolve().parents[2] / "peer"
    assert not [p for p in shipped.rglob("*.py") if STALL_ENV in p.read_text() or "SIGUSR1" in p.read_text()]
