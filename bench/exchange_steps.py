"""Where an exchange's memory goes: the answering peer's RSS and high-water mark at each step.

    python -m bench.exchange_steps

``bench.transport``'s two peer processes (the quick 5.08M-parameter MLP, real gRPC on
loopback); the answering peer records VmRSS and VmHWM when its handler gets the packet
(reassembled by the transport), and before and after decode, accept, the reply's encoding
and the merge. The high-water mark is reset before each exchange: three keyframe
exchanges, then two top-k deltas. MB are 10^6 bytes.
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import bench.transport as bt

def _probe_instrument(engine: Any, timings: dict[str, list[Any]]) -> None:
    """Record (step, VmRSS MB, VmHWM MB) around the engine's steps; one list per exchange."""
    marks: list[tuple[str, float, float]] = []

    def mark(what: str) -> None:
        marks.append((what, bt.proc_kb("VmRSS") / 1e6, bt.proc_kb("VmHWM") / 1e6))

    for name in ("decode", "_accept", "own_packet_parts", "merge"):
        inner = getattr(engine, name)

        def wrapped(*args: Any, _inner: Any = inner, _name: str = name) -> Any:
            mark("before " + _name)
            try:
                return _inner(*args)
            finally:
                mark("after " + _name)

        setattr(engine, name, wrapped)
    handle_inbound = engine.handle_inbound

    async def handle(data: Any, caller: Any) -> Any:
        mark("handle start (packet read)")
        try:
            return await handle_inbound(data, caller)
        finally:
            mark("handle end")
            timings["marks"].append(list(marks))
            marks.clear()

    engine.handle_inbound = handle


def answering(size: bt.Size, pb_server: bool, conn: Any) -> None:
    """``bench.transport``'s answering peer, its engine instrumented by ``_probe_instrument``."""
    bt._instrument = _probe_instrument  # this process's copy of the module only
    bt._answering_peer(size, pb_server, conn)


def main() -> None:
    ctx = mp.get_context("spawn")
    size = bt.QUICK
    srv_parent, srv_child = ctx.Pipe()
    cli_parent, cli_child = ctx.Pipe()
    server = ctx.Process(target=answering, args=(size, False, srv_child))
    server.start()
    hello = srv_parent.recv()
    client = ctx.Process(target=bt._initiating_peer, args=(size, hello["address"], cli_child))
    client.start()
    if cli_parent.recv() != "ready":
        raise RuntimeError("the initiating peer did not start")
    try:
        for kind in ["keyframe", "keyframe", "keyframe", "delta", "delta"]:
            srv_parent.send("reset")
            base = srv_parent.recv()
            cli_parent.send(kind)
            cli_parent.recv()
            srv_parent.send("report")
            report = srv_parent.recv()
            print(f"{kind}: RSS at reset {base / 1e6:.0f} MB, high-water mark after {report['hwm'] / 1e6:.0f} MB "
                  f"(model {bt.model_bytes(size) / 1e6:.1f} MB)")
            for what, rss, hwm in report["timings"].get("marks", [[]])[0]:
                print(f"   {what:<28} RSS {rss:6.0f}  high-water mark {hwm:6.0f}")
    finally:
        bt.stop_peers((cli_parent, srv_parent), (client, server))


if __name__ == "__main__":
    main()
