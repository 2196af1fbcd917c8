"""Membership benchmark: how fast SWIM spreads a join and a crash, and false deaths.

    python -m bench.membership [--quick] [--keyring] [--json FILE] [--sections sim,real,flood]

Writes ``{"real": {"peers", "detect_median_s", "detect_max_s", "false_deaths", "suspicions",
...}, "sim": [{"nodes", "loss", "join_periods", "crash_periods", "false_deaths",
"periods_run", ...}, ...]}`` and prints a table. ``sim`` runs the state machine in the
membership simulator (peer/sim/membership.py): a formed cluster with 1 % message loss,
one node joins through a single seed, then one node crashes; ``join_periods`` /
``crash_periods`` are the probe periods until every running node holds the joiner
alive / the crashed node dead, compared against ln(n+1). The 1,000-node run goes on
to 10,000 periods to count false deaths (a running node declared dead by anyone).

``real`` runs 8 real peers on loopback (probe period 0.5 s): 10 times a random peer is
SIGKILLed, the time until every other peer holds it dead is taken from the peers' own
JSON logs, and it is restarted on the same ports; then 120 s with the CPU saturated by
2 busy loops while one peer's event loop blocks 300 ms every second (those peers run
``tests.stalling_peer``, the CLI with a SIGUSR1-toggled loop stall that the shipped daemon
does not have). ``false_deaths`` / ``suspicions`` count
transitions, in any peer's view, about a peer that was running at that moment.
With ``--keyring`` (issue 14) every real peer is given the same cluster keyring file, so
every SWIM and gossip message, request and reply, is HMAC-signed and verified
(protocol/keyring.py); the result says ``"keyring": true`` and the run fails if any
peer logged that it runs without TLS or keyring.

``flood`` (issue 14) serves one PushPull listing 66,000 made-up members to a real gRPC
server in this process, sent by another process, and times how late a 1 ms ticker on
the loop wakes meanwhile; beside it, the same bytes decoded and merged at once.

Each section is a function returning JSON-ready data, listed in ``SECTIONS``.
"""

from __future__ import annotations

import argparse
import base64
import functools
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

from peer.tools.admin_client import AdminError
from peer.runtime.membership import read_events
from peer.sim.membership import measure
from peer.tools.procs import PeerProcess, launch_peers, wait_for
from tests.stalling_peer import STALL_ENV, STALLING_PEER

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
        for e in read_events(p.log_path for p in others):
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
    slow.signal(signal.SIGUSR1)  # starts the stall set by HEARSAY_DEBUG_LOOP_STALL (tests/stalling_peer.py)
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


# Logged at start by a peer with neither TLS nor a keyring (peer/runtime/node.py).
UNAUTHENTICATED_WARNING = "no TLS and no keyring"


def _write_keyring(directory: Path, seed: int) -> Path:
    """One 32-byte cluster key (seeded: reruns sign alike), base64, as `--keyring` reads it."""
    path = directory / "keyring"
    path.write_text(base64.b64encode(random.Random(seed).randbytes(32)).decode() + "\n")
    return path


def run_real(quick: bool, seed: int = 0, keyring: bool = False) -> dict[str, Any]:
    """8 real peers, period 0.5 s: SIGKILL detection times, then a no-false-positive run.
    With ``keyring`` every peer signs and verifies every message with one shared cluster key."""
    trials = QUICK_TRIALS if quick else REAL_TRIALS
    hog_seconds = QUICK_HOG_SECONDS if quick else HOG_SECONDS
    rng = random.Random(seed)
    down: list[tuple[str, float, float]] = []
    logs = Path(tempfile.mkdtemp(prefix="hearsay-bench-membership-"))  # kept: the logs are the evidence
    print(f"  real: peer logs in {logs}{' (keyring)' if keyring else ''}", file=sys.stderr, flush=True)
    extra = ["--keyring", str(_write_keyring(logs, seed))] if keyring else []
    peers = launch_peers(REAL_PEERS, logs, lambda i, seeds: [*_real_args(i, seeds), *extra],
                         env={STALL_ENV: STALL}, module=STALLING_PEER)
    try:
        for p in peers:
            p.wait_ready(120)
        wait_for(lambda: _formed(peers), timeout=60, what="the swarm to form")
        detections = _kill_trials(peers, trials, rng, down)
        print(f"  slow-peer run: {hog_seconds:.0f} s, {HOG_PROCESSES} CPU hogs, {peers[0].peer_id} "
              f"stalling {STALL}", file=sys.stderr, flush=True)
        hog_start, hog_end, polls_off = _slow_peer_run(peers, hog_seconds)
        events = read_events(p.log_path for p in peers)
    finally:
        for p in peers:
            p.stop(timeout=15)
    unauthenticated = [p.peer_id for p in peers if UNAUTHENTICATED_WARNING in p.log_path.read_text(errors="replace")]
    assert not keyring or not unauthenticated, f"peers running without the keyring: {unauthenticated}"
    false = [e for e in events if not _was_down(e.address, e.at, down)]
    in_hog = [e for e in false if hog_start <= e.at <= hog_end]
    return {
        "peers": REAL_PEERS, "period_s": REAL_PERIOD, "trials": trials, "keyring": keyring,
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
        f"{r['peers']} peers, probe period {r['period_s']} s, {r['trials']} SIGKILL trials"
        f"{', messages HMAC-signed (keyring)' if r.get('keyring') else ''}",
        f"  detection (dead at every other peer): median {r['detect_median_s']:.2f} s, "
        f"max {r['detect_max_s']:.2f} s   (targets: median <= 4 s, max <= 8 s)",
        f"  per trial: {', '.join(f'{d:.2f}' for d in r['detect_s'])}",
        f"  whole run: {r['suspicions']} suspicions and {r['false_deaths']} deaths of running peers",
        f"  slow-peer run ({h['seconds']:.0f} s, {h['cpu_hogs']} CPU hogs, loop stall {h['stall']}): "
        f"{h['suspicions']} suspicions ({h['suspicions_of_slow_peer']} of the slow peer), "
        f"{h['recoveries']} refuted, {h['deaths']} deaths",
    ])


# --- a flood of made-up members (issue 14) ------------------------------------------------

FLOOD_ROWS = 66_000


def _made_up(count: int) -> tuple[Any, ...]:
    from protocol.membership import MemberEntry, MemberState
    return tuple(MemberEntry(f"10.{66 + (i >> 16)}.{i >> 8 & 255}.{i & 255}:7946", f"x{i}", 0, MemberState.ALIVE)
                 for i in range(count))


async def _flood_served(data: bytes, baseline_s: float) -> dict[str, Any]:
    """One Swim + runtime + gRPC server on loopback; a separate process sends ``data`` as a
    PushPull. A 1 ms ticker on the loop records how late it wakes, before and during."""
    import asyncio

    import grpc

    from hearsay.v1 import membership_pb2_grpc
    from peer.runtime.membership import MembershipRuntime
    from peer.tools.procs import free_ports
    from peer.transport.membership_grpc import MembershipClient, MembershipServicer
    from protocol.membership import Swim, SwimConfig

    address = f"127.0.0.1:{free_ports(1)[0]}"
    swim = Swim(address, "victim", rng=random.Random(0), config=SwimConfig())
    runtime = MembershipRuntime(swim, MembershipClient(0.5, 2.0))
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 << 20)])
    server.add_insecure_port(address)
    membership_pb2_grpc.add_MembershipServicer_to_server(MembershipServicer(runtime.receive), server)
    await server.start()
    runtime.start()
    lags: list[float] = []
    ticking = True

    async def tick() -> None:
        while ticking:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - t - 0.001)
    ticker = asyncio.create_task(tick())
    await asyncio.sleep(baseline_s)
    baseline = max(lags)
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
        f.write(data)
    sender = ("import grpc, sys\nfrom hearsay.v1 import membership_pb2, membership_pb2_grpc\n"
              "data = open(sys.argv[2], 'rb').read()\n"
              "with grpc.insecure_channel(sys.argv[1], options=[('grpc.max_send_message_length', 16 << 20)]) as c:\n"
              "    membership_pb2_grpc.MembershipStub(c).PushPull(membership_pb2.Packet(data=data), timeout=120)\n")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", sender, address, f.name)
    lags.clear()
    started = time.perf_counter()
    await proc.wait()
    answered = time.perf_counter() - started
    while swim.merge_pending:
        await asyncio.sleep(0.01)
    merged = time.perf_counter() - started
    ticking = False
    await ticker
    await runtime.close()
    await server.stop(0)
    Path(f.name).unlink()
    assert proc.returncode == 0, "the flood's push-pull was refused"
    lags.sort()
    return {"answered_s": round(answered, 3), "merged_s": round(merged, 3), "members_taken": len(swim.members()),
            "refused_hearsay": swim.refused_hearsay, "loop_lag_baseline_max_ms": round(baseline * 1000, 1),
            "loop_lag_max_ms": round(lags[-1] * 1000, 1),
            "loop_lag_p99_ms": round(lags[int(0.99 * (len(lags) - 1))] * 1000, 1)}


def run_flood(quick: bool) -> dict[str, Any]:
    """Issue 14's flood: one PushPull listing 66,000 made-up live members, (a) served for real
    (parts decoded and merged 256 rows per loop turn) and (b) decoded and merged at once —
    what the loop would be held for without the steps — side by side, same bytes."""
    import asyncio

    from protocol.membership import PushPull, Swim, SwimConfig
    from protocol.membership.wire import from_wire, to_wire

    data = to_wire(PushPull("127.0.0.1:9", _made_up(FLOOD_ROWS)))
    served = asyncio.run(_flood_served(data, 1.0))
    at_once = Swim("127.0.0.1:1", "victim", rng=random.Random(0), config=SwimConfig())
    at_once.start(0.0)
    t0 = time.perf_counter()
    at_once.on_message(from_wire(data), 1.0)
    held = time.perf_counter() - t0
    return {"rows": FLOOD_ROWS, "bytes": len(data), "served": served,
            "at_once_held_ms": round(held * 1000, 1), "at_once_members_taken": len(at_once.members())}


def flood_table(r: dict[str, Any]) -> str:
    s = r["served"]
    ratio = r["at_once_held_ms"] / max(s["loop_lag_max_ms"], 1e-3)
    return "\n".join([
        f"one PushPull listing {r['rows']:,} made-up members ({r['bytes'] / 1e6:.1f} MB)",
        f"  served in steps: answered {s['answered_s']:.2f} s, merged {s['merged_s']:.2f} s, took "
        f"{s['members_taken']} (quota), refused {s['refused_hearsay']:,}",
        f"  loop lag (1 ms ticker): before {s['loop_lag_baseline_max_ms']:.0f} ms max; during the flood "
        f"p99 {s['loop_lag_p99_ms']:.0f} ms, max {s['loop_lag_max_ms']:.0f} ms   (target: < 50 ms)",
        f"  decoded and merged at once: the loop held {r['at_once_held_ms']:.0f} ms "
        f"({ratio:.1f}x the stepped run's worst lag)",
    ])


SECTIONS: dict[str, tuple[Callable[[bool], Any], Callable[[Any], str]]] = {
    "sim": (run_sim, sim_table),
    "real": (run_real, real_table),
    "flood": (run_flood, flood_table),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.membership", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller clusters and shorter runs")
    ap.add_argument("--keyring", action="store_true",
                    help="give every real peer the same cluster keyring (every message HMAC-signed)")
    ap.add_argument("--json", metavar="FILE", help="write the results here")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {}
    for name in [s for s in args.sections.split(",") if s]:
        if name not in SECTIONS:
            ap.error(f"unknown section {name!r}")
        run, table = SECTIONS[name]
        if args.keyring and name == "real":
            run = functools.partial(run_real, keyring=True)
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
