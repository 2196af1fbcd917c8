"""A peer that only answers exchanges: a GossipEngine of a sized MLP behind the gRPC servicer.

Run as ``python -m tests.exchange_peer --listen HOST:PORT --hidden H --layers L`` (inside
a namespace with ``ShapedLink.command``); it prints one JSON line ``{"address": ...}``
once it serves, and serves until its stdin closes. ``build_engine`` makes the same
engine in-process, for the side that starts exchanges. Real parts throughout: the
daemon's engine, transport and admission, no trainer thread (what is measured is the
exchange, not training).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def build_engine(hidden: int, layers: int, seed: int, address: str, codec: str = "fp32",
                 deadlines: object | None = None, timeout: float = 10.0):  # -> GossipEngine
    import torch
    from torch import nn

    from peer.data.datasets import Dataset
    from peer.runtime.gossip import GossipEngine
    from peer.runtime.trainer import Trainer
    from protocol.membership import StaticMembership
    from protocol.merge import make_rule
    from protocol.wire import Limits

    torch.manual_seed(seed)
    modules: list[nn.Module] = [nn.Linear(64, hidden), nn.ReLU()]
    for _ in range(layers):
        modules += [nn.Linear(hidden, hidden), nn.ReLU()]
    model = nn.Sequential(*modules, nn.Linear(hidden, 10))
    rng = np.random.default_rng(seed)
    data = Dataset("synthetic", rng.standard_normal((64, 64)).astype(np.float32),
                   rng.integers(0, 10, 64).astype(np.int64), rng.standard_normal((16, 64)).astype(np.float32),
                   rng.integers(0, 10, 16).astype(np.int64), 10)
    trainer = Trainer(model, data, np.arange(64), device=torch.device("cpu"), seed=seed, batch_size=32,
                      lr=0.01, momentum=0.9)
    return GossipEngine(peer_id=f"peer{seed}", address=address, trainer=trainer,
                        membership=StaticMembership(address), merge_rule=make_rule("vc"), codec=codec,
                        limits=Limits(max_packet_bytes=1 << 31), rng=random.Random(seed), interval=1.0,
                        timeout=timeout, deadlines=deadlines)  # type: ignore[arg-type]


async def serve(listen: str, hidden: int, layers: int, seed: int, codec: str) -> None:
    import grpc

    from peer.transport import grpc_transport
    from peer.transport.grpc_transport import GossipServicer

    server = grpc.aio.server(options=grpc_transport.server_options())
    host = listen.rsplit(":", 1)[0]
    port = server.add_insecure_port(listen)
    address = f"{host}:{port}"
    engine = build_engine(hidden, layers, seed, address, codec)
    # As peer.runtime.node wires it: the engine answers in steps (its reply streamed while the request arrives).
    grpc_transport.add_to_server(GossipServicer(engine, engine.limits.max_packet_bytes, engine.count_rejected), server)
    await server.start()
    print(json.dumps({"address": address}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it
    await server.stop(None)


ROOT = Path(__file__).resolve().parents[1]


def spawn(listen: str, hidden: int, layers: int, wrap: Sequence[str] = (), codec: str = "fp32",
          seed: int = 2) -> tuple[subprocess.Popen[str], str]:
    """Start an answering peer (``wrap``: e.g. ``ShapedLink.command([])``); it and its address."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([*wrap, sys.executable, "-m", "tests.exchange_peer", "--listen", listen,
                             "--hidden", str(hidden), "--layers", str(layers), "--codec", codec, "--seed", str(seed)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the peer prints its address once it serves (or exits: "")
    if not line:
        proc.wait(timeout=10)
        raise RuntimeError(f"exchange peer exited with {proc.returncode} before serving")
    return proc, json.loads(line)["address"]


def stop(proc: subprocess.Popen[str]) -> None:
    """Resume (if stopped) and end an answering peer: closing its stdin ends it."""
    proc.send_signal(signal.SIGCONT)
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--hidden", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--codec", default="fp32")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(1)
    asyncio.run(serve(args.listen, args.hidden, args.layers, args.seed, args.codec))


if __name__ == "__main__":
    main()
