"""The `hearsay` CLI as users run it, against real peers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from peer.procs import free_ports, wait_for


def hearsay(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peer.cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_status_and_peers_describe_a_running_peer(launch) -> None:
    a, b = launch(2, lambda i, seeds: ["--seeds", ",".join(seeds), "--seed", str(i), "--gossip-interval", "0.3"])
    wait_for(lambda: a.status().exchanges > 0 and a.status().accuracy >= 0, timeout=60, what="an exchange")
    out = hearsay("status", "--admin", a.admin_address)
    assert out.returncode == 0, out.stderr
    s = a.status()
    for expected in ("peer-0", a.gossip_address, "steps", "accuracy", "known peers", "bytes in/out"):
        assert expected in out.stdout, (expected, out.stdout)
    assert "known peers   1" in out.stdout

    as_json = json.loads(hearsay("status", "--admin", a.admin_address, "--json").stdout)
    assert as_json["peer_id"] == "peer-0" and int(as_json["steps"]) >= s.steps
    assert int(as_json["bytes_received"]) > 0 and int(as_json["bytes_sent"]) > 0

    out = hearsay("peers", "--admin", a.admin_address)
    assert out.returncode == 0 and "peer-1" in out.stdout and b.gossip_address in out.stdout
    peers = json.loads(hearsay("peers", "--admin", a.admin_address, "--json").stdout)
    assert [p["peer_id"] for p in peers] == ["peer-1"] and peers[0]["state"] == "alive"


def test_status_of_a_dead_address_is_one_line_and_non_zero() -> None:
    (port,) = free_ports(1)
    for command in ("status", "peers"):
        out = hearsay(command, "--admin", f"127.0.0.1:{port}", "--timeout", "2")
        assert out.returncode != 0
        assert out.stdout == ""
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "Traceback" not in out.stderr and "cannot reach" in out.stderr


def test_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("lr = -1\n")
    for args in (["run", "--config", str(cfg)], ["run", "--seeds", "nonsense"],
                 ["run", "--model", "nosuchmodule_xyz:make", "--port", "0", "--admin-port", "0"]):
        out = hearsay(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr


def test_cluster_writes_results_and_plot(tmp_path: Path) -> None:
    # The run ends when both peers are at the target together; the duration only bounds a loaded machine.
    out = hearsay("cluster", "-n", "2", "--duration", "300", "--target-accuracy", "0.85", "--out",
                  str(tmp_path), timeout=420)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "results:" in out.stdout and "plot:" in out.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["all_reached_target"] is True
    assert [p["id"] for p in results["peers"]] == ["peer-0", "peer-1"]
    for p in results["peers"]:
        assert p["accuracy"] >= 0.85
        for key in ("steps", "exchanges", "bytes_sent", "bytes_received"):
            assert p[key] > 0, key
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
