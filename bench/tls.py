"""What mutual TLS costs the gossip transport: plaintext and TLS side by side in one run.

    python -m bench.tls [--quick] [--json FILE]

Two processes (``spawn``, uvloop, on loopback):

- the *answering* process serves ``GossipServicer`` (registered with
  ``grpc_transport.add_to_server`` on a server with ``grpc_transport.server_options()``,
  as ``peer.runtime.node`` does) on one ``grpc.aio`` server, bound on a TCP port
  (plaintext, as a peer without TLS serves) and on the private unix socket behind a
  ``peer.transport.tls_front.TlsFront`` (mutual TLS, as a peer with ``tls_*`` set
  serves). Its handler answers every packet with the packet itself, so both
  directions carry the same bytes, as a push-pull of two dense models does.
  For reference only, the same server also listens with gRPC's own mutual TLS
  (``ssl_server_credentials(require_client_auth=True)``), which peers do not use
  because it refuses callers where Python cannot count or log them: it shows what the
  front costs over TLS done inside gRPC.
- the *initiating* process calls ``GossipClient.exchange`` on each address: a
  plaintext client, and clients with ``channels.channel_credentials`` (a certificate
  from a fresh cluster CA made by ``peer.tools.certs``).

Measured, alternating plaintext and TLS repetition by repetition so a change in the
machine's load hits both alike:

- ``dense``: exchanges of one ~100 MB packet (``--quick``: ~20 MB) each way; MB/s
  counts the packet bytes of both directions over the exchange time.
- ``small``: back-to-back exchanges of a 16 KiB packet (about a top-k delta of a small
  model) on a warm channel: exchanges/s.
- ``connect``: a fresh client's first small exchange (TCP connect, the TLS handshake
  with both certificates checked, HTTP/2 set-up, the exchange): milliseconds.

Next to each wall-clock figure, the CPU time both processes spent on it (from
``/proc/<pid>/stat``, 10 ms ticks): on shared cores the wall time moves with other
work much more than the CPU time does. MB are 10^6 bytes. Figures are medians over
the repetitions; the machine's load average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MB = 1e6
SEED = 1234
SMALL_BYTES = 16 << 10
# tls: what a peer with tls_* set serves (peer.transport.tls_front); grpc_tls: gRPC's own
# mutual TLS server, for reference (it cannot report refused callers, so peers do not use it).
MODES = ("plaintext", "tls", "grpc_tls")


@dataclass(frozen=True)
class Size:
    dense_bytes: int
    dense_reps: int
    small_exchanges: int
    small_reps: int
    connect_reps: int


FULL = Size(dense_bytes=100_000_000, dense_reps=5, small_exchanges=300, small_reps=3, connect_reps=10)
QUICK = Size(dense_bytes=20_000_000, dense_reps=3, small_exchanges=100, small_reps=2, connect_reps=5)


def _make_certs(directory: Path) -> dict[str, Path]:
    from peer.tools import certs

    ca_key, ca_cert, _ = certs.load_or_create_ca(directory)
    server = certs.write_peer(directory, ca_key, ca_cert, "answering")
    client = certs.write_peer(directory, ca_key, ca_cert, "initiating")
    return {"ca": directory / certs.CA_CERT_FILE, "server_cert": server.cert, "server_key": server.key,
            "client_cert": client.cert, "client_key": client.key}


# --- the answering process --------------------------------------------------------------------

def _answering(files: dict[str, Path], conn: Any) -> None:
    import uvloop

    uvloop.run(_serve(files, conn))


async def _serve(files: dict[str, Path], conn: Any) -> None:
    import grpc

    from peer.transport import tls_identity
    from peer.transport.grpc_transport import GossipServicer, add_to_server, server_options
    from peer.transport.tls_front import TlsFront, server_context

    async def echo(packet: bytearray, _peer: str) -> bytearray:
        return packet

    refused: list[str] = []
    identity = tls_identity.load_identity(files["ca"], files["server_cert"], files["server_key"])
    front = TlsFront(server_context(identity), on_refused=lambda r: refused.append(r.reason))
    server = grpc.aio.server(options=server_options())
    add_to_server(GossipServicer(echo, 1 << 30, lambda e: refused.append(e.reason)), server)
    plain_port = server.add_insecure_port("127.0.0.1:0")
    server.add_insecure_port(front.backend_target)
    # For reference only: gRPC's own mutual TLS, which refuses callers invisibly to Python.
    native = grpc.ssl_server_credentials([(identity.key_pem, identity.cert_pem)], root_certificates=identity.ca_pem,
                                         require_client_auth=True)
    native_port = server.add_secure_port("127.0.0.1:0", native)
    await server.start()
    tls_port = await front.bind("127.0.0.1", 0)
    front.start()
    conn.send((plain_port, tls_port, native_port))
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, conn.recv)  # the initiator says when it is done
    cpu = os.times()
    conn.send({"refused": refused, "accepted": front.accepted, "cpu_s": cpu.user + cpu.system})
    await server.stop(1)
    await front.close()


# --- the initiating process -------------------------------------------------------------------

def _initiating(size: Size, files: dict[str, Path], ports: tuple[int, int, int], answering_pid: int,
                conn: Any) -> None:
    import uvloop

    conn.send(uvloop.run(_measure(size, files, ports, _Clock(answering_pid))))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Clock:
    """Wall time of each measured call, and the CPU time both processes spent on it: on
    shared cores the wall time moves with other work, the CPU time much less."""

    def __init__(self, answering_pid: int) -> None:
        self.pids = (os.getpid(), answering_pid)

    async def timed(self, call: Callable[[], Any], cpu: list[float]) -> float:
        cpu_before = sum(_cpu_seconds(p) for p in self.pids)
        started = time.perf_counter()
        await call()
        elapsed = time.perf_counter() - started
        cpu.append(sum(_cpu_seconds(p) for p in self.pids) - cpu_before)
        return elapsed


async def _measure(size: Size, files: dict[str, Path], ports: tuple[int, int, int],
                   clock: _Clock) -> dict[str, dict[str, list[float]]]:
    import numpy as np

    from peer.transport import tls_identity
    from peer.transport.channels import channel_credentials
    from peer.transport.grpc_transport import GossipClient

    identity = tls_identity.load_identity(files["ca"], files["client_cert"], files["client_key"])
    tls = channel_credentials(identity)
    credentials = {"plaintext": None, "tls": tls, "grpc_tls": tls}
    addresses = {"plaintext": f"127.0.0.1:{ports[0]}", "tls": f"127.0.0.1:{ports[1]}",
                 "grpc_tls": f"127.0.0.1:{ports[2]}"}
    rng = np.random.default_rng(SEED)
    dense = rng.integers(0, 256, size.dense_bytes, dtype=np.uint8).tobytes()
    small = rng.integers(0, 256, SMALL_BYTES, dtype=np.uint8).tobytes()
    clients = {mode: GossipClient(1 << 30, credentials[mode]) for mode in credentials}
    out: dict[str, dict[str, list[float]]] = {
        mode: {"dense_s": [], "dense_cpu_s": [], "small_s": [], "small_cpu_s": [], "connect_s": [], "connect_cpu_s": []}
        for mode in credentials}

    async def exchange(mode: str, packet: bytes, client: GossipClient | None = None) -> None:
        reply = await (client or clients[mode]).exchange(addresses[mode], packet, timeout=300.0)
        if len(reply) != len(packet):
            raise RuntimeError(f"{mode}: answer of {len(reply)} bytes to a packet of {len(packet)}")

    for mode in credentials:  # warm both channels: connection set-up is measured on its own below
        await exchange(mode, small)
        await exchange(mode, dense)
    for _ in range(size.dense_reps):
        for mode in credentials:
            out[mode]["dense_s"].append(await clock.timed(lambda m=mode: exchange(m, dense), out[mode]["dense_cpu_s"]))
    for _ in range(size.small_reps):
        for mode in credentials:
            async def burst(m: str = mode) -> None:
                for _ in range(size.small_exchanges):
                    await exchange(m, small)
            out[mode]["small_s"].append(await clock.timed(burst, out[mode]["small_cpu_s"]))
    for _ in range(size.connect_reps):
        for mode, creds in credentials.items():
            fresh = GossipClient(1 << 30, creds)
            out[mode]["connect_s"].append(await clock.timed(lambda m=mode, c=fresh: exchange(m, small, c),
                                                            out[mode]["connect_cpu_s"]))
            await fresh.close()
    for client in clients.values():
        await client.close()
    return out


# --- summary ---------------------------------------------------------------------------------

def summarise(size: Size, raw: dict[str, Any], server: dict[str, Any], load: tuple[float, float]) -> dict[str, Any]:
    result: dict[str, Any] = {"dense_packet_bytes": size.dense_bytes, "small_packet_bytes": SMALL_BYTES,
                              "small_exchanges_per_rep": size.small_exchanges, "cpus": os.cpu_count(),
                              "loadavg_1min_before": round(load[0], 2), "loadavg_1min_after": round(load[1], 2)}
    for mode in MODES:
        r = raw[mode]
        dense_s = statistics.median(r["dense_s"])
        result[mode] = {
            "dense_mb_per_s": round(2 * size.dense_bytes / dense_s / MB, 1),
            "dense_exchange_s": round(dense_s, 4),
            # CPU seconds of both processes per GB moved (both directions counted).
            "dense_cpu_s_per_gb": round(statistics.median(r["dense_cpu_s"]) / (2 * size.dense_bytes / 1e9), 3),
            "small_exchanges_per_s": round(size.small_exchanges / statistics.median(r["small_s"]), 1),
            "small_cpu_us_per_exchange": round(1e6 * statistics.median(r["small_cpu_s"]) / size.small_exchanges, 1),
            "connect_ms": round(1000 * statistics.median(r["connect_s"]), 2),
            "dense_s_all": [round(t, 4) for t in r["dense_s"]],
        }
    p, t = result["plaintext"], result["tls"]
    result["tls_over_plaintext"] = {
        "dense_throughput": round(t["dense_mb_per_s"] / p["dense_mb_per_s"], 3),
        "dense_cpu": round(t["dense_cpu_s_per_gb"] / p["dense_cpu_s_per_gb"], 3),
        "small_rate": round(t["small_exchanges_per_s"] / p["small_exchanges_per_s"], 3),
        "small_cpu": round(t["small_cpu_us_per_exchange"] / p["small_cpu_us_per_exchange"], 3),
        "connect_time": round(t["connect_ms"] / p["connect_ms"], 2),
    }
    g = result["grpc_tls"]
    result["front_over_grpc_tls"] = {
        "dense_throughput": round(t["dense_mb_per_s"] / g["dense_mb_per_s"], 3),
        "small_rate": round(t["small_exchanges_per_s"] / g["small_exchanges_per_s"], 3),
    }
    result["answering_process"] = server
    return result


def print_table(r: dict[str, Any]) -> None:
    p, t, g, ratio = r["plaintext"], r["tls"], r["grpc_tls"], r["tls_over_plaintext"]
    print(f"gossip Exchange over loopback, plaintext vs mutual TLS ({r['cpus']} CPUs, load average "
          f"{r['loadavg_1min_before']} -> {r['loadavg_1min_after']})")
    print(f"{'':34} {'plaintext':>10} {'mTLS front':>10} {'TLS/plain':>10} {'(gRPC mTLS)':>12}")
    # gRPC's own TLS server is a reference only: it refuses callers invisibly, so peers do not use it.
    rows = [(f"dense {r['dense_packet_bytes'] // 1_000_000} MB each way, MB/s", "dense_mb_per_s", "dense_throughput"),
            ("  CPU s per GB (both processes)", "dense_cpu_s_per_gb", "dense_cpu"),
            ("small 16 KiB exchanges/s", "small_exchanges_per_s", "small_rate"),
            ("  CPU us per exchange", "small_cpu_us_per_exchange", "small_cpu"),
            ("new connection + exchange, ms", "connect_ms", "connect_time")]
    for label, key, ratio_key in rows:
        print(f"{label:34} {p[key]:>10.1f} {t[key]:>10.1f} {ratio[ratio_key]:>10.3f} {g[key]:>12.1f}")
    s = r["answering_process"]
    print(f"answering process: {s['accepted']} TLS connections accepted, refused: {s['refused'] or 'none'}")


def run(size: Size) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="hearsay-bench-tls-") as tmp:
        files = _make_certs(Path(tmp))
        srv_parent, srv_child = ctx.Pipe()
        cli_parent, cli_child = ctx.Pipe()
        answering = ctx.Process(target=_answering, args=(files, srv_child))
        answering.start()
        try:
            ports = srv_parent.recv()
            initiating = ctx.Process(target=_initiating, args=(size, files, ports, answering.pid, cli_child))
            initiating.start()
            raw = cli_parent.recv()
            initiating.join()
            srv_parent.send("done")
            server = srv_parent.recv()
            answering.join()
        finally:
            if answering.is_alive():
                answering.kill()
    return summarise(size, raw, server, (load_before, os.getloadavg()[0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~20 MB packet and fewer repetitions")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    result = run(QUICK if args.quick else FULL)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
