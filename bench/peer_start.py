"""What a fresh `hearsay run` costs until its first training step, with torch.optim.SGD (as
before peer.runtime.sgd) and with MomentumSGD (now), side by side in one run.

    python -m bench.peer_start [--rounds 5] [--json FILE]

Each round starts one peer of each kind, alternately, as a fresh `python -m` process (digits,
the default MLP; no other peer), polls its admin status until it has taken a step, and reads
the process's CPU time (utime + stime from /proc) at that moment; then stops it. "before" runs
this module as a wrapper of the CLI that puts torch.optim.SGD back into the trainer; nothing
else differs. Reported: CPU-s until the first step per kind (median, min, max) and the
difference, and the wall time until the first step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from peer.tools.procs import PeerProcess, free_ports, wait_for

_TICK = os.sysconf("SC_CLK_TCK")
KINDS = {"before: torch.optim.SGD": "bench.peer_start", "now: MomentumSGD": "peer.tools.cli"}


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / _TICK  # utime, stime, cutime, cstime


def first_step(module: str, log_dir: Path, index: int) -> tuple[float, float]:
    """(CPU-s, wall s) of a fresh peer from its start until its status shows one step."""
    gossip, admin = free_ports(2)
    peer = PeerProcess(f"start-{index}", gossip, admin, ["--steps-per-second", "0", "--max-steps", "1"],
                       log_dir / f"{index}.log", module=module)
    started = time.perf_counter()
    peer.start()
    try:
        def stepped() -> bool:
            if not peer.alive():
                raise RuntimeError(f"peer exited:\n{peer.log_tail()}")
            status = peer.try_status(1.0)
            return status is not None and status.steps >= 1
        wait_for(stepped, 120.0, interval=0.05, what="the first step")
        assert peer.proc is not None
        return _cpu(peer.proc.pid), time.perf_counter() - started
    finally:
        peer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory(prefix="peer-start-") as tmp:
        for r in range(args.rounds):
            order = list(KINDS) if r % 2 == 0 else list(reversed(KINDS))  # neither kind always goes first
            for kind in order:
                results[kind].append(first_step(KINDS[kind], Path(tmp), len(results[kind]) + 100 * r))
    summary = {}
    for kind, runs in results.items():
        cpu = [c for c, _ in runs]
        wall = [w for _, w in runs]
        summary[kind] = {"cpu_median": statistics.median(cpu), "cpu_min": min(cpu), "cpu_max": max(cpu),
                         "wall_median": statistics.median(wall), "runs": runs}
        print(f"{kind:26s} CPU-s until the first step: median {statistics.median(cpu):.2f} "
              f"(min {min(cpu):.2f}, max {max(cpu):.2f}); wall median {statistics.median(wall):.2f} s")
    before, now = (summary[k]["cpu_median"] for k in KINDS)
    print(f"saved per peer start: {before - now:.2f} CPU-s (median before - median now), {1 - now / before:.0%}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "run":  # the "before" peer: the CLI with torch's SGD put back
        import torch

        from peer.runtime import trainer
        from peer.tools.cli import main as cli_main

        trainer.MomentumSGD = torch.optim.SGD  # type: ignore[misc, assignment]
        sys.exit(cli_main())
    main()
