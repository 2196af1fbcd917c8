"""Methods compared in simulated wall-clock time (issue 11, item 3): what slow or absent peers cost.

Scenarios, over N peers at 1 local step per virtual second (a round of ``local_steps`` takes
``local_steps`` seconds), links of ``LATENCY`` s and ``BANDWIDTH`` bytes/s:

- ``uniform``: every peer at the same speed;
- ``stragglers``: 25 % of the peers (chosen by the seed) 4x slower;
- ``churn50``: 50 % of the peers crash and rejoin at random times (two outages each, each
  lasting 10-30 % of the run, starting uniformly in it), coming back with the model they had;
- ``down80``: 80 % of the peers down for the middle third of the run.

Methods: ``fedavg_sync`` (a round waits for its slowest live client), ``fedavg_deadline``
(clients slower than 1.5x the median are dropped from the round), ``gossip_vc``
(asynchronous gossip with variance correction, ``peer.sim.swarm``), ``gossip_vc_fanout``
(Epidemic Learning, fanout 2), ``gossip_vc_int8x4`` (int8 deltas, four exchanges per round)
and ``sampled`` (``bench.sampled``). Accuracy is the mean over
all peers for gossip and the aggregate's for the round-based methods, every ``local_steps`` s.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace

from bench.sampled import Timing, run_rounds
from peer.data import Dataset
from peer.sim.swarm import SimConfig, Simulator

SCENARIOS = ("uniform", "stragglers", "churn50", "down80")
METHODS = ("fedavg_sync", "fedavg_deadline", "gossip_vc", "gossip_vc_fanout", "gossip_vc_int8x4", "sampled")
# gossip_vc_int8x4: the daemon's int8 delta codec (``codec = int8``) and four exchanges per round
# (gossip_interval a quarter of a round's local steps): within 2x FedAvg's bytes per round, four
# times the mixing (bench/RESULTS.md, "Issue 11, session 7"). FedAvg and sampled rounds send fp32.
COMPRESSED_CODEC, COMPRESSED_EXCHANGES = "int8", 4
LATENCY = 0.05
BANDWIDTH = 10e6  # 10 MB/s links
TARGET_FRACTION = 0.95


def scenario_config(base: SimConfig, scenario: str, duration: float) -> SimConfig:
    """``base`` with the scenario's speeds and failures (all drawn from ``base.seed``)."""
    rng = random.Random(base.seed + 11)
    cfg = replace(base, delay=LATENCY, bandwidth=BANDWIDTH)
    if scenario == "stragglers":
        return replace(cfg, slow_fraction=0.25, slow_factor=4.0)
    if scenario == "churn50":
        victims = rng.sample(range(base.peers), base.peers // 2)
        outages = []
        for v in victims:
            for _ in range(2):
                start = rng.uniform(0, duration)
                outages.append((v, start, start + rng.uniform(0.1, 0.3) * duration))
        return replace(cfg, churn=tuple(outages))
    if scenario == "down80":
        victims = rng.sample(range(base.peers), int(0.8 * base.peers))
        return replace(cfg, churn=tuple((v, duration / 3, 2 * duration / 3) for v in victims))
    return cfg


def live_function(cfg: SimConfig) -> Callable[[int, float], bool]:
    def live(i: int, t: float) -> bool:
        return not any(p == i and a <= t < b for p, a, b in cfg.churn)
    return live


def run_method(method: str, cfg: SimConfig, data: Dataset, local_steps: int, duration: float) -> tuple[list[float], list[float]]:
    """(times, mean accuracies) of ``method`` on ``cfg`` for ``duration`` virtual seconds."""
    if method.startswith("gossip"):
        if method.endswith("int8x4"):
            cfg = replace(cfg, codec=COMPRESSED_CODEC, gossip_interval=local_steps / COMPRESSED_EXCHANGES)
        sim = Simulator(replace(cfg, merge="vc", shared_init=False, fanout=2 if method.endswith("fanout") else 1), data)
        times, accs = [0.0], [float(sim.accuracies().mean())]
        t = 0.0
        while t < duration:
            t += local_steps
            sim.run_until(t)
            times.append(t)
            # Scored right after each peer's latest merge, as the aggregate is (bench.learning --eval merge).
            accs.append(float(sim.merged_accuracies().mean()))
        return times, accs
    sim = Simulator(replace(cfg, shared_init=True, merge="weighted"), data)
    timing = Timing([p.speed for p in sim.peers], LATENCY, BANDWIDTH,
                    deadline_factor=1.5 if method == "fedavg_deadline" else 0.0)
    result = run_rounds(sim, 10**6, local_steps, sampled=method == "sampled", timing=timing,
                        live=live_function(cfg), until=duration)
    return result.times, result.accuracy


def time_to(times: list[float], accs: list[float], target: float) -> float | None:
    return next((t for t, a in zip(times, accs) if a >= target), None)


def wallclock(dataset: str, base: SimConfig, data: Dataset, local_steps: int, duration: float,
              log: Callable[[str], None] = print, methods: Sequence[str] = METHODS,
              scenarios: Sequence[str] = SCENARIOS) -> list[dict]:
    """The ``wallclock`` JSON rows for every scenario of ``scenarios`` and method of ``methods``
    (``fedavg_sync`` is always run); ``base``'s lr schedule (horizon: ``duration``) holds for
    every method. The mark is 95 % of the same scenario's synchronous FedAvg's final accuracy."""
    rows = []
    for scenario in scenarios:
        cfg = scenario_config(base, scenario, duration)
        curves = {m: run_method(m, cfg, data, local_steps, duration) for m in METHODS
                  if m in methods or m == "fedavg_sync"}
        mark = TARGET_FRACTION * curves["fedavg_sync"][1][-1]
        for m, (times, accs) in curves.items():
            rows.append({"dataset": dataset, "scenario": scenario, "method": m,
                         "time_to_95pct_fedavg_s": time_to(times, accs, mark),
                         "final_accuracy_mean": accs[-1], "peers": cfg.peers, "model": cfg.model,
                         "split": cfg.split, "alpha": cfg.alpha, "duration_s": duration})
            log(f"  wallclock {dataset} {scenario:10s} {m:16s} final {accs[-1]:.3f} "
                f"to mark {rows[-1]['time_to_95pct_fedavg_s']}")
    return rows


def wallclock_table(rows: list[dict]) -> str:
    lines = ["| data set | scenario | method | time to 95% of sync FedAvg (s) | final acc |", "|---|---|---|---|---|"]
    for r in rows:
        t = r["time_to_95pct_fedavg_s"]
        lines.append(f"| {r['dataset']} | {r['scenario']} | {r['method']} | {'never' if t is None else f'{t:.0f}'} "
                     f"| {r['final_accuracy_mean']:.3f} |")
    return "\n".join(lines)


