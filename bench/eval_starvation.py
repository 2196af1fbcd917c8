"""What evaluation costs the rest of a peer: waits on the model lock, and event-loop lag.

    python -m bench.eval_starvation [--steps N] [--json FILE]

One process, one torch thread, Fashion-MNIST and the 28x28 CNN, everything seeded.
A trainer thread trains ``--steps`` steps while an asyncio event loop in the main
thread does what a peer's loop does on every status call and gossip exchange: take
the model's lock (``Trainer.digest()``) every 20 ms. Measured side by side in one run:

- ``locked-full``: evaluation as it was before issue 15 — the whole 10k test set in
  one forward pass, holding the model lock, every 25 steps;
- ``snapshot-subset``: evaluation as it is now — weights copied under the lock,
  a seeded 1000-sample subset evaluated outside it, within a 10 % CPU budget;
- ``no-eval``: training alone (what the loop suffers from the trainer thread itself:
  the GIL, the lock held for one step).

Reported per variant: the loop's worst and 99th-percentile stall (the gap between two
20 ms ticks beyond 20 ms: late wake-ups plus the wait for the lock, during which the
loop runs nothing else), the worst wait for the lock, and steps per second. A SWIM probe times
out after 500 ms: a loop stalled longer than that misses acks, and peers are
suspected or declared dead although nothing failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from pathlib import Path

import numpy as np
import torch

from peer.runtime.config import PeerConfig
from peer.runtime.evaluation import EvalPolicy
from peer.runtime.node import build_trainer_and_validation
from peer.runtime.trainer import Trainer

TICK = 0.02


class LockedFullEval:
    """Before issue 15: the whole test set in one pass, under the model lock."""

    def __init__(self, trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> None:
        self.trainer, self.x, self.y = trainer, x, y

    def __call__(self) -> float:
        t = self.trainer
        with t._lock, torch.no_grad():  # noqa: SLF001 - reproducing the old method exactly
            t.model.eval()
            return float((t.model(self.x).argmax(dim=1) == self.y).float().mean())


def measure(variant: str, steps: int) -> dict[str, float]:
    config = PeerConfig(dataset="fashion-mnist", model="cnn", shard_count=4, seed=1, steps_per_second=0,
                        eval_samples=0 if variant == "locked-full" else 1000, eval_every=25,
                        eval_budget=1.0 if variant == "locked-full" else 0.1)
    trainer = build_trainer_and_validation(config)[0]
    if variant in ("no-eval", "locked-full"):  # locked-full evaluates on the old schedule below
        trainer.eval_policy = EvalPolicy(every=1 << 62)
    old = LockedFullEval(trainer, trainer.test_x, trainer.test_y) if variant == "locked-full" else None
    lateness: list[float] = []
    lock_waits: list[float] = []
    done = threading.Event()

    def train() -> None:
        for i in range(1, steps + 1):
            trainer.step()
            if old is not None and i % 25 == 0:  # the old schedule: every 25 steps, whatever it costs
                old()
        done.set()

    async def loop() -> None:
        previous = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(TICK)
            started = time.perf_counter()
            trainer.digest()  # what Status and gossip snapshots do on the loop
            now = time.perf_counter()
            lock_waits.append(now - started)
            # How long the loop could run nothing else: the gap between two ticks beyond TICK
            # (late wake-ups from the GIL and the CPU, plus the digest's wait for the lock).
            lateness.append(now - previous - TICK)
            previous = now

    started = time.perf_counter()
    worker = threading.Thread(target=train)
    worker.start()
    asyncio.run(loop())
    worker.join()
    wall = time.perf_counter() - started
    late = np.array(lateness)
    return {"loop_stall_max_ms": 1000 * float(late.max()), "loop_stall_p99_ms": 1000 * float(np.percentile(late, 99)),
            "lock_wait_max_ms": 1000 * float(max(lock_waits)), "steps_per_s": steps / wall,
            "stalls_over_500ms": int((late > 0.5).sum())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = {v: measure(v, args.steps) for v in ("locked-full", "snapshot-subset", "no-eval")}
    print(f"{'variant':<16} {'loop stall max':>14} {'p99':>8} {'lock wait max':>14} {'stalls>500ms':>13} {'steps/s':>8}")
    for v, r in rows.items():
        print(f"{v:<16} {r['loop_stall_max_ms']:>11.0f} ms {r['loop_stall_p99_ms']:>5.0f} ms "
              f"{r['lock_wait_max_ms']:>11.0f} ms {r['stalls_over_500ms']:>13d} {r['steps_per_s']:>8.1f}")
    ratio = rows["locked-full"]["loop_stall_max_ms"] / max(1e-9, rows["snapshot-subset"]["loop_stall_max_ms"])
    print(f"worst loop stall, locked-full / snapshot-subset: {ratio:.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"variants": rows, "worst_stall_ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
