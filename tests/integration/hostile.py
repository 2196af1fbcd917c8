"""Hand-made hostile callers for the attack tests: crafted packets, a relay that connects
from another loopback address, and a raw HTTP/2 caller that never reads its replies."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator, Mapping

import grpc
import numpy as np
import torch

from hearsay.v1 import gossip_pb2, gossip_pb2_grpc
from peer.models import build_model
from protocol import codecs
from protocol.keyring import EXCHANGE_REQUEST, TAG_METADATA_KEY, Keyring
from protocol.wire import PacketHeader, decode_packet, encode_packet, fingerprint, specs_of


def model_state(spec: str = "mlp", seed: int = 99, scale: float = 1.0) -> dict[str, np.ndarray]:
    """A digits model's weights (seeded), floating tensors scaled by ``scale``."""
    torch.manual_seed(seed)
    state = {k: v.numpy().copy() for k, v in build_model(spec, (1, 8, 8), 10).state_dict().items()}
    return {k: (scale * v).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in state.items()}


def packet(state: Mapping[str, np.ndarray], sender: str, seq: int = 1, samples: int = 100, epoch: int = 1,
           codec: str = "fp32") -> bytes:
    """A keyframe of ``state`` claiming to come from ``sender``."""
    header = PacketHeader(sender_id=f"id-{sender}", sender_addr=sender, fingerprint=fingerprint(specs_of(state)),
                          model_version=seq, age=seq, samples=samples, link_epoch=epoch, link_seq=seq, keyframe=True)
    chosen = codecs.make(codec, ratio=1e-9) if codec == "randk" else codecs.get(codec)
    return encode_packet(header, state, lambda _n, x: chosen if x.dtype.kind == "f" else codecs.get("raw"))


def send(address: str, data: bytes, keyring: Keyring | None = None, timeout: float = 10) -> bytes:
    """One Exchange call with ``data``; the reply packet's bytes (raises grpc.RpcError on refusal)."""
    metadata = ((TAG_METADATA_KEY, keyring.sign(EXCHANGE_REQUEST, data)),) if keyring is not None else None
    with grpc.insecure_channel(address) as channel:
        frames = gossip_pb2_grpc.GossipStub(channel).Exchange(iter([gossip_pb2.Frame(data=data, end=True)]),
                                                               timeout=timeout, metadata=metadata)
        return b"".join(f.data for f in frames)


def fetch_model(address: str, template: Mapping[str, np.ndarray], keyring: Keyring | None = None,
                port: int = 1) -> dict[str, np.ndarray]:
    """The peer's current model: a newcomer's packet (zero samples) is answered with a keyframe."""
    reply = send(address, packet(template, f"127.0.0.1:{port}", samples=0, epoch=port), keyring)
    return {k: np.array(v, dtype=np.float64) for k, v in decode_packet(reply, expected=specs_of(template)).tensors.items()
            if v.dtype.kind == "f"}


def distance(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)) ** 2)
                             for k in a)))


@contextlib.contextmanager
def relay_from(source_host: str, target: str) -> Iterator[str]:
    """A TCP relay on loopback whose connections reach ``target`` from ``source_host`` (e.g.
    127.0.0.2): a caller through it is seen by ``target`` as coming from that host."""
    host, port = target.rsplit(":", 1)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    bound: list[str] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        writer.close()

    handlers: set[asyncio.Task] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())
        with contextlib.suppress(asyncio.CancelledError):  # the relay closing
            up_reader, up_writer = await asyncio.open_connection(host, int(port), local_addr=(source_host, 0))
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    stop: list[asyncio.Future] = []

    async def main() -> None:
        stop.append(loop.create_future())
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        bound.append(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
        ready.set()
        await stop[0]
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield bound[0]
    finally:
        loop.call_soon_threadsafe(stop[0].set_result, None)
        thread.join(5)
        loop.close()


def grpc_message(data: bytes) -> bytes:
    """One gRPC length-prefixed message holding a ``Frame`` with ``data`` marked end."""
    frame = gossip_pb2.Frame(data=data, end=True).SerializeToString()
    return struct.pack(">BI", 0, len(frame)) + frame


def unread_exchanges(address: str, request: bytes, streams: int, per_connection: int) -> list[socket.socket]:
    """Open ``streams`` Exchange calls with ``request`` over raw HTTP/2 connections that grant
    no flow-control window (initial window 0, never a WINDOW_UPDATE): the peer can answer
    none of them. Returns the open sockets (close them to end the attack)."""
    import h2.config
    import h2.connection
    import h2.settings

    host, port = address.rsplit(":", 1)
    message = grpc_message(request)
    sockets = []
    for _ in range(0, streams, per_connection):
        sock = socket.create_connection((host, int(port)), timeout=10)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        for _ in range(per_connection):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":authority", address),
                                    (":path", "/hearsay.v1.Gossip/Exchange"), ("content-type", "application/grpc"),
                                    ("te", "trailers"), ("hearsay-packet-bytes", str(len(request)))])
            conn.send_data(sid, message, end_stream=True)
        sock.sendall(conn.data_to_send())
        sockets.append(sock)
    return sockets
