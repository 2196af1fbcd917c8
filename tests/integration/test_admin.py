"""Every admin RPC and CLI command against a live 3-peer cluster, plus health, reflection and auth."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from hearsay.v1 import admin_pb2
from peer.runtime.config import PeerConfig
from peer.tools.admin_client import AdminClient, AdminError
from peer.tools.procs import PeerProcess, launch_peers, wait_for
from tests.conftest import COMMON_PEER_ARGS, stop_peers
from tests.integration.test_metrics_http import metrics_url, scrape


def hearsay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "peer.tools.cli", *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def start_cluster(log_dir: Path, data_root: Path) -> list[PeerProcess]:
    """Three trained, gossiping peers with metrics ports; the caller stops them."""
    peers = launch_peers(3, log_dir, lambda i, seeds: [
        *COMMON_PEER_ARGS, "--seeds", ",".join(seeds), "--seed", str(i), "--gossip-interval", "0.3",
        "--data-dir", str(data_root / f"data-{i}"), "--checkpoint-interval", "0", "--metrics-port", "0",
        "--shard-index", str(i), "--shard-count", "3"])
    try:
        for p in peers:
            p.wait_ready(90)
        wait_for(lambda: all(p.status().merges >= 2 and p.status().steps > 0 for p in peers), timeout=60,
                 what="training and exchanges in the cluster")
    except BaseException:
        stop_peers(peers)
        raise
    return peers


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[PeerProcess]]:
    """A cluster of the test's own, for a test that changes it (settings, a peer leaving)."""
    peers = start_cluster(tmp_path / "logs", tmp_path)
    yield peers
    stop_peers(peers)


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[PeerProcess]]:
    """One cluster for the module's tests that only look (a start costs seconds per peer)."""
    tmp = tmp_path_factory.mktemp("shared-cluster")
    peers = start_cluster(tmp / "logs", tmp)
    yield peers
    stop_peers(peers)


def test_every_admin_command_against_a_live_cluster(cluster: list[PeerProcess], tmp_path: Path) -> None:
    a, b, c = cluster
    admin = ["--admin", a.admin_address]

    status = json.loads(hearsay("status", *admin, "--json").stdout)
    assert status["peer_id"] == "peer-0" and status["known_peers"] == 2 and status["merge"] == PeerConfig().merge

    peers = json.loads(hearsay("peers", *admin, "--json").stdout)
    assert {p["peer_id"] for p in peers} == {"peer-1", "peer-2"}
    for p in peers:
        assert p["state"] == "alive" and p["rtt_ms"] != 0 and int(p["exchanges"]) > 0
        assert int(p["report"]["steps"]) > 0 and p["report"]["age_seconds"] >= 0

    text = hearsay("metrics", *admin).stdout
    assert "hearsay_exchanges_total" in text and "hearsay_train_step_seconds_bucket" in text
    samples = json.loads(hearsay("metrics", *admin, "--json").stdout)
    assert samples["hearsay_merges_total"] >= 2

    out = hearsay("checkpoint", *admin)
    assert out.returncode == 0 and "checkpoint" in out.stdout, out.stderr
    saved = json.loads(hearsay("checkpoint", *admin, "--json").stdout)
    assert Path(saved["path"]).exists() and len(saved["sha256"]) == 64
    assert a.status().last_checkpoint == saved["path"]

    model_file = tmp_path / "model.pt"
    out = hearsay("pull-model", *admin, "-o", str(model_file))
    assert out.returncode == 0, out.stderr
    state = torch.load(model_file, weights_only=True)
    assert "net.1.weight" in state and state["net.1.weight"].shape == (128, 64)

    out = hearsay("set", *admin, "gossip_interval=0.25")
    assert out.returncode == 0 and "gossip_interval = 0.25" in out.stdout
    assert hearsay("set", *admin, "merge=mean").returncode == 0 and a.status().merge == "mean"
    assert hearsay("set", *admin, "codec=fp16").returncode == 0 and a.status().codec == "fp16"
    assert hearsay("set", *admin, "log_level=debug").returncode == 0 and a.status().log_level == "debug"
    out = hearsay("set", *admin, "lr=0.02")  # the base rate; the metrics show the rate the next step takes
    assert out.returncode == 0 and "lr = 0.02 (was 0.05)" in out.stdout, out.stderr
    assert json.loads(hearsay("metrics", *admin, "--json").stdout)["hearsay_learning_rate"] == 0.02
    assert (a.status().lr, a.status().lr_schedule) == (0.02, "constant")
    assert "lr            0.02\n" in hearsay("status", *admin).stdout
    for bad in ("gossip_interval=-1", "gossip_interval=inf", "gossip_interval=1e300", "gossip_interval=nan",
                "gossip_interval=0", "codec=zip", "merge=vote", "nokey=1", "novalue", "debug_loop_stall=0.3@1",
                "log_level=loud", "lr=0", "lr=-0.1"):
        out = hearsay("set", *admin, bad)
        assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1, (bad, out.stderr)
        assert "Traceback" not in out.stderr
    assert "unknown key 'debug_loop_stall'" in hearsay("set", *admin, "debug_loop_stall=0.3@1").stderr
    assert "gossip_interval: inf is not a finite number" in hearsay("set", *admin, "gossip_interval=inf").stderr
    assert a.status().gossip_interval == 0.25  # every refused value left the knob as it was
    before = c.status().merges  # a peer sending fp16 is still understood by the others
    wait_for(lambda: c.status().merges > before + 2, timeout=30, what="merges after switching codec")

    out = hearsay("top", *admin, "--once")
    assert out.returncode == 0 and "peer-1" in out.stdout and "peer-2" in out.stdout, out.stdout
    rows = json.loads(hearsay("top", *admin, "--json").stdout)
    assert {r["peer"] for r in rows} == {"peer-0", "peer-1", "peer-2"}
    assert all(r["steps"] > 0 and r["accuracy"] > 0 for r in rows)

    out = hearsay("leave", "--admin", c.admin_address)
    assert out.returncode == 0 and "leaving" in out.stdout
    assert c.proc is not None and c.proc.wait(timeout=30) == 0  # drained and stopped by itself


def test_memory_by_component_in_status_peers_and_metrics(shared_cluster: list[PeerProcess]) -> None:
    """Steady-state memory (peer/runtime/footprint.py) as `hearsay status`, `hearsay peers` and
    the metrics show it: model, optimizer, one sender replica and one receiver copy per link,
    each one model, all within the bound `--max-links` sets (README, "Memory a peer holds")."""
    a = shared_cluster[0]
    admin = ["--admin", a.admin_address]

    # An exchange that fails (a deadline missed on a loaded machine) drops its link's replica
    # until the next keyframe is answered, so the three views are read until each shows both
    # links held (CI once read 1 model's replica between two reads that saw 2 links). Wrong
    # accounting never shows exactly one model per link, and times out.
    def settled() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, float]] | None:
        status = json.loads(hearsay("status", *admin, "--json").stdout)
        model = int(status["memory_model_bytes"])
        if not (int(status.get("sender_links", 0)) == 2 == int(status.get("receiver_links", 0))
                and int(status["memory_sender_bytes"]) == 2 * model == int(status["memory_receiver_bytes"])):
            return None
        peers = json.loads(hearsay("peers", *admin, "--json").stdout)
        if not (sorted(int(p["sender_replica_bytes"]) for p in peers) == [model, model]
                == sorted(int(p["receiver_copy_bytes"]) for p in peers)):
            return None
        values = scrape(metrics_url(a))
        if not (values['hearsay_memory_bytes{component="sender_replicas"}'] == 2 * model
                == values['hearsay_memory_bytes{component="receiver_copies"}']
                and values['hearsay_memory_links{side="sender"}'] == 2 == values['hearsay_memory_links{side="receiver"}']):
            return None
        return status, peers, values

    status, _peers, values = wait_for(settled, timeout=60, interval=0.5,
                                      what="one model per link (both partners) in status, peers and metrics")
    model, optimizer = int(status["memory_model_bytes"]), int(status["memory_optimizer_bytes"])
    links = int(status["max_links"])
    assert model > 0 and 0 < optimizer <= model  # SGD momentum: one buffer per parameter (buffers excluded)
    assert int(status["memory_bound_bytes"]) == model + optimizer + 2 * links * model
    assert model + optimizer + 4 * model <= int(status["memory_bound_bytes"])
    assert "memory        model" in hearsay("status", *admin).stdout
    assert values['hearsay_memory_bytes{component="model"}'] == model
    assert values['hearsay_memory_bytes{component="optimizer"}'] == optimizer
    assert values["hearsay_memory_bound_bytes"] == int(status["memory_bound_bytes"])


def test_metrics_port_counters_match_status(shared_cluster: list[PeerProcess]) -> None:
    """The scrape and Status read the same counters.

    The two reads happen at different moments, and an exchange may land between them
    (quiescing gossip cannot promise otherwise: a partner's exchange in flight still
    arrives). So the scrape is taken between two Status calls: the counters only grow,
    and when both Status calls agree, every counter at the scrape's moment equals them.
    """
    a = shared_cluster[0]
    for p in shared_cluster:  # fewer exchanges, so a window with none comes soon
        with p.admin() as client:
            client.set("gossip_interval", "1000")
    url = metrics_url(a)

    def counters(s) -> tuple[int, int, int, int]:  # noqa: ANN001
        return s.exchanges, s.bytes_sent, s.bytes_received, s.merges

    def sandwiched():
        before = a.status()
        values = scrape(url)
        after = a.status()
        return (before, values) if counters(before) == counters(after) else None

    status, values = wait_for(sandwiched, timeout=30, what="a scrape with no exchange around it")
    exchanges = sum(v for k, v in values.items() if k.startswith("hearsay_exchanges_total"))
    assert exchanges == status.exchanges > 0
    assert values['hearsay_bytes_total{codec="fp32",direction="out"}'] == status.bytes_sent > 0
    assert values['hearsay_bytes_total{codec="fp32",direction="in"}'] == status.bytes_received > 0
    assert values["hearsay_merges_total"] == status.merges
    # Loopback callers are answered whole (peer/transport/answering.py): both read 0 here;
    # tests/peer/test_early_answer.py counts real early answers into the same stats.
    assert values["hearsay_answered_early_total"] == status.answered_early == 0
    assert values["hearsay_early_reply_bytes_total"] == status.early_reply_bytes == 0


def test_health_and_reflection(shared_cluster: list[PeerProcess]) -> None:
    a = shared_cluster[0]
    with grpc.insecure_channel(a.admin_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "hearsay.v1.Admin", "hearsay.v1.Gossip"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        # Reflection lists exactly what this port serves: Gossip and Membership live on the
        # gossip port, and listing them here would lead grpcurl to Unimplemented.
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert services == {"hearsay.v1.Admin", "grpc.health.v1.Health",
                            "grpc.reflection.v1alpha.ServerReflection"}, services
        pool = descriptor_pool.DescriptorPool(db)
        method = pool.FindServiceByName("hearsay.v1.Admin").FindMethodByName("Status")
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary("/hearsay.v1.Admin/Status", request_serializer=request_cls.SerializeToString,
                                   response_deserializer=response_cls.FromString)
        reply = call(request_cls(), timeout=5)
        assert reply.peer_id == "peer-0" and reply.steps > 0


def test_admin_on_a_non_loopback_address_requires_the_token(launch, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-0123456789\n")
    (peer,) = launch(1, lambda i, seeds: ["--admin-token-file", str(token_file)])
    # The harness binds to 127.0.0.1; rebinding beyond loopback is checked by the config test below.
    with AdminClient(peer.admin_address) as anonymous:
        with pytest.raises(AdminError, match="UNAUTHENTICATED"):
            anonymous.status()
    with AdminClient(peer.admin_address, token="wrong") as wrong:
        with pytest.raises(AdminError, match="UNAUTHENTICATED"):
            wrong.list_peers()
    with AdminClient(peer.admin_address, token="s3cret-token-0123456789") as ok:
        assert ok.status().peer_id == "peer-0"
    out = hearsay("status", "--admin", peer.admin_address, "--token-file", str(token_file))
    assert out.returncode == 0 and "peer-0" in out.stdout
    out = hearsay("status", "--admin", peer.admin_address, env={"HEARSAY_ADMIN_TOKEN": "s3cret-token-0123456789"})
    assert out.returncode == 0
    out = hearsay("status", "--admin", peer.admin_address)
    assert out.returncode == 1 and "UNAUTHENTICATED" in out.stderr
    with grpc.insecure_channel(peer.admin_address) as channel:  # health stays open for orchestrators
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        status = channel.unary_unary("/hearsay.v1.Admin/Status",
                                     request_serializer=admin_pb2.StatusRequest.SerializeToString,
                                     response_deserializer=admin_pb2.StatusResponse.FromString)
        token = "s3cret-token-0123456789"
        # The header is parsed strictly: padding, a wrong scheme or a second header never pass.
        for refused in ([("authorization", f"Bearer  {token}")], [("authorization", f"Bearer {token} ")],
                        [("authorization", f"Basic {token}")],
                        [("authorization", token)], [("authorization", "Bearer ")], [("authorization", "Bearer")],
                        [("authorization", f"Bearer {token}"), ("authorization", f"Bearer {token}")]):
            with pytest.raises(grpc.RpcError) as denied:
                status(admin_pb2.StatusRequest(), metadata=refused, timeout=5)
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused
        for accepted in (f"Bearer {token}", f"bearer {token}"):  # the scheme is case-insensitive (RFC 7235)
            assert status(admin_pb2.StatusRequest(), metadata=[("authorization", accepted)], timeout=5).peer_id
        # Reflection needs the token, as grpcurl sends it: -H 'authorization: Bearer <token>' (README).
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as refused:
            list(reflect(iter([ask]), timeout=5))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        (answer,) = reflect(iter([ask]), timeout=5, metadata=[("authorization", f"Bearer {token}")])
        assert {s.name for s in answer.list_services_response.service} >= {"hearsay.v1.Admin"}


def test_non_loopback_admin_without_token_is_refused_at_start() -> None:
    out = hearsay("run", "--admin-host", "0.0.0.0", "--check-config")
    assert out.returncode == 2 and "admin_token" in out.stderr
    out = hearsay("run", "--admin-host", "0.0.0.0", "--check-config", env={"HEARSAY_ADMIN_TOKEN": "t" * 16})
    assert out.returncode == 0 and json.loads(out.stdout)["config"]["admin_token"] == "***"
    for weak in (" ", "  ", "t", "fifteen-chars-x", "a token with spaces in it"):  # blank, short, ambiguous
        out = hearsay("run", "--admin-host", "0.0.0.0", "--check-config", env={"HEARSAY_ADMIN_TOKEN": weak})
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, (weak, out.stderr)
        assert "admin_token" in out.stderr and (len(weak) < 4 or weak not in out.stderr)  # never echoed


def test_the_gossip_loop_wakes_when_its_interval_changes(launch) -> None:
    a, b = launch(2, lambda i, seeds: ["--seeds", ",".join(seeds), "--seed", str(i), "--gossip-interval", "1000",
                                       "--bootstrap-timeout", "0"])
    before = a.status().exchanges  # at 1000 s, neither starts an exchange during this test
    out = hearsay("set", "--admin", a.admin_address, "gossip_interval=0.05")
    assert out.returncode == 0, out.stderr
    # The loop was asleep for ~1000 s; the new interval must count from now, not from then.
    wait_for(lambda: a.status().exchanges >= before + 3, timeout=30, what="exchanges at the new interval")
