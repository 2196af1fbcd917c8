"""A rate-limited link to a network namespace: a veth pair shaped with ``tc ... tbf``.

Why: loopback moves gigabytes per second with no real latency, so it cannot show
whether an exchange fills a real link or whether its deadline fits a slow one. A
``ShapedLink`` puts one namespace at the far end of a veth pair from this (the
caller's) namespace, each end with its own address, and shapes either direction with a
token bucket filter: what leaves ``host_link`` is what the far peer receives.

Needs root (CAP_NET_ADMIN); names carry ``run_prefix`` so ``cleanup_stale`` removes
what a killed run left behind. Used by tests/integration/test_adaptive_deadlines.py and
bench/transport.py's real-link section.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from tests.netns import cleanup_stale, delete_namespace, ip, require_root, run_prefix

# A tbf bucket must hold at least one GSO super-packet (64 KiB on veth) and a few
# milliseconds at the rate, or the filter itself becomes the bottleneck.
MIN_BURST_BYTES = 128 << 10
BURST_SECONDS = 0.004
QUEUE_SECONDS = 0.05  # tbf's ``latency``: how long a packet may queue before it is dropped


def tc(*args: str) -> None:
    done = subprocess.run(["tc", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class ShapedLink:
    """This namespace (``host_address``) <-> namespace ``namespace`` (``far_address``)."""

    tag: str = "hsl"
    host_address: str = "10.79.0.1"
    far_address: str = "10.79.0.2"

    def __post_init__(self) -> None:
        require_root()
        cleanup_stale(self.tag)
        prefix = run_prefix(self.tag)
        self.namespace = f"{prefix}ns"
        self.host_link, self.far_link = f"{prefix}a", f"{prefix}b"
        ip("netns", "add", self.namespace)
        try:
            ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.far_link)
            ip("link", "set", self.far_link, "netns", self.namespace)
            ip("addr", "add", f"{self.host_address}/30", "dev", self.host_link)
            ip("link", "set", self.host_link, "up")
            ip("-n", self.namespace, "link", "set", "lo", "up")
            ip("-n", self.namespace, "addr", "add", f"{self.far_address}/30", "dev", self.far_link)
            ip("-n", self.namespace, "link", "set", self.far_link, "up")
        except Exception:
            self.close()
            raise

    def shape(self, rate_mbit: float, *, outbound: bool = True, inbound: bool = True) -> None:
        """Limit what we send (``outbound``) and what the far end sends (``inbound``) to ``rate_mbit``."""
        rate_bytes = rate_mbit * 1e6 / 8
        burst = max(MIN_BURST_BYTES, int(rate_bytes * BURST_SECONDS))
        spec = ["root", "tbf", "rate", f"{rate_mbit}mbit", "burst", str(burst), "latency", f"{QUEUE_SECONDS * 1000:g}ms"]
        if outbound:
            tc("qdisc", "replace", "dev", self.host_link, *spec)
        if inbound:
            tc("-n", self.namespace, "qdisc", "replace", "dev", self.far_link, *spec)

    def unshape(self) -> None:
        for argv in (["tc", "qdisc", "del", "dev", self.host_link, "root"],
                     ["tc", "-n", self.namespace, "qdisc", "del", "dev", self.far_link, "root"]):
            subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=False)  # absent already is fine

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run at the far end."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def close(self) -> None:
        delete_namespace(self.namespace)  # the veth pair goes with it
        ip("link", "delete", self.host_link, check=False)

    def __enter__(self) -> ShapedLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
