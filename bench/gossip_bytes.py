"""Where a gossip round's bytes go: keyframes against deltas, round by round.

Every link starts with a keyframe (a whole model, ``--keyframe-codec``); after that it carries
compressed deltas. At 64 peers a peer has 63 links each way, so the keyframes of a run's first
rounds can outweigh every delta; on a small model the tensors under 4,096 values
(``--small-codec``) are a fixed cost of each delta. This prints, per round, the keyframes sent,
the messages, and the bytes per peer, also per model parameter: FedAvg moves 8 bytes per
parameter per peer a round (an fp32 model up and one down).

    python -m bench.gossip_bytes [--dataset digits] [--peers 64] [--model mlp] [--split dir0.1]
        [--codec int4] [--exchanges 10] [--keyframe-codec fp32] [--small-codec fp32] [--rounds 8]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace

import torch

from bench.learning import Budget, gossip_simulator, grid, load, selected
from peer.runtime.config import KEYFRAME_CODECS, SMALL_CODECS


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gossip_bytes", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits", choices=("digits", "fashion-mnist"))
    p.add_argument("--peers", type=int, default=64)
    p.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
    p.add_argument("--split", default="dir0.1", choices=("iid", "dir0.1", "dir0.5"))
    p.add_argument("--codec", default="int4")
    p.add_argument("--exchanges", type=int, default=10, help="exchanges each peer starts per round")
    p.add_argument("--drift-correction", type=float, default=0.03)
    p.add_argument("--keyframe-codec", default="fp32", choices=KEYFRAME_CODECS)
    p.add_argument("--small-codec", default="fp32", choices=SMALL_CODECS)
    p.add_argument("--rounds", type=int, default=8)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    # The grid's setting of that name (bench.learning's own filter), so --split takes what --splits does.
    setting = next(s for s in grid(quick=False)[0] if selected(s, argparse.Namespace(
        peers=None, models=[args.model], splits=[args.split], datasets=[args.dataset])))
    setting = replace(setting, peers=args.peers)
    budget = Budget(rounds=60, lr_schedule="cosine", codec=args.codec, exchanges_per_round=args.exchanges,
                    drift_correction=args.drift_correction, keyframe_codec=args.keyframe_codec,
                    small_codec=args.small_codec)
    sim = gossip_simulator(setting, budget, load(args.dataset), merge="vc", shared_init=True)
    params = sum(v.size for v in sim.states()[0].values())
    print(f"{setting.label()}: {params:,} parameters; {args.codec} x {args.exchanges}, keyframes "
          f"{args.keyframe_codec}, small tensors {args.small_codec} (60-round cosine budget)\n")
    print("| round | keyframes | messages | bytes per peer | bytes per parameter per peer |")
    print("|---|---|---|---|---|")
    sent = keyframes = messages = 0
    for r in range(1, args.rounds + 1):
        sim.run_until(float(r * budget.local_steps))
        dk, dm, db = sim.keyframes() - keyframes, sim.stats.messages - messages, sim.stats.bytes_sent - sent
        keyframes, messages, sent = sim.keyframes(), sim.stats.messages, sim.stats.bytes_sent
        print(f"| {r} | {dk:,} | {dm:,} | {db / args.peers / 1e3:,.0f} KB | {db / args.peers / params:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
