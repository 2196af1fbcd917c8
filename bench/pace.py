"""The 8-peer Fashion-MNIST cluster of issue 11 (must-hold 1), in the simulator.

``hearsay cluster -n 8 --dataset fashion-mnist --model cnn --partition dirichlet --alpha 0.5
--duration 300`` ends with every peer's model scored on the full test set; on an idle 2-core
machine each peer takes ~21 local steps per second and starts one exchange per second (±20 %),
so about 21 local steps pass between the exchanges a peer starts. This runs the same swarm
on the simulator's virtual clock (one local step = one virtual second): the daemon's shards
(data seed 0, the cluster's), its shared initialisation, its engine and merge, its defaults
for everything not set here, and scores every peer's *current* model at the end, as the
cluster's final evaluation does (a peer is at a random phase since its latest merge).

    python -m bench.pace [--steps 2000] [--interval-steps 6.3] [--fanout 1] [--merge-momentum keep]

``--interval-steps 21`` is the old default (gossip_interval 1 s) on the idle machine, 6.3 the
new one (0.3 s). bench/RESULTS.md, "The 8-peer Fashion-MNIST cluster", has the figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from peer.data import Dataset, load_dataset
from peer.runtime.config import LR_SCHEDULES, MERGE_MOMENTUM, PeerConfig
from peer.sim.swarm import SimConfig, Simulator

_DAEMON = PeerConfig()


def per_class(sim: Simulator, index: int, data: Dataset) -> list[float]:
    """Peer ``index``'s current model's accuracy on each class of ``data``'s test set."""
    model = sim.peers[index].trainer.model
    model.eval()
    with torch.no_grad():
        pred = model(torch.as_tensor(np.asarray(data.test_x))).argmax(1).numpy()
    y = np.asarray(data.test_y)
    return [float((pred[y == c] == c).mean()) for c in range(data.num_classes)]


def run(args: argparse.Namespace, data: Dataset) -> dict:
    cfg = SimConfig(peers=args.peers, dataset="fashion-mnist", model="cnn", split="dirichlet", alpha=args.alpha,
                    shared_init=True, lr=args.lr, momentum=args.momentum, batch_size=args.batch_size,
                    steps_per_second=1.0, gossip_interval=args.interval_steps, jitter=0.2, fanout=args.fanout,
                    seed=args.seed, data_seed=0, merge=args.merge, merge_momentum=args.merge_momentum,
                    lr_schedule=args.lr_schedule, lr_horizon=args.lr_horizon or args.steps, lr_floor=args.lr_floor)
    sim = Simulator(cfg, data)
    started, cpu0 = time.perf_counter(), time.process_time()
    curve = []
    for k in range(1, args.points + 1):
        sim.run_until(args.steps * k / args.points)
        curve.append([round(float(a), 4) for a in sim.accuracies()])
        print(f"  t={args.steps * k // args.points} steps: min {min(curve[-1]):.4f} "
              f"mean {np.mean(curve[-1]):.4f}", flush=True)
    final = curve[-1]
    merged = [round(float(a), 4) for a in sim.merged_accuracies()]
    worst = int(np.argmin(final))
    return {
        "variant": vars(args) | {"json": None},
        "final": final, "final_min": min(final), "final_mean": float(np.mean(final)),
        "after_merge": merged, "after_merge_min": min(merged), "after_merge_mean": float(np.mean(merged)),
        "worst_peer": worst, "worst_per_class": [round(a, 3) for a in per_class(sim, worst, data)],
        "curve": curve, "exchanges": sim.stats.exchanges, "merges": sim.stats.merges,
        "lr_end": [round(p.trainer.lr, 6) for p in sim.peers],
        "bytes_sent": sim.stats.bytes_sent, "bytes_per_peer_step": sim.stats.bytes_sent / (args.peers * args.steps),
        "wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(time.process_time() - cpu0, 1),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=2000, help="local steps per peer (virtual seconds)")
    ap.add_argument("--interval-steps", type=float, default=round(21.0 * _DAEMON.gossip_interval, 1),
                    help="local steps between the exchanges a peer starts (default: ~21 steps/s, the idle "
                         "2-core machine's 8 peers, times the daemon's gossip_interval)")
    ap.add_argument("--fanout", type=int, default=_DAEMON.fanout)
    ap.add_argument("--merge", default=_DAEMON.merge)
    ap.add_argument("--lr", type=float, default=_DAEMON.lr)
    ap.add_argument("--momentum", type=float, default=_DAEMON.momentum)
    ap.add_argument("--batch-size", type=int, default=_DAEMON.batch_size)
    ap.add_argument("--lr-schedule", default=_DAEMON.lr_schedule, choices=LR_SCHEDULES,
                    help="the daemon's lr_schedule (hearsay cluster's default: cosine over its --duration)")
    ap.add_argument("--lr-horizon", type=float, default=0.0,
                    help="steps (virtual seconds) at which an annealed rate reaches its floor (0: --steps)")
    ap.add_argument("--lr-floor", type=float, default=_DAEMON.lr_floor, help="the rate at the horizon, a fraction of --lr")
    ap.add_argument("--merge-momentum", default=_DAEMON.merge_momentum, choices=MERGE_MOMENTUM)
    ap.add_argument("--seed", type=int, default=0, help="the cluster's --seed (peer i's seed is seed + i)")
    ap.add_argument("--test-limit", type=int, default=0, help="score on this many test images (0: all 10,000)")
    ap.add_argument("--points", type=int, default=4, help="times the accuracies are printed")
    ap.add_argument("--json", default="")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist", seed=0)
    if args.test_limit:
        te = np.sort(np.random.default_rng(0).choice(len(data.test_y), size=args.test_limit, replace=False))
        data = replace(data, test_x=np.asarray(data.test_x[te]), test_y=np.asarray(data.test_y[te]))
    out = run(args, data)
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({k: v for k, v in out.items() if k != "curve"}))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
