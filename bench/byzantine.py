"""Byzantine benchmark: how each merge rule holds up when some peers attack.

16 peers (``peer.sim``, the daemon's protocol code on a virtual clock), digits, MLP,
non-IID (Dirichlet α = 0.5), every peer starting one exchange per round of
``local_steps`` local steps. For each merge rule and each attack of ``peer.sim.ATTACKS``
it runs 0, 2 and 4 attackers and reports the honest peers' mean test accuracy at the end.

    python -m bench.byzantine [--quick] --json FILE

The JSON holds ``{"runs": [{"rule", "attack", "attackers", "honest_accuracy_mean", ...}]}``;
attack ``none`` (0 attackers) is each rule's no-attack baseline. A table follows on stdout,
with, per rule, the attacks it does not stop at 4 attackers (honest accuracy more than
``TOLERANCE`` below the *plain* rule's no-attack accuracy).

Setting notes. All peers start from a shared initialisation (the same ``--seed`` on
every daemon): with independent initialisations every honest model is, in the first
rounds, as far from ours as an attacker's, and no distance-based rule can tell them
apart (measured: clip-vc and bristle-vc fall to 10-30 % under sign-flip from
independent inits). Attackers are the last peers (their shards are lost to the swarm
in every run with attackers, which costs the honest peers a little even when the
defence is perfect). ``bristle+rep`` is ``bristle`` with per-peer reputation
(``protocol.reputation``): banned peers are dropped and no longer chosen.
Runs go to ``--jobs`` worker processes (default 2, one torch thread each).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from peer.data import load_dataset
from peer.sim import ATTACKS, SimConfig, Simulator

# label -> (protocol.merge rule, reputation on)
RULES: dict[str, tuple[str, bool]] = {
    "vc": ("vc", False),
    "clip": ("clip", False),
    "clip-vc": ("clip-vc", False),
    "median": ("median", False),
    "trimmed": ("trimmed", False),
    "bristle": ("bristle", False),
    "bristle+rep": ("bristle", True),
}
QUICK_RULES = ("vc", "clip", "median", "trimmed", "bristle", "bristle+rep")
ATTACKER_COUNTS = (2, 4)
TOLERANCE = 0.03  # the "within 3 points of the no-attack accuracy"
PEERS = 16


@dataclass(frozen=True)
class Job:
    rule: str
    attack: str
    attackers: int
    rounds: int
    local_steps: int
    seed: int


def run(job: Job) -> dict:
    torch.set_num_threads(1)
    merge, reputation = RULES[job.rule]
    attackers = tuple(range(PEERS - job.attackers, PEERS))
    cfg = SimConfig(peers=PEERS, split="dirichlet", alpha=0.5, merge=merge, shared_init=True,
                    gossip_interval=float(job.local_steps), seed=job.seed, attack=job.attack,
                    attackers=attackers, reputation=reputation)
    started = time.perf_counter()
    sim = Simulator(cfg, _data())
    sim.run_until(float(job.rounds * job.local_steps))
    acc = sim.honest_accuracies()
    verdicts = {f"{kind}/{'attacker' if bad else 'honest'}": n for (kind, bad), n in sorted(sim.stats.verdicts.items())}
    return {"rule": job.rule, "attack": job.attack, "attackers": job.attackers,
            "honest_accuracy_mean": float(acc.mean()), "honest_accuracy_min": float(acc.min()),
            "merges": sim.stats.merges, "rejected": sim.stats.rejected, "dropped": sim.stats.dropped,
            "verdicts": verdicts, "wall_s": round(time.perf_counter() - started, 1)}


_DATA = None


def _data():  # noqa: ANN202 - a peer.data.Dataset, loaded once per worker
    global _DATA
    if _DATA is None:
        _DATA = load_dataset("digits")
    return _DATA


def jobs(rules: tuple[str, ...], rounds: int, local_steps: int, seed: int) -> list[Job]:
    out = []
    for rule in rules:
        out.append(Job(rule, "none", 0, rounds, local_steps, seed))
        for attack in ATTACKS[1:]:
            for n in ATTACKER_COUNTS:
                out.append(Job(rule, attack, n, rounds, local_steps, seed))
    return out


def table(runs: list[dict], rules: tuple[str, ...]) -> str:
    """Rows: rule; columns: no attack, then each attack at 2 and 4 attackers."""
    cell = {(r["rule"], r["attack"], r["attackers"]): r["honest_accuracy_mean"] for r in runs}
    cols = [("none", 0)] + [(a, n) for a in ATTACKS[1:] for n in ATTACKER_COUNTS]
    head = "| rule | " + " | ".join("no attack" if a == "none" else f"{a} ×{n}" for a, n in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for rule in rules:
        lines.append(f"| {rule} | " + " | ".join(f"{cell[(rule, a, n)]:.3f}" if (rule, a, n) in cell else "-"
                                                 for a, n in cols) + " |")
    return "\n".join(lines)


def not_stopped(runs: list[dict], rules: tuple[str, ...], baseline_rule: str = "vc") -> dict[str, list[str]]:
    """Per rule, the attacks whose 4-attacker run ends more than TOLERANCE below the baseline
    rule's no-attack accuracy (the accuracy the swarm would have had without attackers)."""
    cell = {(r["rule"], r["attack"], r["attackers"]): r["honest_accuracy_mean"] for r in runs}
    ref = cell.get((baseline_rule, "none", 0))
    out = {}
    for rule in rules:
        base = ref if ref is not None else cell[(rule, "none", 0)]
        out[rule] = [a for a in ATTACKS[1:] if cell.get((rule, a, max(ATTACKER_COUNTS)), 1.0) < base - TOLERANCE]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.byzantine", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 rounds, the brief's rules (under 10 minutes)")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--rules", default="", help="comma-separated labels of bench RULES")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    rules = tuple(args.rules.split(",")) if args.rules else (QUICK_RULES if args.quick else tuple(RULES))
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise SystemExit(f"unknown rules {unknown}; known: {', '.join(RULES)}")
    rounds = args.rounds or (20 if args.quick else 40)
    local_steps = 10
    started = time.perf_counter()
    todo = jobs(rules, rounds, local_steps, args.seed)
    runs: list[dict] = []
    with ProcessPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        for r in pool.map(run, todo):
            runs.append(r)
            print(f"  {r['rule']:12s} {r['attack']:12s} x{r['attackers']}  honest acc {r['honest_accuracy_mean']:.3f}"
                  f"  ({r['wall_s']:.1f} s)", file=sys.stderr, flush=True)
    wall = round(time.perf_counter() - started, 1)
    gaps = not_stopped(runs, rules)
    result = {"peers": PEERS, "split": "dirichlet", "alpha": 0.5, "model": "mlp", "shared_init": True,
              "rounds": rounds, "local_steps": local_steps, "seed": args.seed, "quick": args.quick,
              "tolerance": TOLERANCE, "not_stopped_at_4": gaps, "wall_s": wall, "runs": runs}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"\n{PEERS} peers, digits, MLP, Dirichlet α=0.5, shared init, {rounds} rounds of {local_steps} local "
          f"steps; honest peers' mean test accuracy at the end; wall time {wall:.0f} s\n")
    print(table(runs, rules))
    print(f"\nAttacks not stopped with 4 of {PEERS} attacking (honest accuracy more than {TOLERANCE:.0%} "
          "below vc's no-attack accuracy):")
    for rule, attacks in gaps.items():
        print(f"- {rule}: {', '.join(attacks) if attacks else 'none (all stopped)'}")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
