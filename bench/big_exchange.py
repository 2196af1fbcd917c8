"""A 100M-parameter model (400 MB fp32) exchanged between two real peers (issue 12, must-hold 4).

    python -m bench.big_exchange [--hidden H --layers L] [--keyframes N] [--deltas N] [--json FILE]

Two peer processes (``spawn``, one torch thread each, seeded), real gRPC on loopback: the
answering peer serves ``GossipServicer`` around the daemon's ``GossipEngine`` and
``Trainer``; the initiating peer calls ``GossipEngine.exchange_with`` through
``GossipClient.exchange``. They are ``bench.transport``'s two peer processes, with a
bigger MLP (default: 64 → 4096, six 4096 × 4096 layers, → 10: 101.0M parameters) and a
deadline no exchange here comes near. First ``--keyframes`` push-pulls that both carry a
dense fp32 keyframe (the first one makes the link), then ``--deltas`` push-pulls of 1 %
top-k int8 deltas, each end to end: encode, gRPC both ways, decode, apply, both merges.

Reported: each exchange's time (and of it, the two merges), and the peak RSS (VmHWM)
of both processes: gross, over the process's RSS before the model existed, and for the
answering peer what the exchanges after the first keyframe added over its steady state
(its link's replicas made), over the model size — ``bench.transport``'s
``exchange_added_rss_over_model`` at this size.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench.transport import (MB, Size, _answering_peer, _initiating_peer, model_bytes, proc_kb,  # noqa: E402
                             stop_peers)

BIG = Size(hidden=4096, layers=6, raw_reps=0, keyframe_reps=2, deltas=3)  # 101.0M parameters


def run(size: Size) -> dict[str, Any]:
    """Both peers, the exchanges, and each process's memory; the figures as a dict."""
    ctx = mp.get_context("spawn")
    srv_parent, srv_child = ctx.Pipe()
    cli_parent, cli_child = ctx.Pipe()
    started = time.perf_counter()
    server = ctx.Process(target=_answering_peer, args=(size, False, srv_child))
    server.start()
    hello = srv_parent.recv()
    client = ctx.Process(target=_initiating_peer, args=(size, hello["address"], cli_child))
    client.start()
    if cli_parent.recv() != "ready":
        raise RuntimeError("the initiating peer did not start")
    setup_seconds = time.perf_counter() - started
    client_setup_hwm = proc_kb("VmHWM", client.pid)
    exchanges: list[dict[str, Any]] = []
    try:
        srv_parent.send("reset")
        srv_parent.recv()
        steady_rss = None
        for i, kind in enumerate(["keyframe"] * size.keyframe_reps + ["delta"] * size.deltas):
            cli_parent.send(kind)
            result = cli_parent.recv()
            srv_parent.send("report")
            server_report = srv_parent.recv()
            merges = sum(result["timings"].get("merge", [])) + sum(server_report["timings"].get("merge", []))
            exchanges.append({"kind": kind, "keyframe_sent": result["keyframe"], "seconds": result["seconds"],
                              "merge_seconds": merges, "bytes": result["sent"] + result["received"],
                              "server_hwm": server_report["hwm"], "server_rss": server_report["rss"],
                              "client_hwm": proc_kb("VmHWM", client.pid)})
            print(f"{kind:<8} {result['seconds']:7.2f} s (merges {merges:5.2f} s), "
                  f"{(result['sent'] + result['received']) / MB:8.1f} MB both ways, answering peer VmHWM "
                  f"{server_report['hwm'] / MB:6.0f} MB", flush=True)
            if i == 0:
                # The link's steady state exists now: what the later exchanges add is their cost.
                srv_parent.send("reset")
                steady_rss = srv_parent.recv()
    finally:
        stop_peers((cli_parent, srv_parent), (client, server))
    nbytes = model_bytes(size)
    later = exchanges[1:]
    keyframes = [e for e in exchanges if e["kind"] == "keyframe"]
    deltas = [e for e in exchanges if e["kind"] == "delta"]
    server_hwm = max(e["server_hwm"] for e in exchanges)
    return {
        "parameters": nbytes // 4,
        "model_bytes": nbytes,
        "setup_seconds": setup_seconds,
        "keyframe_seconds": [e["seconds"] for e in keyframes],
        "keyframe_merge_seconds": [e["merge_seconds"] for e in keyframes],
        "keyframe_mbps": [e["bytes"] / e["seconds"] / MB for e in keyframes],
        "delta_seconds": [e["seconds"] for e in deltas],
        "delta_packet_bytes": [e["bytes"] / 2 for e in deltas],
        "all_keyframes_sent": all(e["keyframe_sent"] for e in keyframes) and not any(e["keyframe_sent"]
                                                                                     for e in deltas),
        "server_peak_rss_bytes": server_hwm,
        "server_baseline_rss_bytes": hello["baseline_rss"],
        "server_peak_rss_over_model": (server_hwm - hello["baseline_rss"]) / nbytes,
        "server_steady_rss_bytes": steady_rss,
        "exchange_added_rss_over_model": (max(e["server_hwm"] for e in later) - steady_rss) / nbytes
        if later and steady_rss is not None else None,
        "client_peak_rss_bytes": max([client_setup_hwm] + [e["client_hwm"] for e in exchanges]),
        "client_setup_peak_rss_bytes": client_setup_hwm,
        "exchanges": exchanges,
    }


def print_summary(r: dict[str, Any]) -> None:
    mb = r["model_bytes"] / MB
    print(f"model: {r['parameters'] / 1e6:.1f}M parameters, {mb:.0f} MB fp32; peers set up in "
          f"{r['setup_seconds']:.1f} s")
    for i, (s, m, rate) in enumerate(zip(r["keyframe_seconds"], r["keyframe_merge_seconds"], r["keyframe_mbps"])):
        print(f"keyframe push-pull {i + 1}: {s:.2f} s end to end ({m:.2f} s of it the two merges), "
              f"{rate:.0f} MB/s of packets")
    for i, (s, b) in enumerate(zip(r["delta_seconds"], r["delta_packet_bytes"])):
        print(f"delta push-pull {i + 1}: {s:.2f} s, {b / MB:.2f} MB per packet")
    print(f"answering peer: peak RSS {r['server_peak_rss_bytes'] / MB:.0f} MB, "
          f"{r['server_peak_rss_over_model']:.2f} x model over its RSS before the model existed; "
          f"over its steady state {r['exchange_added_rss_over_model']:.2f} x model")
    print(f"initiating peer: peak RSS {r['client_peak_rss_bytes'] / MB:.0f} MB "
          f"(after set-up {r['client_setup_peak_rss_bytes'] / MB:.0f} MB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=BIG.hidden)
    parser.add_argument("--layers", type=int, default=BIG.layers)
    parser.add_argument("--keyframes", type=int, default=BIG.keyframe_reps)
    parser.add_argument("--deltas", type=int, default=BIG.deltas)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.keyframes < 1:
        parser.error("--keyframes must be at least 1 (the first one makes the link)")
    size = Size(hidden=args.hidden, layers=args.layers, raw_reps=0, keyframe_reps=args.keyframes, deltas=args.deltas)
    result = run(size)
    print_summary(result)
    if not result["all_keyframes_sent"]:
        print("warning: an exchange did not carry the update kind asked for", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
