"""Membership benchmark: how fast SWIM spreads a join and a crash, and false deaths.

    python -m bench.membership [--quick] [--json FILE] [--sections sim]

Writes ``{"real": {"peers", "detect_median_s", "detect_max_s", "false_deaths", "suspicions",
...}, "sim": [{"nodes", "loss", "join_periods", "crash_periods", "false_deaths",
"periods_run", ...}, ...]}`` and prints a table. ``sim`` runs the state machine in the
membership simulator (peer/membership_sim.py): a formed cluster with 1 % message loss,
one node joins through a single seed, then one node crashes; ``join_periods`` /
``crash_periods`` are the probe periods until every running node holds the joiner
alive / the crashed node dead, compared against ln(n+1). The 1,000-node run goes on
to 10,000 periods to count false deaths (a running node declared dead by anyone).

``real`` runs 8 real peers on loopback (probe period 0.5 s): 10 times a random peer is
SIGKILLed, the time until every other peer holds it dead is taken from the peers' own
JSON logs, and it is restarted on the same ports; then 120 s with the CPU saturated by
2 busy loops while one peer's event loop blocks 300 ms every second (the debug setting
``HEARSAY_DEBUG_LOOP_STALL``, toggled with SIGUSR1). ``false_deaths`` / ``suspicions`` count
transitions, in any peer's view, about a peer that was running at that moment.

Each section is a function returning JSON-ready data, listed in ``SECTIONS``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from peer.admin_client import AdminError
from peer.membership_runtime import LoggedEvent, parse_event_line
from peer.membership_sim import measure
from peer.procs import PeerProcess, launch_peers, wait_for

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


# --- real processes ----------------------------------------------------------------------

REAL_PEERS = 8
REAL_PERIOD = 0.5
REAL_TRIALS, QUICK_TRIALS = 10, 3
HOG_SECONDS, QUICK_HOG_SECONDS = 120.0, 30.0
HOG_PROCESSES = 2                # one busy loop per core of the reference machine
STALL = "0.3@1.0"                # the slow peer blocks its event loop 300 ms every second


def _real_args(i: int, seeds: list[str]) -> list[str]:
    return ["--threads", "1", "--log-level", "info", "--log-json", "--seeds", ",".join(seeds), "--seed", str(i),
            "--probe-period", str(REAL_PERIOD), "--steps-per-second", "2", "--gossip-interval", "2"]


def _view(peer: PeerProcess) -> dict[str, str]:
    """peer id -> state as ``peer`` sees the swarm ({} while it does not answer)."""
    try:
        with peer.admin(timeout=3.0) as client:
            return {m.peer_id: m.state for m in client.list_peers().peers}
    except AdminError:
        return {}


def _views(peers: list[PeerProcess]) -> list[dict[str, str]]:
    with ThreadPoolExecutor(len(peers)) as pool:
        return list(pool.map(_view, peers))


def _all_see(observers: list[PeerProcess], subject: PeerProcess, state: str) -> bool:
    return all(v.get(subject.peer_id) == state for v in _views(observers))


def _formed(peers: list[PeerProcess]) -> bool:
    want = {p.peer_id for p in peers}
    return all({pid for pid, s in v.items() if s == "alive"} == want - {p.peer_id}
               for p, v in zip(peers, _views(peers)))


def _events(peers: list[PeerProcess]) -> list[LoggedEvent]:
    """Every membership transition every peer logged (all its lives: logs are appended)."""
    out = []
    for p in peers:
        for line in p.log_path.read_text(errors="replace").splitlines():
            e = parse_event_line(line)
            if e is not None:
                out.append(e)
    return out


def _was_down(address: str, at: float, down: list[tuple[str, float, float]]) -> bool:
    return any(a == address and start <= at <= end for a, start, end in down)


def _kill_trials(peers: list[PeerProcess], trials: int, rng: random.Random,
                 down: list[tuple[str, float, float]]) -> list[float]:
    """SIGKILL a random peer, time until every other holds it dead, restart it, repeat."""
    detections = []
    for trial in range(trials):
        victim = rng.choice(peers)
        others = [p for p in peers if p is not victim]
        killed_at = time.time()
        victim.signal(signal.SIGKILL)
        wait_for(lambda: _all_see(others, victim, "dead"), timeout=60, interval=0.1,
                 what=f"trial {trial}: every peer to mark {victim.peer_id} dead")
        first: dict[str, float] = {}
        for e in _events(others):
            if e.address == victim.gossip_address and e.new == "dead" and e.at >= killed_at:
                first[e.observer] = min(e.at, first.get(e.observer, e.at))
        detections.append(max(first.values()) - killed_at)
        print(f"  trial {trial}: {victim.peer_id} dead everywhere after {detections[-1]:.2f} s",
              file=sys.stderr, flush=True)
        assert victim.proc is not None
        victim.proc.wait(timeout=10)
        victim.start()  # same ports, same seeds: a restart, as after a crash
        victim.wait_ready(120)
        down.append((victim.gossip_address, killed_at, time.time()))
        wait_for(lambda: _formed(peers), timeout=60, what=f"trial {trial}: {victim.peer_id} to rejoin")
    return detections


def _busy_loops(count: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def _slow_peer_run(peers: list[PeerProcess], seconds: float) -> tuple[float, float, int]:
    """``seconds`` with the CPU saturated and one peer's loop stalling; (start, end, polls off)."""
    slow = peers[0]
    hogs = _busy_loops(HOG_PROCESSES)
    slow.signal(signal.SIGUSR1)  # starts the stall set by HEARSAY_DEBUG_LOOP_STALL (peer/node.py)
    started = time.time()
    not_alive = 0
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # watch the views the whole time (logs are the exact record)
            not_alive += sum(s != "alive" for v in _views(peers) for s in v.values())
            time.sleep(1.0)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        slow.signal(signal.SIGUSR1)  # and stops it
    exited = [p.peer_id for p in peers if not p.alive()]
    if exited:
        print(f"  peers that exited during the slow-peer run: {exited}", file=sys.stderr, flush=True)
    return started, time.time(), not_alive


def run_real(quick: bool, seed: int = 0) -> dict[str, Any]:
    """8 real peers, period 0.5 s: SIGKILL detection times, then a no-false-positive run."""
    trials = QUICK_TRIALS if quick else REAL_TRIALS
    hog_seconds = QUICK_HOG_SECONDS if quick else HOG_SECONDS
    rng = random.Random(seed)
    down: list[tuple[str, float, float]] = []
    logs = Path(tempfile.mkdtemp(prefix="hearsay-bench-membership-"))  # kept: the logs are the evidence
    print(f"  real: peer logs in {logs}", file=sys.stderr, flush=True)
    peers = launch_peers(REAL_PEERS, logs, _real_args, env={"HEARSAY_DEBUG_LOOP_STALL": STALL})
    try:
        for p in peers:
            p.wait_ready(120)
        wait_for(lambda: _formed(peers), timeout=60, what="the swarm to form")
        detections = _kill_trials(peers, trials, rng, down)
        print(f"  slow-peer run: {hog_seconds:.0f} s, {HOG_PROCESSES} CPU hogs, {peers[0].peer_id} "
              f"stalling {STALL}", file=sys.stderr, flush=True)
        hog_start, hog_end, polls_off = _slow_peer_run(peers, hog_seconds)
        events = _events(peers)
    finally:
        for p in peers:
            p.stop(timeout=15)
    false = [e for e in events if not _was_down(e.address, e.at, down)]
    in_hog = [e for e in false if hog_start <= e.at <= hog_end]
    return {
        "peers": REAL_PEERS, "period_s": REAL_PERIOD, "trials": trials,
        "detect_s": [round(d, 3) for d in detections],
        "detect_median_s": round(statistics.median(detections), 3),
        "detect_max_s": round(max(detections), 3),
        # Over the whole run: transitions about a peer that was running at the time.
        "false_deaths": sum(e.new == "dead" for e in false),
        "suspicions": sum(e.new == "suspect" for e in false),
        "slow_peer_run": {
            "seconds": hog_seconds, "cpu_hogs": HOG_PROCESSES, "stall": STALL,
            "suspicions": sum(e.new == "suspect" for e in in_hog),
            "suspicions_of_slow_peer": sum(e.new == "suspect" and e.address == peers[0].gossip_address
                                           for e in in_hog),
            "deaths": sum(e.new == "dead" for e in in_hog),
            "recoveries": sum(e.new == "alive" and e.old in ("suspect", "dead") for e in in_hog),
            "polls_not_alive": polls_off,
        },
    }


def real_table(r: dict[str, Any]) -> str:
    h = r["slow_peer_run"]
    return "\n".join([
        f"{r['peers']} peers, probe period {r['period_s']} s, {r['trials']} SIGKILL trials",
        f"  detection (dead at every other peer): median {r['detect_median_s']:.2f} s, "
        f"max {r['detect_max_s']:.2f} s   (targets: median <= 4 s, max <= 8 s)",
        f"  per trial: {', '.join(f'{d:.2f}' for d in r['detect_s'])}",
        f"  whole run: {r['suspicions']} suspicions and {r['false_deaths']} deaths of running peers",
        f"  slow-peer run ({h['seconds']:.0f} s, {h['cpu_hogs']} CPU hogs, loop stall {h['stall']}): "
        f"{h['suspicions']} suspicions ({h['suspicions_of_slow_peer']} of the slow peer), "
        f"{h['recoveries']} refuted, {h['deaths']} deaths",
    ])


SECTIONS: dict[str, tuple[Callable[[bool], Any], Callable[[Any], str]]] = {
    "sim": (run_sim, sim_table),
    "real": (run_real, real_table),
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
