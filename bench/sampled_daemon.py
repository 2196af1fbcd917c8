"""Does the daemon's ``--mode sampled`` keep the round efficiency of the simulator's sampled rounds?

Side by side in one run, on the same simulator swarm setup (data, shards, shared initial
model, batch order, local steps, learning rate):

    bench      ``bench.sampled.run_rounds``: the rounds computed directly (every peer trains
               on the latest aggregate, one hash-chosen aggregator averages, no messages lost)
    daemon     ``peer.runtime.sampled_rounds.SampledRounds`` driving each peer's trainer through
               a real ``GossipEngine`` (per-link fp32 deltas, wire framing, the engine's
               checks), peers reaching each other's ``handle_inbound`` in-process on a real
               event loop (no gRPC, no virtual clock: the rounds are event-driven)

and prints, per round, the aggregate's test accuracy under both, the rounds each needs to
reach 95 % of the bench's final accuracy, and the bytes each sends per round.

    python -m bench.sampled_daemon [--peers 8] [--rounds 30] [--split iid|dirichlet] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections.abc import Mapping, Sequence

import numpy as np

from bench.learning import Budget, Setting, rounds_to, sim_config
from bench.sampled import _accuracy, _tensor, run_rounds
from peer.data import load_dataset
from peer.runtime.gossip import GossipEngine
from peer.runtime.sampled_rounds import SampledRounds
from peer.sim.swarm import Simulator
from protocol.deadlines import Budget as ExchangeBudget
from protocol.membership import StaticMembership
from protocol.merge import make_rule
from protocol.wire import Buffer, Limits

TARGET_FRACTION = 0.95


def _score(sim: Simulator, model: Mapping[str, np.ndarray]) -> float:
    sim._scratch.load_state_dict({k: _tensor(v) for k, v in model.items()})
    return _accuracy(sim)


async def _daemon_rounds(sim: Simulator, rounds: int, local_steps: int) -> tuple[list[float], int]:
    """The accuracy of each round's aggregate (round 0: the initial model) and the bytes sent."""
    addresses = [p.address for p in sim.peers]
    engines: dict[str, GossipEngine] = {}
    drivers: list[SampledRounds] = []
    accuracy: dict[int, float] = {0: _score(sim, sim.peers[0].trainer.state())}
    done = asyncio.Event()

    def record(round_number: int, aggregate: Mapping[str, np.ndarray]) -> None:
        if round_number <= rounds and round_number not in accuracy:
            accuracy[round_number] = _score(sim, aggregate)
            if all(r in accuracy for r in range(rounds + 1)):
                done.set()

    for i, p in enumerate(sim.peers):
        membership = StaticMembership(p.address)
        for other in addresses:
            if other != p.address:
                membership.add_seed(other)
        engine = GossipEngine(peer_id=p.peer_id, address=p.address, trainer=p.trainer, membership=membership,
                              merge_rule=make_rule("weighted"), codec="fp32", limits=Limits(), rng=random.Random(i),
                              interval=0.05, timeout=60.0)
        engines[p.address] = engine
        driver = SampledRounds(engine, trainers=0, aggregators=1, steps=local_steps, deadline=60.0,
                               rng=random.Random(i))
        driver.on_aggregate = record
        drivers.append(driver)

    def exchange_from(caller: str):  # noqa: ANN202 - peer.runtime.gossip.Exchange
        async def exchange(address: str, packet: Buffer | Sequence[Buffer], budget: ExchangeBudget) -> Buffer:
            return bytearray().join(await engines[address].handle_inbound(packet, caller))
        return exchange

    stopping = asyncio.Event()
    tasks = [asyncio.create_task(d.run(exchange_from(d.engine.address), stopping)) for d in drivers]
    await asyncio.wait_for(done.wait(), timeout=60.0 * rounds)
    stopping.set()
    await asyncio.gather(*tasks)
    return [accuracy[r] for r in range(rounds + 1)], sum(e.stats.bytes_sent for e in engines.values())


def compare(setting: Setting, budget: Budget) -> dict[str, object]:
    data = load_dataset(setting.dataset, seed=budget.seed)
    config = sim_config(setting, budget, shared_init=True, merge="weighted")
    started = time.perf_counter()
    bench = run_rounds(Simulator(config, data), budget.rounds, budget.local_steps, sampled=True)
    bench_s = time.perf_counter() - started
    started = time.perf_counter()
    daemon, daemon_bytes = asyncio.run(_daemon_rounds(Simulator(config, data), budget.rounds, budget.local_steps))
    daemon_s = time.perf_counter() - started
    mark = TARGET_FRACTION * bench.accuracy[-1]
    return {"setting": setting.label(), "rounds": budget.rounds, "local_steps": budget.local_steps,
            "bench_accuracy": bench.accuracy, "daemon_accuracy": daemon,
            "bench_rounds_to_95pct": rounds_to(bench.accuracy, mark),
            "daemon_rounds_to_95pct": rounds_to(daemon, mark),
            # The daemon keeps going while the last rounds are scored: bytes per round are an upper bound.
            "bench_bytes_per_round": bench.bytes_sent[-1] / budget.rounds,
            "daemon_bytes_per_round_at_most": daemon_bytes / budget.rounds,
            "bench_wall_s": bench_s, "daemon_wall_s": daemon_s}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--split", default="iid", choices=("iid", "dirichlet"))
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    setting = Setting(args.peers, args.split, args.alpha if args.split == "dirichlet" else None, "mlp")
    result = compare(setting, Budget(rounds=args.rounds))
    print(f"{result['setting']}, {args.rounds} rounds of {result['local_steps']} local steps, every peer trains")
    print("| round | bench | daemon |\n|---|---|---|")
    for r in sorted({0, 1, 2, 5, 10, 20, args.rounds} & set(range(args.rounds + 1))):
        print(f"| {r} | {result['bench_accuracy'][r]:.4f} | {result['daemon_accuracy'][r]:.4f} |")  # type: ignore[index]
    print(f"rounds to 95 % of the bench's final accuracy: bench {result['bench_rounds_to_95pct']}, "
          f"daemon {result['daemon_rounds_to_95pct']}")
    print(f"bytes per round: bench {result['bench_bytes_per_round']:.0f}, daemon at most "
          f"{result['daemon_bytes_per_round_at_most']:.0f} "
          f"({result['daemon_bytes_per_round_at_most'] / max(result['bench_bytes_per_round'], 1):.2f}x)")  # type: ignore[operator]
    print(f"wall: bench {result['bench_wall_s']:.1f} s, daemon {result['daemon_wall_s']:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
