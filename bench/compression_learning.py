"""Learning with compressed deltas: `hearsay cluster` uncompressed vs top-1 % + int8 with
error feedback vs top-1 % without feedback, side by side in one run.

    python -m bench.compression_learning [--quick] [--model cnn] --json FILE

Each configuration runs the same real 4-peer cluster (same seeds, shards, step rate and
duration; only the wire codec differs) and reports the peers' mean final test accuracy
and the bytes they sent in total. Writes
``{"runs": [{"name", "final_accuracy", "bytes_sent", ...}, ...], "bytes_ratio_dense_over_ef": ...}``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console

from peer.tools.cluster import ClusterSpec, run_cluster

# name -> extra `hearsay run` flags. Same model, data, seeds, rates; only the wire changes.
CONFIGS: dict[str, list[str]] = {
    "dense": ["--codec=fp32"],
    "topk1_int8_ef": ["--codec=topk_int8", "--topk-ratio=0.01", "--small-codec=int8", "--keyframe-codec=fp16"],
    "topk1_noef": ["--codec=topk", "--topk-ratio=0.01", "--small-codec=int8", "--keyframe-codec=fp16",
                   "--no-error-feedback"],
}


# After the last peer stops training, a few more exchanges spread the final models.
SETTLE_SECONDS = 10.0


def run_one(name: str, flags: list[str], model: str, steps: int, duration: float, seed: int, out: Path) -> dict:
    # Every peer trains exactly `steps` steps (equal compute whatever the machine's load),
    # then keeps gossiping until `duration`; only the wire differs between configurations.
    spec = ClusterSpec(peers=4, duration=duration, out=str(out / f"{name}-seed{seed}"), model=model,
                       gossip_interval=0.5, seed=seed, settle_after_training=SETTLE_SECONDS, merge="vc",
                       extra_args=["--threads=1", f"--max-steps={steps}", *flags])
    started = time.monotonic()
    code = run_cluster(spec, console=Console(file=io.StringIO(), width=120))
    results = json.loads((Path(spec.out) / "results.json").read_text())
    peers = results["peers"]
    if code != 0 or len(peers) != 4 or any(p.get("steps") != steps for p in peers):
        raise SystemExit(f"{name}: cluster run failed or did not finish training (exit {code}, "
                         f"{results['outcome']}); logs in {spec.out}/logs")
    return {"accuracy": statistics.fmean(p["accuracy"] for p in peers),
            "bytes_sent": sum(p["bytes_sent"] for p in peers),
            "exchanges": sum(p["exchanges"] for p in peers) // 2,
            "steps": statistics.fmean(p["steps"] for p in peers),
            "wall_s": time.monotonic() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one seed, 1000 steps per peer (default: 2 seeds, 3000 steps)")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="where cluster logs go (default: a temp dir)")
    args = parser.parse_args(argv)
    # Each run ends SETTLE_SECONDS after every peer finished its steps; duration is a cap.
    steps, duration, seeds = (1000, 300.0, [0]) if args.quick else (3000, 600.0, [0, 1])
    out = args.out or Path(tempfile.mkdtemp(prefix="hearsay-compression-"))
    runs = []
    for name, flags in CONFIGS.items():
        results = [run_one(name, flags, args.model, steps, duration, seed, out) for seed in seeds]
        run = {"name": name, "model": args.model, "seeds": seeds, "duration_s": duration, "steps": steps,
               "final_accuracy": statistics.fmean(r["accuracy"] for r in results),
               "final_accuracy_per_seed": [round(r["accuracy"], 4) for r in results],
               "bytes_sent": sum(r["bytes_sent"] for r in results) // len(results),
               "exchanges": sum(r["exchanges"] for r in results) // len(results),
               "steps_per_peer": statistics.fmean(r["steps"] for r in results)}
        runs.append(run)
        print(f"{name:>14}: accuracy {run['final_accuracy']:.4f} {run['final_accuracy_per_seed']}, "
              f"{run['bytes_sent'] / 1e6:.3f} MB sent, {run['exchanges']} exchanges, "
              f"{run['steps_per_peer']:.0f} steps/peer", flush=True)
    by = {r["name"]: r for r in runs}
    ratio = by["dense"]["bytes_sent"] / max(by["topk1_int8_ef"]["bytes_sent"], 1)
    # Bytes per exchange, so runs that fit a different number of exchanges compare fairly.
    per_exchange = {r["name"]: r["bytes_sent"] / max(r["exchanges"], 1) for r in runs}
    ratio_per_exchange = per_exchange["dense"] / per_exchange["topk1_int8_ef"]
    summary = {
        "runs": runs, "bytes_ratio_dense_over_ef": ratio, "bytes_per_exchange": per_exchange,
        "bytes_ratio_per_exchange": ratio_per_exchange,
        "ef_accuracy_gap_points": 100 * (by["dense"]["final_accuracy"] - by["topk1_int8_ef"]["final_accuracy"]),
        "noef_accuracy_gap_points": 100 * (by["dense"]["final_accuracy"] - by["topk1_noef"]["final_accuracy"]),
    }
    print(f"\nmodel {args.model}: dense / (top-1% + int8 + EF) bytes = {ratio:.1f}x "
          f"({ratio_per_exchange:.1f}x per exchange); accuracy gap: EF {summary['ef_accuracy_gap_points']:+.2f} "
          f"points, no EF {summary['noef_accuracy_gap_points']:+.2f} points")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
