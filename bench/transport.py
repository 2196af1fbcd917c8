"""Transport throughput and memory: a raw TCP socket next to the real gRPC exchange.

    python -m bench.transport [--quick] [--json FILE]

Everything runs in one invocation, in separate processes (``spawn``, one torch
thread each, everything seeded), on loopback:

- ``raw``: a sender process writes a buffer the size of the model (25M fp32
  parameters, ~100 MB; ``--quick``: ~20 MB) in 4 MiB ``sendall`` chunks; a receiver
  process ``recv_into``s a preallocated buffer and acknowledges with one byte. The
  sender's clock runs from its first byte to the acknowledgement.
- ``grpc``: the same bytes through a bare ``grpc.aio`` stream between two processes
  (ready-made 1 MiB ``bytes`` messages, identity serialisers, the daemon's server and
  channel options): what the library itself can move, the ceiling of any gRPC transport.
- ``keyframe``: two *peer processes*, each a real ``peer.runtime.trainer.Trainer`` around a
  ~25M-parameter MLP and a real ``peer.runtime.gossip.GossipEngine`` (codec ``topk_int8``,
  ratio 0.01, fp32 keyframes, ``vc`` merge). The answering peer serves
  ``GossipServicer`` registered with ``grpc_transport.add_to_server`` on a server
  with ``grpc_transport.server_options()`` (``--pb-server``: a plain
  ``grpc.aio.server()`` and the generated ``add_GossipServicer_to_server``, as
  ``peer.runtime.node`` registers it before it adopts those); the initiating peer calls
  ``GossipEngine.exchange_with`` through ``GossipClient.exchange``. So the whole
  data path is the daemon's: ``trainer.state()``, ``Sender.prepare``,
  ``encode_packet``, ``to_frames``, gRPC, ``read_packet``, ``decode_packet``,
  ``Receiver.accept``, the merge. A keyframe is forced each time by invalidating the
  initiator's link and asking for a keyframe (``need_keyframe``), so both
  directions carry a dense fp32 keyframe. Throughput counts the packet bytes of
  both directions over the exchange time as the caller waits for it *minus the
  caller's merge* (merging is not transfer; the merges' time is reported on its own,
  and the end-to-end figure too). The answering peer merges after its reply, off the
  caller's path (so its merge is neither in that time nor taken out of it); encoding,
  framing, reassembly, decoding and accepting are all inside it. A caller on the same
  machine, as here on loopback, is answered once its request is whole (the two peers
  share the cores: peer/transport/answering.py); across a link (``links`` below) the
  reply streams while the request arrives. ``keyframes_answered_early`` counts the
  exchanges answered that way (0 here). The first repetition opens the channel and is
  left out, as the bare stream's first is.
  Both peers run under uvloop, as ``hearsay run`` does.
  ``keyframe_over_bare_grpc`` is that figure over ``bare_grpc_mbps`` (the ``grpc``
  stream above: one direction's bytes over its time).
- ``keyframe_over_bare_grpc_training``: the same keyframe exchanges with the answering
  peer's real ``Trainer`` thread training (``Trainer.start``), as in real use: it holds
  the GIL between torch ops and the model lock during each step, which ``Trainer.state``
  waits for. The control ``..._training_elsewhere``: the same training in a third process,
  which takes the same CPU but shares neither the GIL nor the lock.
- ``..._interleaved``: each keyframe exchange is preceded by a bare stream of the same
  bytes between the two peer processes themselves (``/bench.Bare/Sink`` registered on
  the answering peer's server); the median of the pairwise ratios, which cancels load
  that drifts during the run. ``..._cpu_s_per_mb``: CPU seconds of both peer
  processes (``/proc/<pid>/task/*/schedstat``) per MB moved, bare stream vs keyframe
  exchange less its merges' CPU: the work, which the machine's load stretches less.
- ``delta``: on the same link after the keyframes, a stream of push-pull exchanges
  of 1 %-top-k int8 deltas, end to end (encode, transfer, decode, apply, merge):
  packet MB/s of both directions and exchanges/s.
- ``peak RSS``: the answering peer's VmHWM (``/proc/<pid>/status``) during the
  keyframe exchanges (the high-water mark is reset through ``clear_refs`` once the
  peer is set up). ``peak_rss_over_model`` is (VmHWM − the process's RSS after
  importing the interpreter, numpy, torch and grpc, before the model exists) over
  the fp32 model size: it counts the model itself, the replicas and every buffer of
  the exchange (the baseline process has also run one SGD step of a tiny model, so the
  code torch loads on first use is in it). The gross VmHWM over the model size is reported next to it.
  ``exchange_added_rss_over_model``: the high-water mark is reset again after the first
  keyframe exchange, when the link's steady state exists (a sender replica and a
  receiver copy); the peak over the later keyframe exchanges and the delta stream, over
  the RSS at that point, over the model size: what one push-pull adds over a running peer.

- ``links`` (bench/links.py; root only): two peers across a veth pair shaped with
  ``tc ... tbf`` at 1 Gbit/s and 100 Mbit/s: the dense keyframe's throughput as a
  fraction of the link rate, and the delta stream's exchanges per second.
  ``--links only`` runs just this section, ``--links no`` skips it.

MB are 10^6 bytes. Times are medians over the repetitions.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from functools import partial
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

MB = 1e6
SEED = 1234
RAW_CHUNK = 4 << 20


@dataclass(frozen=True)
class Size:
    hidden: int      # width of the MLP's hidden layers
    layers: int      # hidden-to-hidden layers
    raw_reps: int
    keyframe_reps: int
    deltas: int


# Medians over 7 bare streams and 5 counted keyframe exchanges (the first of 6 opens the channel):
# with 3 of each, the quick run's bare stream alone moved 613-1943 MB/s between runs on one
# machine (bench/RESULTS.md, "Issue 12, session 7"), and the ratio with it.
FULL = Size(hidden=2236, layers=5, raw_reps=7, keyframe_reps=6, deltas=20)   # 25.18M parameters
QUICK = Size(hidden=1000, layers=5, raw_reps=7, keyframe_reps=6, deltas=8)   # 5.08M parameters


# --- /proc -----------------------------------------------------------------------------------

def proc_kb(field: str, pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """CPU time of every live thread of ``pid`` (``/proc/<pid>/task/*/schedstat``, ns): the
    work a step cost, which the machine's load stretches far less than its wall time."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total / 1e9


def reset_hwm() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _one_thread() -> None:
    import torch
    torch.set_num_threads(1)
    torch.manual_seed(SEED)


# --- raw socket ------------------------------------------------------------------------------

def _raw_receiver(size: int, reps: int, conn: Any) -> None:
    import numpy as np
    buf = np.empty(size, np.uint8)  # preallocated and touched, as a receiver would hold it
    buf[:] = 0
    view = memoryview(buf).cast("B")
    with socket.create_server(("127.0.0.1", 0)) as srv:
        conn.send(srv.getsockname()[1])
        s, _ = srv.accept()
        with s:
            for _ in range(reps):
                got = 0
                while got < size:
                    n = s.recv_into(view[got:], min(size - got, RAW_CHUNK))
                    if n == 0:
                        raise ConnectionError("sender closed early")
                    got += n
                s.sendall(b"k")


def _raw_sender(size: int, reps: int, port: int, conn: Any) -> None:
    import numpy as np
    data = np.random.default_rng(SEED).integers(0, 256, size, dtype=np.uint8)
    view = memoryview(data).cast("B")
    times = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        for _ in range(reps):
            started = time.perf_counter()
            for start in range(0, size, RAW_CHUNK):
                s.sendall(view[start:start + RAW_CHUNK])
            if s.recv(1) != b"k":
                raise ConnectionError("no acknowledgement")
            times.append(time.perf_counter() - started)
    conn.send(times)


def _sender_receiver(ctx: Any, receiver: Any, receiver_args: tuple, sender: Any, sender_args: tuple,
                     stop_receiver: bool = False) -> list[float]:
    """Run ``receiver`` (which sends back its port) and ``sender`` (which sends back its
    times) in two processes; the sender's times are the result."""
    rx_parent, rx_child = ctx.Pipe()
    tx_parent, tx_child = ctx.Pipe()
    rx = ctx.Process(target=receiver, args=(*receiver_args, rx_child))
    rx.start()
    port = rx_parent.recv()
    tx = ctx.Process(target=sender, args=(*sender_args, port, tx_child))
    tx.start()
    times = tx_parent.recv()
    tx.join()
    if stop_receiver:
        rx_parent.send("stop")
    rx.join()
    return times


def bench_raw(ctx: Any, size: int, reps: int) -> list[float]:
    return _sender_receiver(ctx, _raw_receiver, (size, reps), _raw_sender, (size, reps))


# --- bare gRPC: the ceiling of the library itself --------------------------------------------

def _identity(b: bytes) -> bytes:
    return b


def add_bare_sink(server: Any) -> None:
    """Register ``/bench.Bare/Sink`` on ``server``: a stream whose messages (raw bytes, identity
    deserialiser) are read and dropped, answered with one byte."""
    import grpc

    async def sink(frames: Any, context: Any) -> Any:
        async for _ in frames:
            pass
        yield b"k"

    handlers = {"Sink": grpc.stream_stream_rpc_method_handler(sink, request_deserializer=_identity,
                                                              response_serializer=_identity)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Bare", handlers),))


async def bare_stream(channel: Any, nbytes: int) -> float:
    """Seconds to stream ``nbytes`` as ready-made 1 MiB messages to ``add_bare_sink``'s method
    and read its answer: the bare library, no serialisation work at all."""
    from protocol.wire import FRAME_BYTES

    chunk = bytes(FRAME_BYTES)
    sink = channel.stream_stream("/bench.Bare/Sink", request_serializer=_identity, response_deserializer=_identity)
    started = time.perf_counter()
    async for _ in sink(iter([chunk] * -(-nbytes // FRAME_BYTES))):
        pass
    return time.perf_counter() - started


def _grpc_receiver(conn: Any) -> None:
    """A grpc.aio server whose one streaming method counts what arrives and answers once."""
    import asyncio

    import grpc
    import uvloop

    from peer.runtime.memory import configure_allocator
    from peer.transport.grpc_transport import server_options

    configure_allocator()  # the peers' process policy here too: the ceiling is gRPC's, not malloc's

    async def serve() -> None:
        server = grpc.aio.server(options=server_options())
        add_bare_sink(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        conn.send(port)
        await asyncio.to_thread(conn.recv)  # "stop", waited for off the event loop
        await server.stop(None)

    uvloop.run(serve())


def _grpc_sender(size: int, reps: int, port: int, conn: Any) -> None:
    """Streams ``size`` bytes as ready-made 1 MiB messages (no serialisation work at all)."""
    import grpc
    import uvloop

    from peer.runtime.memory import configure_allocator
    from peer.transport.channels import CHANNEL_OPTIONS

    configure_allocator()  # as in the peers (and _grpc_receiver)

    async def send() -> list[float]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
            # The first repetition also opens the connection: not counted.
            return [await bare_stream(channel, size) for _ in range(reps + 1)][1:]

    conn.send(uvloop.run(send()))


def bench_grpc(ctx: Any, size: int, reps: int) -> list[float]:
    return _sender_receiver(ctx, _grpc_receiver, (), _grpc_sender, (size, reps), stop_receiver=True)


# --- peer processes ----------------------------------------------------------------------------

def _build_engine(size: Size, seed: int, address: str) -> Any:
    """The answering engine of the benchmark: the tests' exchange peer (a synthetic MLP of
    ``size``) sending top-k int8 deltas, with a timeout no exchange here comes near."""
    from tests.exchange_peer import build_engine

    return build_engine(size.hidden, size.layers, seed, address, codec="topk_int8", timeout=120.0)


def _load_training_code() -> None:
    """Run one SGD step of a tiny model, so the baseline includes the code torch loads on
    first use (the optimiser pulls in ~70 MB of modules), not only what imports load:
    what is left above the baseline is then memory that grows with the model."""
    import torch
    from torch import nn

    tiny = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(tiny.parameters(), lr=0.1, momentum=0.9)
    nn.functional.cross_entropy(tiny(torch.zeros(3, 4)), torch.zeros(3, dtype=torch.long)).backward()
    optimizer.step()


def _instrument(engine: Any, timings: dict[str, list[float]]) -> None:
    """Time the engine's encode, decode and merge steps (wrapping the bound methods)."""
    for owner, name in ((engine, "own_packet_parts"), (engine, "decode"), (engine, "merge"),
                        (engine.trainer, "state")):  # state: its wait for the trainer's lock included
        inner = getattr(owner, name)

        def timed(*args: Any, _inner: Any = inner, _name: str = name) -> Any:
            started, cpu = time.perf_counter(), time.thread_time()  # these run in one thread
            try:
                return _inner(*args)
            finally:
                timings[_name].append(time.perf_counter() - started)
                timings[_name + "_cpu"].append(time.thread_time() - cpu)
        setattr(owner, name, timed)


def _answering_peer(size: Size, pb_server: bool, conn: Any) -> None:
    _one_thread()
    import asyncio

    import grpc
    import uvloop

    from hearsay.v1 import gossip_pb2_grpc
    from peer.runtime.keyframe_room import make_room_inbound
    from peer.transport import grpc_transport
    from peer.transport.grpc_transport import GossipServicer

    import peer.runtime.gossip  # noqa: F401 - in the baseline: interpreter, numpy, torch, grpc, hearsay
    import peer.runtime.trainer  # noqa: F401

    from peer.runtime.memory import configure_allocator

    configure_allocator()  # as ``hearsay run`` does
    _load_training_code()
    baseline = proc_kb("VmRSS")

    async def serve() -> None:
        server = grpc.aio.server() if pb_server else grpc.aio.server(options=grpc_transport.server_options())
        port = server.add_insecure_port("127.0.0.1:0")
        address = f"127.0.0.1:{port}"
        engine = _build_engine(size, SEED + 1, address)
        timings: dict[str, list[float]] = defaultdict(list)
        _instrument(engine, timings)
        # As peer.runtime.node wires it: the engine answers in steps, its reply streamed while the
        # request arrives, its merge after the reply.
        servicer = GossipServicer(engine, engine.limits.max_packet_bytes, engine.count_rejected,
                                  on_head=partial(make_room_inbound, engine))

        async def settled() -> float:
            """Seconds until the engine has settled its side (merged after its reply)."""
            started = time.perf_counter()
            async with asyncio.timeout(60):
                while engine.in_flight:
                    await asyncio.sleep(0.001)
            return time.perf_counter() - started
        if pb_server:  # how peer.runtime.node registers it today
            gossip_pb2_grpc.add_GossipServicer_to_server(servicer, server)
        else:
            grpc_transport.add_to_server(servicer, server)
        add_bare_sink(server)  # the bare stream, interleaved with the exchanges
        await server.start()
        loop = asyncio.get_running_loop()
        conn.send({"address": address, "baseline_rss": baseline, "setup_rss": proc_kb("VmRSS")})
        while True:
            cmd = await loop.run_in_executor(None, conn.recv)
            if cmd == "reset":
                timings.clear()
                reset_hwm()
                conn.send(proc_kb("VmRSS"))
            elif cmd == "settle":
                conn.send(await settled())
            elif cmd == "report":
                await settled()
                conn.send({"answered_early": servicer.answered_early, "hwm": proc_kb("VmHWM"), "rss": proc_kb("VmRSS"), "timings": dict(timings),
                           "rejected": engine.stats.rejected, "steps": engine.trainer.stats().steps})
                timings.clear()
            elif cmd == "train":  # the real trainer thread, as a running peer has it
                engine.trainer.start()
                conn.send(engine.trainer.stats().steps)
            elif cmd == "untrain":
                await asyncio.to_thread(engine.trainer.stop)
                conn.send(engine.trainer.stats().steps)
            elif cmd == "stop":
                await server.stop(None)
                conn.send("stopped")
                return

    uvloop.run(serve())  # the daemon's event loop (peer.runtime.node)


def _training_process(size: Size, stop: Any) -> None:
    """A third process training the same model as a peer's trainer thread does: the CPU that
    training takes, without sharing the answering peer's GIL or its trainer's lock."""
    _one_thread()
    engine = _build_engine(size, SEED + 3, "127.0.0.1:1")
    engine.trainer.start()
    stop.wait()
    engine.trainer.stop()


def _initiating_peer(size: Size, server_address: str, conn: Any) -> None:
    _one_thread()
    from peer.runtime.memory import configure_allocator

    configure_allocator()  # as ``hearsay run`` does
    import asyncio

    import grpc
    import uvloop

    from peer.runtime.keyframe_room import make_room_for_reply
    from peer.transport.channels import CHANNEL_OPTIONS
    from peer.transport.grpc_transport import GossipClient
    from protocol.wire import FRAME_BYTES

    async def run() -> None:
        engine = _build_engine(size, SEED + 2, "127.0.0.1:1")
        engine.membership.add_seed(server_address)
        member = engine.membership.get(server_address)
        client = GossipClient(max_packet_bytes=engine.limits.max_packet_bytes)
        client.on_reply_head = partial(make_room_for_reply, engine)  # as peer.runtime.node wires it
        # A channel of its own for the bare stream, with the daemon's options.
        bare = grpc.aio.insecure_channel(server_address, options=CHANNEL_OPTIONS)
        await bare_stream(bare, FRAME_BYTES)  # opens the connection
        timings: dict[str, list[float]] = defaultdict(list)
        _instrument(engine, timings)

        async def exchange(address: str, packet: bytes, timeout: float) -> bytes:
            started = time.perf_counter()
            try:
                return await client.exchange(address, packet, timeout)
            finally:
                timings["exchange_call"].append(time.perf_counter() - started)

        async def one() -> dict[str, Any]:
            link = engine.link(server_address)
            sent, received = link.bytes_sent, link.bytes_received
            timings.clear()
            started = time.perf_counter()
            merged = await engine.exchange_with(member, exchange)
            elapsed = time.perf_counter() - started
            if not merged:
                raise RuntimeError(f"exchange did not merge: {engine.stats}")
            return {"seconds": elapsed, "sent": link.bytes_sent - sent, "received": link.bytes_received - received,
                    "timings": dict(timings)}

        loop = asyncio.get_running_loop()
        conn.send("ready")
        while True:
            cmd = await loop.run_in_executor(None, conn.recv)
            if cmd == "bare":
                conn.send(await bare_stream(bare, model_bytes(size)))
            elif cmd == "keyframe":
                engine.sender.invalidate(server_address)
                engine._want_keyframe.add(server_address)  # the partner answers with a keyframe too
                before = engine.stats.keyframes_sent
                result = await one()
                result["keyframe"] = engine.stats.keyframes_sent == before + 1
                conn.send(result)
            elif cmd == "delta":
                before = engine.stats.keyframes_sent
                result = await one()
                result["keyframe"] = engine.stats.keyframes_sent != before
                conn.send(result)
            elif cmd == "stop":
                await bare.close()
                await client.close()
                conn.send("stopped")
                return

    uvloop.run(run())


def stop_peers(parents: tuple[Any, ...], processes: tuple[Any, ...]) -> None:
    """Ask each peer process to stop through its pipe, wait for its answer, then join it."""
    for parent in parents:
        parent.send("stop")
        parent.recv()
    for process in processes:
        process.join()


def bench_peers(ctx: Any, size: Size, pb_server: bool) -> dict[str, Any]:
    srv_parent, srv_child = ctx.Pipe()
    cli_parent, cli_child = ctx.Pipe()
    server = ctx.Process(target=_answering_peer, args=(size, pb_server, srv_child))
    server.start()
    hello = srv_parent.recv()
    client = ctx.Process(target=_initiating_peer, args=(size, hello["address"], cli_child))
    client.start()
    assert cli_parent.recv() == "ready"
    pids = (client.pid, server.pid)

    def timed(cmd: str) -> Any:
        """Run ``cmd`` on the initiating peer; its answer, and the CPU seconds both peers spent."""
        before = [cpu_seconds(pid) for pid in pids]
        cli_parent.send(cmd)
        answer = cli_parent.recv()
        return answer, sum(cpu_seconds(pid) - b for pid, b in zip(pids, before))

    try:
        srv_parent.send("reset")
        reset_rss = srv_parent.recv()
        keyframes = []
        steady_rss = None
        for i in range(size.keyframe_reps):
            bare, bare_cpu = timed("bare")
            keyframe, cpu = timed("keyframe")
            keyframes.append({**keyframe, "bare_seconds": bare, "bare_cpu": bare_cpu, "cpu": cpu})
            srv_parent.send("report")
            keyframes[-1]["server"] = srv_parent.recv()
            if i == 0:
                # The link's steady state now exists (a sender replica and a receiver copy on
                # each side): what the later exchanges add on top of it is the exchange's cost.
                srv_parent.send("reset")
                steady_rss = srv_parent.recv()
        deltas = []
        for _ in range(size.deltas):
            cli_parent.send("delta")
            deltas.append(cli_parent.recv())
            # The next exchange on this link waits for the partner's merge (it holds the link
            # until then): that wait is part of the stream's pace.
            srv_parent.send("settle")
            deltas[-1]["seconds"] += srv_parent.recv()
        srv_parent.send("report")
        after_deltas = srv_parent.recv()
        # The same keyframe exchanges with the answering peer's trainer thread training.
        srv_parent.send("train")
        steps_before = srv_parent.recv()

        def paired_keyframes() -> list[dict[str, Any]]:
            """keyframe_reps keyframe exchanges, each right after a bare stream, with the server's report."""
            runs = []
            for _ in range(size.keyframe_reps):
                bare, bare_cpu = timed("bare")
                keyframe, cpu = timed("keyframe")
                srv_parent.send("report")
                runs.append({**keyframe, "bare_seconds": bare, "bare_cpu": bare_cpu, "cpu": cpu,
                             "server": srv_parent.recv()})
            return runs

        training = paired_keyframes()
        srv_parent.send("untrain")
        training_steps = srv_parent.recv() - steps_before
        # The control: the same training in a process of its own (CPU taken, no GIL shared).
        stop = ctx.Event()
        trainer = ctx.Process(target=_training_process, args=(size, stop))
        trainer.start()
        elsewhere: list[dict[str, Any]] = []
        try:
            elsewhere = paired_keyframes()
        finally:
            stop.set()
            trainer.join()
    finally:
        stop_peers((cli_parent, srv_parent), (client, server))
    return {"hello": hello, "reset_rss": reset_rss, "keyframes": keyframes, "deltas": deltas,
            "after_deltas": after_deltas, "steady_rss": steady_rss, "training": training,
            "training_steps": training_steps, "training_elsewhere": elsewhere}


# --- report ------------------------------------------------------------------------------------

def model_bytes(size: Size) -> int:
    h = size.hidden
    params = 64 * h + h + size.layers * (h * h + h) + h * 10 + 10
    return 4 * params


def summarise(size: Size, raw_times: list[float], grpc_times: list[float], peers: dict[str, Any]) -> dict[str, Any]:
    nbytes = model_bytes(size)
    raw_mbps = nbytes / statistics.median(raw_times) / MB
    grpc_mbps = (-(-nbytes // (1 << 20)) << 20) / statistics.median(grpc_times) / MB
    kf = peers["keyframes"]
    if not all(k["keyframe"] for k in kf):
        raise RuntimeError("a keyframe exchange did not send a keyframe")

    def med(values: list[float]) -> float:
        return statistics.median(values)

    def t(rep: dict[str, Any], side: str, key: str) -> float:
        timings = rep["timings"] if side == "client" else rep["server"]["timings"]
        return sum(timings.get(key, [0.0]))

    def transfer_seconds(rep: dict[str, Any]) -> float:
        """The push-pull's time as its caller waits for it, less the caller's own merge. The
        answering peer merges after its reply has gone (peer/runtime/inbound.py), off the
        caller's path: its merge is not in this time and is not taken out of it (it may still
        slow the caller's decode and merge, sharing the CPU)."""
        return rep["seconds"] - t(rep, "client", "merge")

    def keyframe_mbps(reps: list[dict[str, Any]]) -> float:
        """Packet bytes of both directions over the push-pull's transfer time. The answering
        peer streams its reply while the request still arrives (never ahead of the request's
        bytes, its last frame once the request is taken), so both directions share the time:
        bytes moved per second of exchange, set against the bare stream's one direction over
        its own time. The first repetition opens the channel (and earns the trust an early
        answer needs) and is left out, as the bare stream's first is."""
        timed = reps[1:] or reps
        sent = med([k["sent"] + k["received"] for k in timed])
        seconds = med([transfer_seconds(k) for k in timed])
        return sent / seconds / MB

    bare_bytes = -(-nbytes // (1 << 20)) << 20

    def interleaved(reps: list[dict[str, Any]]) -> tuple[float, float]:
        """The bare stream run between the same two peer processes just before each keyframe
        exchange: its MB/s (median), and the median over repetitions of keyframe MB/s over the
        bare MB/s measured next to it (load that drifts during the run cancels out pairwise)."""
        timed = reps[1:] or reps
        bare = [bare_bytes / k["bare_seconds"] / MB for k in timed]
        kfs = [(k["sent"] + k["received"]) / transfer_seconds(k) / MB for k in timed]
        return med(bare), med([a / b for a, b in zip(kfs, bare)])

    kf_bytes = med([k["sent"] + k["received"] for k in kf])
    merges = med([t(k, "client", "merge") + t(k, "server", "merge") for k in kf])
    total = med([k["seconds"] for k in kf])
    kf_mbps = keyframe_mbps(kf)
    training = peers.get("training") or []
    if not all(k["keyframe"] for k in training):
        raise RuntimeError("a keyframe exchange with the trainer running did not send a keyframe")
    kf_training_mbps = keyframe_mbps(training) if training else float("nan")
    elsewhere = peers.get("training_elsewhere") or []
    def phases_of(reps: list[dict[str, Any]]) -> dict[str, float]:
        timed = reps[1:] or reps
        return {
            "client encode (state+prepare+encode_packet_parts)": med([t(k, "client", "own_packet_parts")
                                                                      for k in timed]),
            "server decode_packet": med([t(k, "server", "decode") for k in timed]),
            "server encode (state+prepare+encode_packet_parts)": med([t(k, "server", "own_packet_parts")
                                                                      for k in timed]),
            "server merge": med([t(k, "server", "merge") for k in timed]),
            "client decode_packet": med([t(k, "client", "decode") for k in timed]),
            "client merge": med([t(k, "client", "merge") for k in timed]),
            "exchange call (both ways at once; server decode, accept in)": med([t(k, "client", "exchange_call")
                                                                               for k in timed]),
            "server trainer.state (its lock wait in)": med([t(k, "server", "state") for k in timed]),
        }

    phases = phases_of(kf)
    ds = [d for d in peers["deltas"] if not d["keyframe"]]
    delta_seconds = sum(d["seconds"] for d in ds)
    delta_bytes = sum(d["sent"] + d["received"] for d in ds)
    hello = peers["hello"]
    # The high-water mark was reset after the first keyframe exchange (which made the link's
    # replicas): the later keyframes and the deltas ran on top of the link's steady state.
    steady_hwm = max([k["server"]["hwm"] for k in kf[1:]] + [peers["after_deltas"]["hwm"]])
    hwm = max(kf[0]["server"]["hwm"], steady_hwm)
    baseline = hello["baseline_rss"]
    return {
        "raw_mbps": raw_mbps,
        "keyframe_mbps": kf_mbps,
        "keyframe_over_raw": kf_mbps / raw_mbps,
        # The library's own ceiling: ready-made 1 MiB messages through grpc.aio, no work.
        "grpc_mbps": grpc_mbps,
        "grpc_over_raw": grpc_mbps / raw_mbps,
        "keyframe_over_grpc": kf_mbps / grpc_mbps,
        # Issue 12: the same keyframe exchanges, idle and with the answering peer's trainer thread
        # training, each over the bare stream of the same run.
        "bare_grpc_mbps": grpc_mbps,
        "keyframe_over_bare_grpc": kf_mbps / grpc_mbps,
        "keyframe_training_mbps": kf_training_mbps,
        "keyframe_over_bare_grpc_training": kf_training_mbps / grpc_mbps,
        "training_steps_during_keyframes": peers.get("training_steps", 0),
        # The same ratios against a bare stream between the two peer processes, run just before
        # each keyframe exchange (pairwise, so drifting load cancels).
        "bare_grpc_interleaved_mbps": interleaved(kf)[0],
        "keyframe_over_bare_grpc_interleaved": interleaved(kf)[1],
        "bare_grpc_interleaved_training_mbps": interleaved(training)[0] if training else float("nan"),
        "keyframe_over_bare_grpc_training_interleaved": interleaved(training)[1] if training else float("nan"),
        # The control: the same training in a third process (its CPU, not the answering peer's GIL or lock).
        "keyframe_over_bare_grpc_training_elsewhere": keyframe_mbps(elsewhere) / grpc_mbps if elsewhere
        else float("nan"),
        "keyframe_over_bare_grpc_training_elsewhere_interleaved": interleaved(elsewhere)[1] if elsewhere
        else float("nan"),
        # CPU seconds of both peer processes per MB moved, bare stream vs keyframe exchange less
        # its two merges (their threads' CPU time), idle peer.
        "bare_grpc_cpu_s_per_mb": med([k["bare_cpu"] / (bare_bytes / MB) for k in kf[1:] or kf]),
        "keyframe_cpu_s_per_mb": med([(k["cpu"] - t(k, "client", "merge_cpu") - t(k, "server", "merge_cpu"))
                                      / ((k["sent"] + k["received"]) / MB) for k in kf[1:] or kf]),
        "keyframe_merge_cpu_s_per_mb": med([(t(k, "client", "merge_cpu") + t(k, "server", "merge_cpu"))
                                            / ((k["sent"] + k["received"]) / MB) for k in kf[1:] or kf]),
        "delta_mbps": delta_bytes / delta_seconds / MB if delta_seconds else 0.0,
        "peak_rss_over_model": (hwm - baseline) / nbytes,
        # --- context ---
        "model_bytes": nbytes,
        "keyframe_packet_bytes": kf_bytes / 2,
        "keyframe_exchange_seconds": total,
        "keyframe_merge_seconds": merges,
        # Keyframe exchanges (idle, after the first) the answering peer answered while the request arrived.
        "keyframes_answered_early": kf[-1]["server"]["answered_early"] - kf[0]["server"]["answered_early"],
        "keyframes_timed": len(kf) - 1,
        "keyframe_exchange_mbps_with_merges": kf_bytes / total / MB,
        "keyframe_phases_seconds": phases,
        "keyframe_phases_seconds_training": phases_of(training) if training else {},
        "keyframe_phases_seconds_training_elsewhere": phases_of(elsewhere) if elsewhere else {},
        "delta_exchanges_per_second": len(ds) / delta_seconds if delta_seconds else 0.0,
        "delta_packet_bytes": delta_bytes / max(2 * len(ds), 1),
        "delta_exchanges": len(ds),
        "peak_rss_gross_over_model": hwm / nbytes,
        # What the exchanges add on top of the set-up peer (model, trainer, engine, server).
        "peak_rss_exchange_over_model": (hwm - peers["reset_rss"]) / nbytes,
        # What one push-pull adds over the peer's steady state (its link's replicas made).
        "exchange_added_rss_over_model": (steady_hwm - peers["steady_rss"]) / nbytes,
        "steady_rss_bytes": peers["steady_rss"],
        # Of it, the keyframe exchanges alone (the deltas ran after them; the mark is cumulative).
        "keyframe_added_rss_over_model": (max([k["server"]["hwm"] for k in kf[1:]] or [peers["steady_rss"]])
                                          - peers["steady_rss"]) / nbytes,
        "peak_rss_bytes": hwm,
        "baseline_rss_bytes": baseline,
        "setup_rss_bytes": hello["setup_rss"],
        "rss_after_deltas_bytes": peers["after_deltas"]["rss"],
        "raw_seconds": raw_times,
        "grpc_seconds": grpc_times,
        "keyframe_seconds": [k["seconds"] for k in kf],
    }


def print_table(r: dict[str, Any]) -> None:
    mib = r["model_bytes"] / MB
    rows = [
        ("model (fp32)", f"{mib:.1f} MB"),
        ("raw TCP socket, 2 processes", f"{r['raw_mbps']:.0f} MB/s"),
        ("bare grpc.aio stream, ready-made 1 MiB messages", f"{r['grpc_mbps']:.0f} MB/s "
                                                             f"({r['grpc_over_raw']:.2f} x raw)"),
        ("keyframe over gRPC (transfer, no merge)", f"{r['keyframe_mbps']:.0f} MB/s"),
        ("  keyframe / raw", f"{r['keyframe_over_raw']:.2f}"),
        ("  keyframe / bare gRPC, idle peer", f"{r['keyframe_over_bare_grpc']:.2f}   (target >= 0.80)"),
        ("keyframe, answering peer's trainer training", f"{r['keyframe_training_mbps']:.0f} MB/s "
                                                       f"({r['training_steps_during_keyframes']} SGD steps meanwhile)"),
        ("  keyframe / bare gRPC, trainer running", f"{r['keyframe_over_bare_grpc_training']:.2f}   (target >= 0.70)"),
        ("bare grpc.aio between the peer processes, next to", f"{r['bare_grpc_interleaved_mbps']:.0f} MB/s idle, "
                                                             f"{r['bare_grpc_interleaved_training_mbps']:.0f} MB/s training"),
        ("  keyframe / it, pairwise, idle peer", f"{r['keyframe_over_bare_grpc_interleaved']:.2f}"),
        ("  keyframe / it, pairwise, trainer running", f"{r['keyframe_over_bare_grpc_training_interleaved']:.2f}"),
        ("control: the training in a third process", f"keyframe / bare gRPC "
                                                     f"{r['keyframe_over_bare_grpc_training_elsewhere']:.2f}, pairwise "
                                                     f"{r['keyframe_over_bare_grpc_training_elsewhere_interleaved']:.2f}"),
        ("CPU ms per MB moved, both peers: bare | keyframe", f"{r['bare_grpc_cpu_s_per_mb'] * 1e3:.2f} | "
                                                            f"{r['keyframe_cpu_s_per_mb'] * 1e3:.2f} (merges apart: "
                                                            f"{r['keyframe_merge_cpu_s_per_mb'] * 1e3:.2f})"),
        ("  of the idle keyframes after the first, answered early", f"{r['keyframes_answered_early']} of "
                                                                     f"{r['keyframes_timed']}"),
        ("  keyframe exchange incl. both merges", f"{r['keyframe_exchange_mbps_with_merges']:.0f} MB/s "
                                                   f"({r['keyframe_exchange_seconds']:.2f} s)"),
        ("top-1% int8 delta stream", f"{r['delta_mbps']:.2f} MB/s, {r['delta_exchanges_per_second']:.2f} exch/s, "
                                     f"{r['delta_packet_bytes'] / 1e3:.0f} kB/packet"),
        ("peak RSS of answering peer - baseline", f"{r['peak_rss_over_model']:.2f} x model   (target < 3)"),
        ("  of which the exchanges add (over the set-up peer)", f"{r['peak_rss_exchange_over_model']:.2f} x model"),
        ("  one push-pull over the steady state (replicas made)", f"{r['exchange_added_rss_over_model']:.2f} x model"
                                                                  "   (target <= 1.0)"),
        ("peak RSS gross (VmHWM)", f"{r['peak_rss_gross_over_model']:.2f} x model "
                                   f"({r['peak_rss_bytes'] / MB:.0f} MB; baseline "
                                   f"{r['baseline_rss_bytes'] / MB:.0f} MB)"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("keyframe exchange phases (s, median; idle | trainer thread running | training in a third process):")
    for k, v in r["keyframe_phases_seconds"].items():
        print(f"  {k:<{width}}  {v:.3f} | {r['keyframe_phases_seconds_training'].get(k, float('nan')):.3f} | "
              f"{r['keyframe_phases_seconds_training_elsewhere'].get(k, float('nan')):.3f}")
    print("keyframe MB/s = packet bytes of both directions / (push-pull time - the caller's merge), repetitions after\n"
          "the first; bare gRPC MB/s = one direction's bytes / that stream's time, repetitions after the first.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~20 MB model and fewer repetitions")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--pb-server", action="store_true",
                        help="register the answering peer's servicer with the generated protobuf "
                             "(de)serialisers, as peer.runtime.node did before grpc_transport.add_to_server")
    parser.add_argument("--links", choices=("yes", "no", "only"), default="yes",
                        help="the real-link section (two peers across a tbf-shaped veth pair at 1 Gbit/s and "
                             "100 Mbit/s; needs root): run it too (yes), skip it (no), or run only it (only)")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    result: dict[str, Any] = {}
    if args.links != "only":
        ctx = mp.get_context("spawn")
        raw_times = bench_raw(ctx, model_bytes(size), size.raw_reps)
        grpc_times = bench_grpc(ctx, model_bytes(size), size.raw_reps)
        peers = bench_peers(ctx, size, args.pb_server)
        result = summarise(size, raw_times, grpc_times, peers)
        print_table(result)
    if args.links != "no":
        from bench.links import bench_links, print_links

        # The quick model (~20 MB) at both rates: a 100 MB keyframe at 100 Mbit/s would take 16 s each way.
        # Four keyframes per rate, as before the loopback repetitions grew (a shaped link is steady).
        result["links"] = bench_links(QUICK.hidden, QUICK.layers, keyframe_reps=4,
                                      deltas=size.deltas)
        result["links_model_bytes"] = model_bytes(QUICK)
        print_links(result["links"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
