"""The `hearsay` CLI as users run it, against real peers."""

from __future__ import annotations

import errno
import json
import os
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from peer.runtime.config import ZOO_MODELS, PeerConfig
from peer.tools.procs import PeerProcess, free_ports, launch_peers, wait_for
from tests.conftest import COMMON_PEER_ARGS, stop_peers


def hearsay(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peer.tools.cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_status_and_peers_describe_a_running_peer(pair: list[PeerProcess]) -> None:
    a, b = pair  # exchanging already
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


# `hearsay cluster`'s results and plot: tests/integration/test_cluster.py (one cluster run checks both).


# --- against a running pair of peers (started once for the tests below) ---------------------

@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[PeerProcess]]:
    logs = tmp_path_factory.mktemp("pair")
    peers = launch_peers(2, logs, lambda i, seeds: [*COMMON_PEER_ARGS, "--seeds", ",".join(seeds), "--seed", str(i),
                                                    "--gossip-interval", "0.3"])
    try:
        for p in peers:
            p.wait_ready(120)
        wait_for(lambda: all((s := p.try_status()) is not None and s.exchanges > 0 and s.accuracy >= 0
                             for p in peers), timeout=90, what="exchanges between the pair")
        yield peers
    finally:
        stop_peers(peers)


def one_line_error(out: subprocess.CompletedProcess[str], code: int) -> str:
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


def test_ports_are_not_shared_with_a_second_peer(pair: list[PeerProcess]) -> None:
    a, _ = pair
    # gRPC's default SO_REUSEPORT would let any socket that also sets it bind a peer's port.
    for port in (a.admin_port, a.gossip_port):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError) as refused:
                s.bind(("127.0.0.1", port))
            assert refused.value.errno == errno.EADDRINUSE
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for flags, what in ((["--port", "0", "--admin-port", str(a.admin_port)], "admin port"),
                        (["--port", str(a.gossip_port), "--admin-port", "0"], "gossip port")):
        line = one_line_error(hearsay("run", *flags), 1)
        assert what in line and str(a.admin_port if what == "admin port" else a.gossip_port) in line
        assert "already in use" in line, line
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # refused before torch, the data or the model are loaded (that alone costs seconds of CPU)
    assert (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime) < 2.0
    answers = {json.loads(hearsay("status", "--admin", a.admin_address, "--json").stdout)["peer_id"]
               for _ in range(3)}
    assert answers == {"peer-0"}


def test_pull_model_writes_atomically_where_it_can_and_says_why_where_it_cannot(
        pair: list[PeerProcess], tmp_path: Path) -> None:
    admin = ["--admin", pair[0].admin_address]
    line = one_line_error(hearsay("pull-model", *admin, "-o", "/nonexistent/dir/m.pt"), 2)
    assert "/nonexistent/dir does not exist" in line
    out = hearsay("pull-model", *admin, "-o", str(tmp_path))  # a directory: the file is named after the peer
    assert out.returncode == 0, out.stderr
    assert os.listdir(tmp_path) == ["peer-0.pt"]  # and no stray .part
    state = torch.load(tmp_path / "peer-0.pt", weights_only=True)
    out = hearsay("pull-model", *admin, "-o", str(tmp_path / "m.safetensors"), "--format", "safetensors", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["format"] == "safetensors", out.stderr
    tensors = load_file(tmp_path / "m.safetensors")
    assert {k: (v.shape, v.dtype) for k, v in tensors.items()} == {k: (v.shape, v.dtype) for k, v in state.items()}
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors", "peer-0.pt"]
    line = one_line_error(hearsay("pull-model", *admin, "-o", str(tmp_path / "peer-0.pt" / "x.pt")), 2)
    assert "is not a directory" in line


def test_admin_addresses_are_checked_and_a_gossip_port_gets_a_hint(pair: list[PeerProcess]) -> None:
    a, _ = pair
    out = hearsay("status", "--admin", "localhost", "--timeout", "1")
    assert out.returncode == 0 or "localhost:7071" in out.stderr, out.stderr  # the admin port, not 443
    assert "the port must be a number in 1..65535" in one_line_error(
        hearsay("status", "--admin", "127.0.0.1:70711"), 2)
    line = one_line_error(hearsay("status", "--admin", a.gossip_address), 1)
    assert "gossip port" in line and "admin port" in line
    for timeout in ("0", "-1", "nan", "inf"):
        assert "--timeout" in one_line_error(hearsay("status", "--admin", a.admin_address, f"--timeout={timeout}"), 2)


def test_status_json_has_numbers_and_text_shows_the_live_knobs(pair: list[PeerProcess]) -> None:
    a, b = pair
    status = json.loads(hearsay("status", "--admin", a.admin_address, "--json").stdout)
    for key in ("steps", "exchanges", "bytes_sent", "model_version", "samples"):
        assert type(status[key]) is int, (key, status[key])
    peers = json.loads(hearsay("peers", "--admin", a.admin_address, "--json").stdout)
    assert type(peers[0]["exchanges"]) is int and type(peers[0]["report"]["steps"]) is int
    assert peers[0]["source"] == "seed"  # peer-1 was given as a seed, even though SWIM also gossips it
    assert " seed " in hearsay("peers", "--admin", a.admin_address).stdout
    text = hearsay("status", "--admin", a.admin_address).stdout
    assert f"every 0.3 s, codec fp32, merge {PeerConfig().merge}" in text, text


def test_top_fits_80_columns_measures_rates_and_writes_when_piped(pair: list[PeerProcess]) -> None:
    a, _ = pair
    env = {**os.environ, "COLUMNS": "80"}

    def top_once() -> tuple[list[str], str]:
        out = subprocess.run([sys.executable, "-m", "peer.tools.cli", "top", "--admin", a.admin_address, "--once"],
                             capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert max(len(line) for line in lines) <= 80 and "…" not in out.stdout, out.stdout
        return lines, next(line for line in lines if line.startswith("peer-0 *"))

    # exch/s comes from two samples a second apart, so it is 0.00 in a second with no exchange
    # (a loaded machine: CI saw 10 exchanges in ~9 s). A constant 0.00 never turns positive.
    rows_seen: list[str] = []

    def rate_moves() -> bool:
        _, self_row = top_once()
        rows_seen.append(self_row)
        return float(self_row.split()[5]) > 0

    try:
        wait_for(rate_moves, timeout=60, interval=0.1, what="a positive exch/s in top's self row")
    except TimeoutError as e:  # what the peer thinks of its partner says why exchanges stopped (a ban, a death)
        peers = hearsay("peers", "--admin", a.admin_address).stdout
        raise AssertionError(f"{e}; the last rows: {rows_seen[-3:]}; peers:\n{peers}") from None

    def json_rate_moves() -> list[dict[str, Any]] | None:
        rows = json.loads(hearsay("top", "--admin", a.admin_address, "--json").stdout)
        assert {r["peer"] for r in rows} == {"peer-0", "peer-1"}
        me = next(r for r in rows if r["self"])
        assert me["peer"] == "peer-0" and me["exchange_rate"] >= 0
        return rows if me["exchange_rate"] > 0 else None

    wait_for(json_rate_moves, timeout=60, interval=0.1, what="a positive exchange_rate in top --json")

    proc = subprocess.Popen([sys.executable, "-m", "peer.tools.cli", "top", "--admin", a.admin_address, "--interval", "0.3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, stdin=subprocess.DEVNULL)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while seen.count(b"peer-1") < 2 and time.monotonic() < deadline:  # two snapshots, as they come
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                seen += os.read(proc.stdout.fileno(), 65536)
    finally:
        proc.kill()
        proc.wait()
    assert seen.count(b"peer-1") >= 2, seen.decode(errors="replace")


# --- flags ---------------------------------------------------------------------------------

def test_flag_mistakes_are_one_line_with_the_nearest_option_or_the_valid_values() -> None:
    line = one_line_error(hearsay("run", "--codec", "int3"), 2)
    assert "choose from 'fp32', 'fp16', 'int8', 'int4'" in line and "did you mean" in line
    line = one_line_error(hearsay("run", "--merge", "avg"), 2)
    assert "'vc'" in line and "'bristle'" in line
    assert "did you mean '--admin'" in one_line_error(hearsay("status", "--admn", "127.0.0.1:7071"), 2)
    assert "did you mean '--gossip-interval'" in one_line_error(hearsay("run", "--gossip-intervl", "1"), 2)
    assert "did you mean 'status'" in one_line_error(hearsay("stauts"), 2)
    line = one_line_error(hearsay("run", "--model", "resnet"), 2)
    assert ", ".join(ZOO_MODELS) in line


def test_run_checks_flags_before_importing_torch() -> None:
    script = ("import json, sys\nfrom peer.tools.cli import main\nrc = main(sys.argv[1:])\n"
              "print(json.dumps({'rc': rc, 'heavy': sorted(m for m in ('torch', 'numpy', 'grpc') if m in sys.modules)}))")
    for flags in (["--lr", "inf"], ["--model", "resnet"], ["--data-seed", "-1"], ["--probe-period", "inf"]):
        out = subprocess.run([sys.executable, "-c", script, "run", *flags], capture_output=True, text=True, timeout=60)
        assert json.loads(out.stdout) == {"rc": 2, "heavy": []}, (flags, out.stdout, out.stderr)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    one_line_error(hearsay("run", "--codec", "int3"), 2)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert cpu < 1.0, f"an invalid flag took {cpu:.2f} s of CPU"  # CPU, not wall time: the machine is shared


# --- the README's plug-in example, run as written ---------------------------------------------

def readme_plugin_example() -> tuple[str, str, str]:
    """(file path as written, its code, the shell command) from the README's marked example."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("<!-- plugin-example")[1].split("<!-- /plugin-example -->")[0]
    code = section.split("```python\n")[1].split("```")[0]
    command = section.split("```sh\n")[1].split("```")[0].strip()
    path = code.splitlines()[0].removeprefix("# ")
    return path, code, command


def test_the_readme_plugin_example_runs_as_written(tmp_path: Path) -> None:
    path, code, command = readme_plugin_example()
    assert path.startswith("~/") and command.startswith("PYTHONPATH=")
    target = tmp_path / path.removeprefix("~/")
    target.parent.mkdir(parents=True)
    target.write_text(code)
    env = {**os.environ, "HOME": str(tmp_path), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    without_path = command.split(" ", 1)[1]  # the same command without PYTHONPATH: one line that says so
    out = subprocess.run(["bash", "-c", f"{without_path} --port 0 --admin-port 0"], capture_output=True,
                         text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert "is its directory on PYTHONPATH?" in one_line_error(out, 2)

    log = tmp_path / "peer.log"
    with open(log, "wb") as f:
        # bash runs a lone command in its own process (no fork), so the signals below reach the peer
        proc = subprocess.Popen(["bash", "-c", f"{command} --port 0 --admin-port 0 --peer-id plug --threads 1"],
                                stdout=f, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    try:
        def ready() -> dict | None:
            assert proc.poll() is None, log.read_text()
            lines = [ln for ln in log.read_text().splitlines() if ln.startswith('{"event": "ready"')]
            return json.loads(lines[0]) if lines else None

        admin = wait_for(ready, timeout=120, what="the plug-in peer to start")["admin"]
        from peer.tools.admin_client import AdminClient

        with AdminClient(admin) as client:
            status = wait_for(lambda: (s := client.status()).accuracy >= 0.5 and s, timeout=90,
                              what="the plug-in model to learn the blobs")
        assert (status.dataset, status.model) == ("blobs:load", "blobs:make_net")
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
