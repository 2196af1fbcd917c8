"""Membership benchmark: how fast SWIM spreads a join and a crash, and false deaths.

    python -m bench.membership [--quick] [--json FILE] [--sections sim]

Writes ``{"sim": [{"nodes", "loss", "join_periods", "crash_periods", "false_deaths",
"periods_run", ...}, ...]}`` and prints a table. ``sim`` runs the state machine in the
membership simulator (peer/membership_sim.py): a formed cluster with 1 % message loss,
one node joins through a single seed, then one node crashes; ``join_periods`` /
``crash_periods`` are the probe periods until every running node holds the joiner
alive / the crashed node dead, compared against ln(n+1). The 1,000-node run goes on
to 10,000 periods to count false deaths (a running node declared dead by anyone).

Each section is a function returning JSON-ready data, listed in ``SECTIONS``; a
``real`` section (real processes on loopback) slots in beside ``sim``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from peer.membership_sim import measure

# (nodes, total periods to run for the false-death count; 0 = only the join/crash).
FULL_SIM = [(100, 1_000), (1_000, 10_000), (10_000, 0)]
QUICK_SIM = [(100, 300), (300, 0), (1_000, 0)]
LOSS = 0.01


def run_sim(quick: bool, seed: int = 0) -> list[dict[str, Any]]:
    """The simulated dissemination runs, one dict per cluster size."""
    rows = []
    for nodes, periods in (QUICK_SIM if quick else FULL_SIM):
        r = measure(nodes, loss=LOSS, seed=seed, periods=float(periods))
        row = asdict(r)
        row["ln_n"] = round(math.log(nodes + 1), 3)
        row["log10_n"] = round(math.log10(nodes), 3)
        rows.append(row)
        print(f"  sim {nodes} nodes: {r.wall_s:.1f} s", file=sys.stderr, flush=True)
    return rows


def sim_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'nodes':>6} {'loss':>5} {'join P':>7} {'crash P':>8} {'ln(n+1)':>8} "
            f"{'crash/ln':>8} {'false deaths':>12} {'suspicions':>10} {'periods':>8} "
            f"{'events':>10} {'wall s':>7} {'µs/event':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = r["crash_periods"] / r["ln_n"] if r["crash_periods"] is not None else float("nan")
        per_event = 1e6 * (r["wall_s"] - r["setup_s"]) / max(1, r["events"])
        lines.append(
            f"{r['nodes']:>6} {r['loss']:>5.2f} {_p(r['join_periods']):>7} {_p(r['crash_periods']):>8} "
            f"{r['ln_n']:>8.2f} {ratio:>8.2f} {r['false_deaths']:>12} {r['suspicions']:>10} "
            f"{r['periods_run']:>8.0f} {r['events']:>10} {r['wall_s']:>7.1f} {per_event:>8.1f}")
    return "\n".join(lines)


def _p(v: float | None) -> str:
    return "never" if v is None else f"{v:g}"


SECTIONS: dict[str, tuple[Callable[[bool], Any], Callable[[Any], str]]] = {
    "sim": (run_sim, sim_table),
    # "real": (run_real, real_table),  -- real peer processes on loopback (to be added)
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.membership", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller clusters and shorter runs")
    ap.add_argument("--json", metavar="FILE", help="write the results here")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {}
    for name in [s for s in args.sections.split(",") if s]:
        if name not in SECTIONS:
            ap.error(f"unknown section {name!r}")
        run, table = SECTIONS[name]
        t0 = time.perf_counter()
        results[name] = run(args.quick)
        print(f"\n[{name}] ({time.perf_counter() - t0:.1f} s)")
        print(table(results[name]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
