"""tests/netns.py: namespaces on a bridge talk, cut() partitions, restore() heals, leftovers are found.

The membership partition test and the compose test stand on these helpers; a helper
that silently did nothing (a cut that does not cut) would make those tests lie.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.netns import NetnsLab, cleanup_stale, links, namespaces, run_prefix

TAG = "hct"


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    if os.geteuid() != 0:
        pytest.fail("tests/netns.py tests need root (network namespaces, veth pairs, bridges)")
    cleanup_stale(TAG)
    with NetnsLab(run_prefix(TAG)) as netns_lab:
        yield netns_lab


def _connects(lab: NetnsLab, source: str, host: str, port: int) -> bool:
    """Whether a TCP connection from ``source`` to ``host:port`` succeeds within a second."""
    code = ("import socket, sys\n"
            f"try: socket.create_connection(({host!r}, {port}), timeout=1).close()\n"
            "except OSError: sys.exit(1)")
    return subprocess.run(lab.endpoints[source].command([sys.executable, "-c", code]),
                          capture_output=True, timeout=20).returncode == 0


def test_namespaces_reach_each_other_by_name_and_a_cut_link_partitions(lab: NetnsLab) -> None:
    a = lab.add("a")
    b = lab.add("b")
    lab.write_hosts(a, {"bee": b.address})
    server = subprocess.Popen(b.command([sys.executable, "-c",
                                         "import socket\ns = socket.create_server(('0.0.0.0', 5000))\n"
                                         "print('up', flush=True)\n"
                                         "while True: s.accept()[0].close()"]),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        assert _connects(lab, "a", "bee", 5000)  # resolved through a's own /etc/hosts
        assert not _connects(lab, "a", "127.0.0.1", 5000)  # a's loopback is not b's
        lab.cut(b)
        assert not _connects(lab, "a", b.address, 5000)
        lab.restore(b)
        assert _connects(lab, "a", b.address, 5000)
    finally:
        server.kill()
        server.wait()


def test_close_removes_everything_and_stale_runs_are_cleaned(lab: NetnsLab) -> None:
    # A lab "left behind" by a dead process (pid 2**22 + 1 is above any pid_max, so it never exists).
    dead = NetnsLab(run_prefix(TAG, pid=2**22 + 1))
    ep = dead.add("x", hosts={"y": "10.77.0.9"})
    live = lab.add("z")
    assert ep.namespace in namespaces()
    removed = cleanup_stale(TAG)
    assert ep.namespace in removed and ep.namespace not in namespaces()
    assert not any(name.startswith(dead.prefix) for name in links())
    assert live.namespace in namespaces()  # ours (a live pid) is left alone
    lab.close()
    assert not any(name.startswith(lab.prefix) for name in [*namespaces(), *links()])
