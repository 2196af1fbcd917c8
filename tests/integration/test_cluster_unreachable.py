"""`hearsay cluster` when a peer does not answer at the end: exit 1, the reason in results.json.

Its own module (not test_cluster.py's) so that the test runners can run it beside the other
cluster tests: most of its time is spent waiting for the stopped peer's grace period.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from peer.tools.cluster import STOP_GRACE
from peer.tools.procs import wait_for
from tests.integration.cluster_runs import cluster, finish, kill_all, results


def _child_peer(cluster_pid: int, peer_id: str) -> int | None:
    """The pid of the `hearsay run --peer-id peer_id` child of ``cluster_pid``, once it exists."""
    try:
        children = Path(f"/proc/{cluster_pid}/task/{cluster_pid}/children").read_text().split()
    except OSError:
        return None
    for pid in children:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--peer-id" in argv and argv[argv.index(b"--peer-id") + 1] == peer_id.encode():
            return int(pid)
    return None


def test_a_peer_that_does_not_answer_at_the_end_fails_the_run_with_its_reason(tmp_path: Path) -> None:
    proc = cluster(tmp_path, "-n", "2", "--duration", "600", "--no-final-eval")
    logs = [tmp_path / "logs" / f"peer-{i}.log" for i in range(2)]
    try:
        wait_for(lambda: all(log.exists() and '"event": "ready"' in log.read_text() for log in logs), timeout=240,
                 what="both peers to come up")
        pid = wait_for(lambda: _child_peer(proc.pid, "peer-1"), timeout=30, what="peer-1's pid")
        os.kill(pid, signal.SIGSTOP)  # alive, holding its ports, answering nothing
        proc.send_signal(signal.SIGTERM)  # end the run now: the final status finds peer-1 silent
    except BaseException:
        kill_all(proc)
        raise
    code, output = finish(proc, timeout=120)
    assert code == 1, output[-3000:]
    r = results(tmp_path)
    assert r["outcome"] == "interrupted"
    stopped = next(p for p in r["peers"] if p["id"] == "peer-1")
    # Which reason depends on whether the cluster polled peer-1 before the SIGSTOP; both name its log.
    assert stopped["state"] == "unreachable", stopped
    assert ("did not answer status" in stopped["reason"] or "never answered" in stopped["reason"]) \
        and stopped["log"] in stopped["reason"], stopped
    assert r["unreachable"] == {"peer-1": stopped["reason"]}
    assert "peer peer-1 unreachable at the end" in output
    healthy = next(p for p in r["peers"] if p["id"] == "peer-0")
    assert healthy["state"] == "up" and "reason" not in healthy
    assert healthy["final_accuracy"] is None and "--no-final-eval" in r["evaluation"]["final_accuracy"]
    assert r["stop_seconds"] <= STOP_GRACE + 5  # the stopped peer is killed after the grace period
