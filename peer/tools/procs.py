"""Real peer processes on this machine: start, wait until ready, stop.

Used by `hearsay cluster` and by the integration tests, so tests exercise exactly
what users run.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from peer.tools.admin_client import AdminClient, AdminError

T = TypeVar("T")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that were free a moment ago (all held open while choosing).

    Chosen at random below the kernel's ephemeral range: between now and the moment a
    peer binds one (after loading torch and its data, seconds later), the outgoing
    connections of any process on the machine take their local ports from that range,
    and a peer binds without SO_REUSEPORT, so a port taken meanwhile would stop it.
    """
    try:
        ephemeral_floor = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_floor = 32768
    low = max(1024, ephemeral_floor - 16384)
    pick = random.SystemRandom()
    socks: list[socket.socket] = []
    try:
        for _attempt in range(1000):
            if len(socks) == count:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((host, pick.randrange(low, ephemeral_floor) if low < ephemeral_floor else 0))
            except OSError:  # in use: try another
                s.close()
                continue
            socks.append(s)
        if len(socks) < count:
            raise OSError(f"no {count} free ports found below {ephemeral_floor}")
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(condition: Callable[[], T], timeout: float, interval: float = 0.2, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; ``TimeoutError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Launcher(Protocol):
    """Runs ``python -m module args`` some other way than a fresh interpreter (the tests fork
    their peers from a pre-imported process); returns a handle like ``subprocess.Popen``'s, or
    None where it cannot, and then the peer is started as a fresh `python -m` process."""

    def spawn(self, module: str, args: Sequence[str], env: dict[str, str], log_path: Path): ...  # noqa: ANN201


_launcher: Launcher | None = None


def use_launcher(launcher: Launcher | None) -> None:
    """Start every ``PeerProcess`` of this process through ``launcher`` (None: plain ``Popen``)."""
    global _launcher
    _launcher = launcher


class LoggedChild:
    """A child process whose output goes to ``log_path``: whether it runs, and its last lines.
    Shared by the peer processes here and the tests' processes in network namespaces."""

    proc: subprocess.Popen[bytes] | None
    log_path: Path

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class PeerProcess(LoggedChild):
    """One `hearsay run` child process with its ports and log file."""

    peer_id: str
    gossip_port: int
    admin_port: int
    args: Sequence[str]
    log_path: Path
    host: str = "127.0.0.1"
    env: dict[str, str] = field(default_factory=dict)
    module: str = "peer.tools.cli"  # what `python -m` runs; tests may run a wrapper of the CLI
    proc: subprocess.Popen[bytes] | None = None  # or a Launcher's handle, which behaves like one

    @property
    def gossip_address(self) -> str:
        return f"{self.host}:{self.gossip_port}"

    @property
    def admin_address(self) -> str:
        return f"{self.host}:{self.admin_port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, "run", "--peer-id", self.peer_id, "--host", self.host,
                "--port", str(self.gossip_port), "--admin-host", self.host,
                "--admin-port", str(self.admin_port), *self.args]

    def start(self) -> PeerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if _launcher is not None:
            self.proc = _launcher.spawn(self.module, self.command()[3:], {**os.environ, **self.env}, self.log_path)
            if self.proc is not None:
                return self
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed by the OS at exit
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **self.env})
        log.close()
        return self

    def admin(self, timeout: float = 5.0) -> AdminClient:
        return AdminClient(self.admin_address, timeout)

    def status(self, timeout: float = 5.0):  # noqa: ANN201 - admin_pb2.StatusResponse
        with self.admin(timeout) as client:
            return client.status()

    def try_status(self, timeout: float = 2.0):  # noqa: ANN201
        """The status, or ``None`` while the peer is not answering."""
        try:
            return self.status(timeout)
        except AdminError:
            return None

    def healthy(self, timeout: float = 1.0) -> bool:
        """Whether the admin server's gRPC health service says SERVING (needs no token)."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            with grpc.insecure_channel(self.admin_address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"peer {self.peer_id} exited with code {self.proc.returncode if self.proc else '?'}"
                                   f":\n{self.log_tail()}")
            return self.healthy()
        wait_for(ready, timeout, what=f"peer {self.peer_id} to answer on {self.admin_address}")

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` s; returns the exit code."""
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def launch_peers(count: int, log_dir: Path, args_for: Callable[[int, list[str]], Sequence[str]],
                 env: dict[str, str] | None = None, module: str = "peer.tools.cli") -> list[PeerProcess]:
    """Start ``count`` peers on loopback, each seeded with every other one's gossip address.

    ``args_for(i, seeds)`` returns the extra `hearsay run` flags of peer ``i``.
    """
    ports = free_ports(2 * count)
    peers = []
    for i in range(count):
        peers.append(PeerProcess(peer_id=f"peer-{i}", gossip_port=ports[2 * i], admin_port=ports[2 * i + 1],
                                 args=[], log_path=log_dir / f"peer-{i}.log", env=dict(env or {}),
                                 module=module))
    for i, p in enumerate(peers):
        seeds = [q.gossip_address for q in peers if q is not p]
        p.args = list(args_for(i, seeds))
        p.start()
    return peers
