"""deploy/docker-compose.yml run for real, one network namespace per container, no Docker.

Why: issue 6 asks that the compose topology (broker + 4 peers) reach the accuracy of
`hearsay cluster -n 4`, and no container engine runs here. Each compose service
instance gets its own network namespace on a Linux bridge with its own address
(tests/netns.py), its own hostname (a UTS namespace, as a container has) and an
/etc/hosts that maps service names the way Docker's DNS does (``mosquitto`` -> the
broker's address, the hostname -> the container's own address). Inside, the test
runs exactly what the compose file and the Dockerfile say: the image's entrypoint
script with the service's command and the image ENV overlaid by the service's
environment. Substitutions, all visible below: the image's /usr/local/bin files are
the repository files they are copied from, ``hearsay``/``python`` are this
virtualenv's, /data (a per-container volume) is a per-instance temporary directory,
and hostnames are fixed 12-hex ids in place of Docker's random container ids.

Reference (measured on this 2-core machine): `hearsay cluster -n 4 --duration 60`
reaches >= 0.95 test accuracy on every peer ~6 s after training starts and ends at
0.969-0.978. The target here is 0.95, the README's quick-start target; the replicas'
hashed shards cover only 3 of the 4 quarters of the data (see deploy/README.md),
which is the honest compose setup, and it still gets there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.netns import Endpoint, NetnsLab, cleanup_stale, run_prefix
from peer.tools.procs import LoggedChild, wait_for
from tests.deploy.manifests import (
    DEPLOY,
    base_env,
    compose_peer_start,
    image_bin,
    load_compose,
    map_image_path,
    parse_dockerfile,
)
from tests.mqtt_broker import find_mosquitto

REPLICAS = 4
TARGET_ACCURACY = 0.95
READY_TIMEOUT = 180.0  # importing torch in 4 peers at once; generous for a shared machine
CONVERGE_TIMEOUT = 75.0
# The deadlines inside the test (broker 20 s, readiness, convergence, listing) add up to
# well under the test's own timeout, so a slow run fails saying what it waited for
# instead of being cut off by pytest-timeout.
TEST_TIMEOUT = 420
TAG = "hcn"  # netns objects are named hcn<pid>x...: leftovers of dead runs are recognisable


def _container_id(i: int) -> str:
    """A fixed stand-in for Docker's random 12-hex container id (the replica's hostname)."""
    return hashlib.sha256(f"peer-{i}".encode()).hexdigest()[:12]


@dataclass
class Instance(LoggedChild):
    """One compose container: its namespace, hostname, process and log."""

    name: str
    hostname: str
    endpoint: Endpoint
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None


def _start(instance: Instance, argv: list[str], cwd: Path) -> None:
    """Start ``argv`` in the instance's namespace, under its own hostname (a fresh UTS namespace)."""
    command = instance.endpoint.command(
        ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', instance.hostname, *argv])
    with open(instance.log_path, "ab") as log:
        instance.proc = subprocess.Popen(command, env=instance.env, cwd=cwd, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)


def _stop(instance: Instance) -> None:
    """SIGTERM (what `docker compose down` sends), SIGKILL after the grace period."""
    if instance.proc is None or instance.proc.poll() is not None:
        return
    instance.proc.send_signal(signal.SIGTERM)
    try:
        instance.proc.wait(15)
    except subprocess.TimeoutExpired:
        instance.proc.kill()
        instance.proc.wait(10)


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    """A bridge for this run; leftovers of killed earlier runs are removed first, all of it at the end."""
    if os.geteuid() != 0:
        pytest.fail("test_compose_netns needs root: it creates network namespaces, veth pairs and a bridge "
                    "(run the suite as root, or in CI's root container)")
    for tool in ("ip", "unshare"):
        if shutil.which(tool, path=base_env(Path("/nonexistent"))["PATH"]) is None:
            pytest.fail(f"{tool} is missing: install iproute2 / util-linux")
    cleanup_stale(TAG)
    with NetnsLab(run_prefix(TAG)) as netns_lab:
        yield netns_lab


def _in_namespace(instance: Instance, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(instance.endpoint.command(argv), env=instance.env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _check_alive(instances: list[Instance]) -> None:
    for inst in instances:
        if not inst.alive():
            code = inst.proc.returncode if inst.proc else "?"
            raise AssertionError(f"{inst.name} ({inst.hostname}) exited with {code}:\n{inst.log_tail()}")


def _statuses(peers: list[Instance], bin_dir: Path) -> list[dict | None]:
    """`hearsay status --json` of every peer, asked inside its namespace (admin binds its loopback), in parallel."""
    procs = [subprocess.Popen(p.endpoint.command([str(bin_dir / "hearsay"), "status", "--json", "--admin",
                                                  f"127.0.0.1:{p.env.get('HEARSAY_ADMIN_PORT', '7071')}"]),
                              env=p.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL, text=True) for p in peers]
    out: list[dict | None] = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=30)
        out.append(json.loads(stdout) if proc.returncode == 0 and stdout.strip() else None)
    return out


@pytest.mark.timeout(TEST_TIMEOUT)
def test_compose_swarm_in_namespaces_reaches_the_cluster_accuracy(lab: NetnsLab, tmp_path: Path) -> None:
    started = time.monotonic()
    compose = load_compose()
    dockerfile = parse_dockerfile()
    services = compose["services"]
    bin_dir = image_bin(tmp_path / "bin", dockerfile)

    # --- the broker, as the compose service runs it: mosquitto with the mounted config
    (mount,) = services["mosquitto"]["volumes"]
    broker_config = (DEPLOY / mount.split(":")[0]).resolve()
    broker_ep = lab.add("mosquitto")
    broker = Instance("mosquitto", "mosquitto", broker_ep, base_env(bin_dir), tmp_path / "mosquitto.log")
    peers: list[Instance] = []
    try:
        _start(broker, [find_mosquitto(), "-c", str(broker_config)], tmp_path)

        def broker_up() -> bool:
            _check_alive([broker])
            probe = f"import socket; socket.create_connection(('{broker_ep.address}', 1883), timeout=1).close()"
            return _in_namespace(broker, [str(bin_dir / "python"), "-c", probe], 10).returncode == 0
        wait_for(broker_up, timeout=20, interval=0.1, what="mosquitto to accept connections")  # depends_on

        # --- the scaled peer service: same argv and environment for every replica
        argv, service_env = compose_peer_start(dockerfile, services["peer"])
        for i in range(1, REPLICAS + 1):
            hostname = _container_id(i)
            endpoint = lab.add(f"peer-{i}")
            lab.write_hosts(endpoint, {"mosquitto": broker_ep.address, hostname: endpoint.address})
            data = tmp_path / f"peer-{i}" / "data"  # the container's own anonymous /data volume
            data.mkdir(parents=True)
            env = {**base_env(bin_dir), **service_env,
                   **{k: str(data) for k, v in service_env.items() if v == "/data"}}
            peers.append(Instance(f"peer-{i}", hostname, endpoint, env, tmp_path / f"peer-{i}.log"))
        for p in peers:
            _start(p, argv, tmp_path)

        # --- readiness through the image's own HEALTHCHECK command, in each namespace. One
        # deadline for all replicas (they start together), probed together: waiting for
        # them one after another added up to more than the test's timeout under load.
        health = map_image_path(dockerfile.healthcheck, bin_dir)
        answers: dict[str, str] = {}
        unhealthy = list(peers)

        def all_healthy() -> bool:
            _check_alive([broker, *peers])
            probes = [(p, subprocess.Popen(p.endpoint.command(health), env=p.env, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True))
                      for p in unhealthy]
            for p, probe in probes:
                answers[p.name] = probe.communicate(timeout=15)[0].strip()
                if probe.returncode == 0:
                    unhealthy.remove(p)
            return not unhealthy
        try:
            wait_for(all_healthy, timeout=READY_TIMEOUT, interval=1.0, what="every replica's HEALTHCHECK to pass")
        except TimeoutError as e:
            raise AssertionError(f"{e}; last answers: {answers}\n"
                                 + "\n".join(p.log_tail() for p in unhealthy)) from None
        ready_at = time.monotonic()

        # --- learning: every replica reaches the target, having found the others through MQTT
        last: list[dict | None] = []

        def converged() -> bool:
            nonlocal last
            _check_alive([broker, *peers])
            last = _statuses(peers, bin_dir)
            return all(s is not None and s["accuracy"] >= TARGET_ACCURACY and s["known_peers"] == REPLICAS - 1
                       for s in last)
        try:
            # Every poll starts 4 `hearsay status` processes: poll calmly, they cost the peers CPU.
            wait_for(converged, timeout=CONVERGE_TIMEOUT, interval=2.0,
                     what=f"every replica to reach {TARGET_ACCURACY} test accuracy")
        except TimeoutError as e:
            details = "\n".join(f"{p.name}: {s and {k: s[k] for k in ('accuracy', 'known_peers', 'merges')}}\n"
                                f"{p.log_tail(8)}" for p, s in zip(peers, last))
            raise AssertionError(f"{e}\n{details}") from None
        converged_at = time.monotonic()

        # Each replica is who the entrypoint said it is, where its container address is.
        for p, s in zip(peers, last):
            assert s is not None
            assert s["peer_id"] == p.hostname
            assert s["gossip_address"] == f"{p.endpoint.address}:7070"
            assert int(s["merges"]) > 0
        listed = _in_namespace(peers[0], [str(bin_dir / "hearsay"), "peers", "--json", "--admin", "127.0.0.1:7071"],
                               30)
        assert listed.returncode == 0, listed.stderr
        addresses = {m["address"] for m in json.loads(listed.stdout)}
        assert addresses == {f"{p.endpoint.address}:7070" for p in peers[1:]}

        accuracies = {p.hostname: round(s["accuracy"], 4) for p, s in zip(peers, last) if s}
        shards = {p.hostname: _shard_of(p) for p in peers}
        print(f"\ncompose in namespaces: ready after {ready_at - started:.1f} s, target {TARGET_ACCURACY} reached "
              f"{converged_at - ready_at:.1f} s later; accuracy {accuracies}; shards {shards}")
    finally:
        for p in peers:
            _stop(p)
        _stop(broker)


def _shard_of(p: Instance) -> int:
    """The shard the entrypoint gave this replica (cksum of its hostname, as the script computes it)."""
    done = subprocess.run(["cksum"], input=p.hostname.encode(), capture_output=True, check=True)
    return int(done.stdout.split()[0]) % int(p.env["HEARSAY_SHARD_COUNT"])
