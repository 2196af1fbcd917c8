"""Where gossip's rounds go: the swarm's progress against each peer's drift from it, round by round.

    python -m bench.drift --dataset fashion-mnist --peers 64 --model mlp --alpha 0.1 --codec int8 --exchanges 6
    python -m bench.drift ... --set merge_momentum=reset --set fanout=3

One gossip run of ``bench.learning``'s simulator (same budget: 60 rounds of 10 local steps,
cosine, the daemon's defaults otherwise), printing per round: the peers' mean accuracy right
after their latest merge (what bench.learning scores), the accuracy of the average of their
models (what FedAvg's aggregate would be at that instant), the consensus distance, and the mean
weight norm of the weight matrices. When the average model keeps FedAvg's pace and the peers'
own models do not, what costs the rounds is each model's drift from the average, not mixing or
compression (bench/RESULTS.md, "Issue 11, session 13"). ``--set`` overrides any SimConfig field
for what-ifs; ``--stop`` ends early, the schedule still over ``--rounds``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bench.learning import TARGET_FRACTION, Budget, Setting, load, rounds_to, sim_config
from peer.sim.swarm import SimConfig, Simulator


def _value(field: dataclasses.Field, text: str) -> object:
    """``text`` as the type of SimConfig's ``field`` (annotations are strings here)."""
    kind = str(field.type)
    if kind.startswith("int"):
        return int(text)
    if kind.startswith("float"):
        return float(text)
    if kind.startswith("bool"):
        return text.lower() in ("1", "true", "yes")
    return text


def overrides(pairs: Sequence[str]) -> dict[str, object]:
    """``name=value`` pairs as SimConfig fields; an unknown name or a malformed pair is refused."""
    fields = {f.name: f for f in dataclasses.fields(SimConfig)}
    out: dict[str, object] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in fields:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of SimConfig's")
        out[name] = _value(fields[name], text)
    return out


def weight_norm(states: Sequence[dict[str, np.ndarray]]) -> float:
    """Mean over peers of the L2 norm of their weight matrices (rank >= 2)."""
    names = [k for k, v in states[0].items() if np.asarray(v).ndim >= 2]
    return float(np.mean([np.sqrt(sum(float((np.asarray(s[k], np.float64) ** 2).sum()) for k in names))
                          for s in states]))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.drift", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", choices=("digits", "fashion-mnist"))
    p.add_argument("--peers", type=int, default=64)
    p.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
    p.add_argument("--alpha", type=float, default=0.1, help="Dirichlet alpha; 0 for iid")
    p.add_argument("--merge", default="vc", help="protocol.merge rule name")
    p.add_argument("--init", choices=("shared", "independent"), default="shared")
    p.add_argument("--codec", default="int8")
    p.add_argument("--topk-ratio", type=float, default=SimConfig.topk_ratio)
    p.add_argument("--exchanges", type=int, default=6, help="exchanges each peer starts per round")
    p.add_argument("--rounds", type=int, default=60, help="the schedule's length in rounds")
    p.add_argument("--stop", type=int, default=0, help="stop after this many rounds (0: --rounds)")
    p.add_argument("--fedavg-final", type=float, default=0.0,
                   help="FedAvg's final accuracy here (bench.learning's), to print the round each curve reaches 95 %% of it")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a SimConfig field")
    p.add_argument("--json", type=Path, default=None, help="write the rows here too")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    setting = Setting(args.peers, "iid" if args.alpha <= 0 else "dirichlet", args.alpha if args.alpha > 0 else None,
                      args.model, args.dataset)
    budget = Budget(rounds=args.rounds, lr_schedule="cosine", codec=args.codec, topk_ratio=args.topk_ratio,
                    exchanges_per_round=args.exchanges)
    extra = overrides(args.set)
    sim = Simulator(sim_config(setting, budget, merge=args.merge, shared_init=args.init == "shared",
                               codec=args.codec, topk_ratio=args.topk_ratio, **extra), load(args.dataset))
    mark = TARGET_FRACTION * args.fedavg_final if args.fedavg_final > 0 else None
    rows = []
    curves: dict[str, list[float]] = {"peers": [], "average": []}  # unrounded, for the mark
    started = time.perf_counter()
    for r in range(1, (args.stop or args.rounds) + 1):
        sim.run_until(float(r * budget.local_steps))
        own, average = float(sim.merged_accuracies().mean()), sim.average_model_accuracy()
        curves["peers"].append(own)
        curves["average"].append(average)
        row = {"round": r, "peers_accuracy": round(own, 4), "average_model_accuracy": round(average, 4),
               "consensus_distance": round(sim.consensus_distance(), 3), "weight_norm": round(weight_norm(sim.states()), 3),
               "mb_per_round": round(sim.stats.bytes_sent / r / 1e6, 2)}
        rows.append(row)
        print(json.dumps(row), f"{time.perf_counter() - started:.0f}s", flush=True)
    # bench.learning's rounds_to counts from round 0: rows begin at round 1.
    reached = {key: None if mark is None else rounds_to([0.0] + curve, mark) for key, curve in curves.items()}
    if mark is not None:
        print(f"95 % of FedAvg's {args.fedavg_final}: the peers' own models at round {reached['peers']}, "
              f"their average model at round {reached['average']}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "overrides": extra,
                                         "reached": reached, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
